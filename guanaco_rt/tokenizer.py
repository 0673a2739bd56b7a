"""SentencePiece tokenizer rebuilt from a ggjt file's vocab (or a GGUF "llama" one).

Owns: turning the (text bytes, score) pairs that the 2023 convert.py wrote into
a SentencePiece BPE model (piece types rebuilt, since the file does not store
them), exact encoding and decoding through the ``sentencepiece`` package, splitting
special tokens out of text first (``split_special``, llama.cpp's parse_special, shared
with the byte-level BPE), and the bytes each token stands for (``byte_table``, which
the C decode loop turns into text incrementally). Does not know about models.

convert.py wrote: ``<unk>`` as " \\u2047 ", control tokens (``<s>``, ``</s>``)
as empty strings, byte tokens ``<0xNN>`` as the one raw byte, every other piece
with U+2581 replaced by a space.
"""
import struct

import numpy as np
import sentencepiece as spm

from .errors import FormatError, GuanacoError

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


def byte_table(token_bytes, normal):
    """Every token's bytes as flat arrays, for the C text stage of the decode loop:
    (blob, offs, normal), token i being blob[offs[i]:offs[i+1]]; normal[i] marks pieces
    whose leading space is the dummy prefix."""
    offs = np.zeros(len(token_bytes) + 1, np.int64)
    offs[1:] = np.cumsum([len(b) for b in token_bytes])
    return np.frombuffer(b"".join(token_bytes) + b"\0", np.uint8), offs, np.asarray(normal, np.uint8)


def unicode_problem(text):
    """What keeps UTF-8 from encoding ``text`` (a lone surrogate: "surrogates not allowed
    '\\ud800' at position 3"), or None when it encodes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"{e.reason} {text[e.start:e.end]!r} at position {e.start}"
    return None


def check_text(text):
    """Text to encode must be a str that UTF-8 can encode: a lone surrogate would make
    sentencepiece raise an untyped RuntimeError."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    problem = unicode_problem(text)
    if problem:
        raise ValueError(f"text is not valid Unicode: {problem}; decode bytes with errors='replace' first")


def special_spellings(pieces_or_tokens, types, skip=()):
    """The tokens llama.cpp splits out of text before encoding it (its special-token cache):
    CONTROL, USER_DEFINED and UNKNOWN ones with a non-empty spelling, longest (in UTF-8
    bytes) first, ties by id. -> (with special parsing: [(spelling, id)], without: the
    USER_DEFINED ones only, which llama.cpp splits out of any text)."""
    found = [(t, i, ty) for i, (t, ty) in enumerate(zip(pieces_or_tokens, types))
             if ty in (UNKNOWN, CONTROL, USER_DEFINED) and t and i not in skip]
    found.sort(key=lambda x: (-len(x[0].encode("utf-8")), x[1]))
    return [(t, i) for t, i, _ in found], [(t, i) for t, i, ty in found if ty == USER_DEFINED]


def split_special(text, specials):
    """text -> fragments, each a str (text to encode) or an int (a special token's id), as
    llama.cpp's tokenizer_st_partition: for each special token in turn (longest first), every
    text fragment left is cut at each occurrence of its spelling, left to right. (Not the
    leftmost-longest match: of two overlapping spellings the longer wins wherever it is.)"""
    frags = [text] if text else []
    for spelling, tid in specials:
        if spelling not in text:
            continue
        out = []
        for f in frags:
            if type(f) is int or spelling not in f:
                out.append(f)
                continue
            start = 0
            while (at := f.find(spelling, start)) >= 0:
                if at > start:
                    out.append(f[start:at])
                out.append(tid)
                start = at + len(spelling)
            if start < len(f):
                out.append(f[start:])
        frags = out
    return frags


