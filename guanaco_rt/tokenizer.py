"""SentencePiece tokenizer rebuilt from a ggjt file's vocab.

Owns: turning the (text bytes, score) pairs that the 2023 convert.py wrote into
a SentencePiece BPE model (piece types rebuilt, since the file does not store
them), exact encoding and decoding through the ``sentencepiece`` package, and
incremental byte -> text decoding for streaming. Does not know about models.

convert.py wrote: ``<unk>`` as " \\u2047 ", control tokens (``<s>``, ``</s>``)
as empty strings, byte tokens ``<0xNN>`` as the one raw byte, every other piece
with U+2581 replaced by a space.
"""
import struct

import sentencepiece as spm

from .errors import FormatError

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
UNK_TEXT = " \u2047 ".encode()
BYTE_FIRST = 3  # ids 3..258 are <0x00>..<0xFF> in the LLaMA vocab

# sentencepiece_model.proto piece types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


# ---- a minimal protobuf writer: enough of ModelProto for sentencepiece to load --
def _varint(n):
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field, wire):
    return _varint(field << 3 | wire)


def _f_varint(field, v):
    return _key(field, 0) + _varint(int(v))


def _f_bytes(field, b):
    return _key(field, 2) + _varint(len(b)) + b


def _f_float(field, v):
    return _key(field, 5) + struct.pack("<f", v)


def rebuild_pieces(vocab, path="<vocab>"):
    """[(bytes, score)] in the ggjt convention -> [(piece str, score, type)]."""
    pieces, seen = [], set()
    for i, (text, score) in enumerate(vocab):
        if i == UNK_ID and text == UNK_TEXT:
            piece, ptype = "<unk>", UNKNOWN
        elif i in (BOS_ID, EOS_ID) and text == b"":
            piece, ptype = ("<s>", "</s>")[i - 1], CONTROL
        elif BYTE_FIRST <= i < BYTE_FIRST + 256 and text == bytes([i - BYTE_FIRST]):
            piece, ptype = f"<0x{i - BYTE_FIRST:02X}>", BYTE
        elif text == b"":
            piece, ptype = f"<ctrl{i}>", CONTROL
        else:
            try:
                piece = text.decode("utf-8").replace(" ", "\u2581")
            except UnicodeDecodeError:
                raise FormatError(path, f"vocab[{i}].text", f"{text!r} is not UTF-8 and not a byte token") from None
            ptype = NORMAL
        if piece in seen:
            # SentencePiece refuses duplicate pieces; keep the id, make it unreachable
            piece, ptype = f"<dup{i}>", UNUSED
        seen.add(piece)
        pieces.append((piece, score, ptype))
    return pieces


def model_proto(pieces):
    """Serialized sentencepiece ModelProto for LLaMA's tokenizer settings."""
    body = bytearray()
    for piece, score, ptype in pieces:
        sp = _f_bytes(1, piece.encode("utf-8")) + _f_float(2, score) + _f_varint(3, ptype)
        body += _f_bytes(1, sp)
    has_bytes = any(t == BYTE for _, _, t in pieces)
    trainer = (_f_varint(3, 2)                  # model_type: BPE
               + _f_varint(4, len(pieces))      # vocab_size
               + _f_varint(25, 1)               # split_digits
               + _f_varint(35, 1 if has_bytes else 0)  # byte_fallback
               + _f_varint(40, UNK_ID) + _f_varint(41, BOS_ID) + _f_varint(42, EOS_ID)
               + _f_varint(43, -1))             # pad_id
    normalizer = (_f_bytes(1, b"identity")
                  + _f_varint(3, 1)             # add_dummy_prefix
                  + _f_varint(4, 0)             # remove_extra_whitespaces
                  + _f_varint(5, 1))            # escape_whitespaces
    body += _f_bytes(2, trainer) + _f_bytes(3, normalizer)
    return bytes(body)


class Tokenizer:
    """Exact SentencePiece BPE over the file's vocab. ``encode`` adds BOS (id 1) by default."""

    def __init__(self, vocab, path="<vocab>"):
        self.pieces = rebuild_pieces(vocab, path)
        self.n_vocab = len(self.pieces)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto(self.pieces))
        except Exception as e:  # sentencepiece raises RuntimeError / OSError on a bad model
            raise FormatError(path, "vocab", f"cannot build a SentencePiece model: {e}") from None
        self.bos_id, self.eos_id, self.unk_id = BOS_ID, EOS_ID, UNK_ID
        self._token_bytes = [self._bytes_of(i) for i in range(self.n_vocab)]

    def _bytes_of(self, i):
        piece, _, ptype = self.pieces[i]
        if ptype == BYTE:
            return bytes([int(piece[3:-1], 16)])
        if ptype in (CONTROL, UNUSED):
            return b""
        if ptype == UNKNOWN:
            return UNK_TEXT
        return piece.replace("\u2581", " ").encode("utf-8")

    def encode(self, text, bos=True, eos=False):
        ids = self.sp.encode(text) if text else []
        return ([BOS_ID] if bos else []) + list(ids) + ([EOS_ID] if eos else [])

    def decode(self, ids):
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.n_vocab:
                raise ValueError(f"token id {i} outside [0, {self.n_vocab})")
        return self.sp.decode(ids)

    def token_bytes(self, i):
        """The raw bytes token ``i`` stands for (a leading space kept; control tokens b"")."""
        return self._token_bytes[i]


class Utf8Stream:
    """Incremental UTF-8 -> str that never splits a character and never raises.

    Decodes as SentencePiece's decode does: each byte that cannot start or continue
    a valid sequence becomes one U+FFFD; an incomplete sequence waits for more bytes
    and, if the stream ends first, gives one U+FFFD per byte.
    """

    def __init__(self):
        self.pending = b""

    @staticmethod
    def _seq_len(b0):
        if b0 < 0x80:
            return 1
        if 0xC2 <= b0 <= 0xDF:
            return 2
        if 0xE0 <= b0 <= 0xEF:
            return 3
        if 0xF0 <= b0 <= 0xF4:
            return 4
        return 0

    def feed(self, data, final=False):
        buf = self.pending + data
        out, i, n = [], 0, len(buf)
        while i < n:
            k = self._seq_len(buf[i])
            if k == 0:
                out.append("\ufffd")
                i += 1
                continue
            chunk = buf[i:i + k]
            if len(chunk) < k:
                # incomplete: valid so far? then wait, else the lead byte is garbage
                try:
                    chunk.decode("utf-8")
                    ok_prefix = False
                except UnicodeDecodeError as e:
                    ok_prefix = e.reason == "unexpected end of data"
                if ok_prefix and not final:
                    break
                out.append("\ufffd")
                i += 1
                continue
            try:
                out.append(chunk.decode("utf-8"))
                i += k
            except UnicodeDecodeError:
                out.append("\ufffd")
                i += 1
        self.pending = buf[i:]
        return "".join(out)


class StreamDecoder:
    """Turns generated token ids into text pieces without splitting a UTF-8 character.

    Concatenated, the pieces equal ``Tokenizer.decode`` of the same ids. The first
    normal piece drops the dummy-prefix space if ``strip_leading_space``.
    """

    def __init__(self, tokenizer, strip_leading_space=False):
        self.tok = tokenizer
        self.utf8 = Utf8Stream()
        self.strip = strip_leading_space

    def push(self, token_id):
        b = self.tok.token_bytes(token_id)
        if self.strip and b:
            if self.tok.pieces[token_id][2] == NORMAL and b.startswith(b" "):
                b = b[1:]
            self.strip = False
        return self.utf8.feed(b)

    def flush(self):
        return self.utf8.feed(b"", final=True)