def split_parts(parts, specials, user_defined):
    """[(text, special)] -> the fragments of the joined text, as split_special, but a
    spelling counts only inside a part that allows it (``special`` True: ``specials``, else
    ``user_defined``) and never across two parts; text left either side of a part boundary
    stays one fragment, so it encodes as the joined text would. This is HF's
    split_special_tokens for a chat prompt: the template's text True, each message False."""
    frags = []
    for text, special in parts:
        check_text(text)
        for f in split_special(text, specials if special else user_defined):
            if type(f) is str and frags and type(frags[-1]) is str:
                frags[-1] += f
            else:
                frags.append(f)
    return frags


ASCII_SPACE = " \t\n\v\f\r"      # C's isspace, which llama.cpp strips with


def strip_after(frags, rstrip):
    """Fragments (split_special's) with the whitespace after each token of ``rstrip`` removed,
    and a text fragment left empty dropped: llama.cpp's RSTRIP attribute, which it gives Phi-3's
    special tokens (HF's tokenizer.json says "rstrip": true for them)."""
    out = []
    for f in frags:
        if type(f) is str and out and type(out[-1]) is int and out[-1] in rstrip:
            f = f.lstrip(ASCII_SPACE)
            if not f:
                continue
        out.append(f)
    return out


def _unique(pieces):
    out, seen = [], set()
    for i, (piece, score, ptype) in enumerate(pieces):
        if piece in seen:
            piece, ptype = f"<dup{i}>", UNUSED
        seen.add(piece)
        out.append((piece, float(score), int(ptype)))
    return out


def model_proto(pieces, add_space_prefix=True, ids=(UNK_ID, BOS_ID, EOS_ID)):
    """Serialized sentencepiece ModelProto for LLaMA's tokenizer settings; ``ids``: the
    unk, bos and eos ids (None: none)."""
    body = bytearray()
    for piece, score, ptype in pieces:
        sp = _f_bytes(1, piece.encode("utf-8")) + _f_float(2, score) + _f_varint(3, ptype)
        body += _f_bytes(1, sp)
    has_bytes = any(t == BYTE for _, _, t in pieces)
    trainer = (_f_varint(3, 2)                  # model_type: BPE
               + _f_varint(4, len(pieces))      # vocab_size
               + _f_varint(25, 1)               # split_digits
               + _f_varint(35, 1 if has_bytes else 0)  # byte_fallback
               + b"".join(_f_varint(40 + k, -1 if i is None else i) for k, i in enumerate(ids))
               + _f_varint(43, -1))             # pad_id
    normalizer = (_f_bytes(1, b"identity")
                  + _f_varint(3, 1 if add_space_prefix else 0)   # add_dummy_prefix
                  + _f_varint(4, 0)             # remove_extra_whitespaces
                  + _f_varint(5, 1))            # escape_whitespaces
    body += _f_bytes(2, trainer) + _f_bytes(3, normalizer)
    return bytes(body)


class PartsEncoder:
    """encode_parts for both vocabularies: special tokens split out (split_parts), each text
    fragment through the class's own _encode_text, then BOS/EOS as asked."""

    rstrip_ids: frozenset[int] = frozenset()     # special tokens that eat the whitespace after them (strip_after)

    def encode_parts(self, parts, bos=None, eos=False):
        """[(text, special)] -> the ids of the joined text, each part's special spellings parsed
        only if its flag says so (split_parts). ``bos`` None: the file's add_bos_token."""
        ids = []
        frags = split_parts(parts, self.special, self.user_defined)
        if self.rstrip_ids:
            frags = strip_after(frags, self.rstrip_ids)
        for frag in frags:
            if type(frag) is int:
                ids.append(frag)
            else:
                ids += self._encode_text(frag)
        if self.add_bos if bos is None else bos:
            if self.bos_id is None:
                raise GuanacoError(f"{self.path}: this vocabulary has no BOS token")
            ids = [self.bos_id] + ids
        if eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids


class Tokenizer(PartsEncoder):
    """Exact SentencePiece BPE over the file's vocab. ``encode`` adds BOS by default.

    The special ids are the file's (GGUF: tokenizer.ggml.bos/eos/unknown_token_id; ggjt
    files store none, and use LLaMA's 1, 2 and 0). The UNKNOWN-type piece SentencePiece
    emits is the one at ``unk_id``."""

    def __init__(self, vocab, path="<vocab>", pieces=None, add_space_prefix=True, bos_id=BOS_ID, eos_id=EOS_ID,
                 unk_id=UNK_ID):
        # vocab: the ggjt (text bytes, score) pairs; or pieces: [(piece, score, type)] as a
        # GGUF file stores them (tokenizer.ggml.model "llama")
        self.pieces = rebuild_pieces(vocab, path) if pieces is None else _unique(pieces)
        self.n_vocab = len(self.pieces)
        if unk_id is not None and self.pieces[unk_id][2] != UNKNOWN:
            # SentencePiece emits the one piece typed UNKNOWN: make it the file's unk id
            self.pieces = [(p, sc, CONTROL if t == UNKNOWN else t) for p, sc, t in self.pieces]
            p, sc, _ = self.pieces[unk_id]
            self.pieces[unk_id] = (p, sc, UNKNOWN)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto(self.pieces, add_space_prefix, (unk_id, bos_id, eos_id)))
        except Exception as e:  # sentencepiece raises RuntimeError / OSError on a bad model
            raise FormatError(path, "vocab", f"cannot build a SentencePiece model: {e}") from None
        self.path = path
        self.add_space_prefix = bool(add_space_prefix)     # SentencePiece's dummy prefix: " " before the text
        self.bos_id, self.eos_id, self.unk_id = bos_id, eos_id, unk_id
        self.add_bos = True          # a GGUF file may say otherwise (tokenizer.ggml.add_bos_token)
        # spellings split out of the text before SentencePiece sees it (llama.cpp's parse_special);
        # a ggjt file stores no spelling for its control tokens but <s> </s> <unk>: skip the invented ones
        names = ("<dup{}>",) if pieces is not None else ("<dup{}>", "<ctrl{}>")
        invented = {i for i, (p, _, _) in enumerate(self.pieces) if p in {n.format(i) for n in names}}
        self.special, self.user_defined = special_spellings([p for p, _, _ in self.pieces],
                                                            [t for _, _, t in self.pieces], invented)
        # every token's bytes as flat arrays, for the C text stage of the decode loop
        token_bytes = [self._bytes_of(i) for i in range(self.n_vocab)]
        # the decode loop strips the dummy-prefix space of the first NORMAL piece, if there is one
        normal = np.array([t == NORMAL and add_space_prefix for _, _, t in self.pieces], np.uint8)
        self.byte_table = byte_table(token_bytes, normal)

    def _bytes_of(self, i):
        piece, _, ptype = self.pieces[i]
        if ptype == BYTE:
            return bytes([int(piece[3:-1], 16)])
        if ptype in (CONTROL, UNUSED):
            return b""
        if ptype == UNKNOWN:
            return UNK_TEXT
        return piece.replace("\u2581", " ").encode("utf-8")

    def encode(self, text, bos=None, eos=False, special=False):
        """text -> ids, BOS first unless ``bos`` is False. ``special``: text spelling a
        control token (``[INST]``, ``<s>``) becomes that token, as llama.cpp's parse_special;
        user-defined tokens are split out either way (llama.cpp does too). Every text fragment
        is encoded on its own, with the dummy-prefix space: llama.cpp adds it to the first
        fragment and to each one after a special token, and a fragment always is one of those."""
        return self.encode_parts([(text, special)], bos, eos)

    def _encode_text(self, text):
        return self.sp.encode(text)

    def decode(self, ids):
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.n_vocab:
                raise ValueError(f"token id {i} outside [0, {self.n_vocab})")
        return self.sp.decode(ids)

    def token_bytes(self, i):
        """The raw bytes token ``i`` stands for (a leading space kept; control tokens b"")."""
        blob, offs, _ = self.byte_table
        return blob[offs[i]:offs[i + 1]].tobytes()
