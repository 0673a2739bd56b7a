"""Byte-level BPE tokenizer (GGUF tokenizer.ggml.model "gpt2"), as llama.cpp runs it.

Owns: the pre-tokenizer regexes that tokenizer.ggml.pre names, the byte-level alphabet,
the symbols and merge table the C merge loop (_kernels/_bpe.pyx, O(n log n) in a
pre-token's length) runs on, and the bytes each token stands for (``byte_table`` for the
C decode loop). Special tokens are split out first by tokenizer.split_special, as for
SentencePiece. Does not know about models.

Pre-tokenizers (llama.cpp's llama-vocab.cpp): each regex of the list splits every
piece the previous one left, keeping both the matches and the text between them.
"""
import functools

import numpy as np
import regex

from ._kernels._bpe import MergeTable
from .errors import FormatError
from .tokenizer import PartsEncoder, byte_table, special_spellings

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# bytes a vocabulary must have a token for: those of tab, newline, CR, printable ASCII and
# every character of U+0080..U+3FFFF (lead bytes C2..F0, continuation bytes 80..BF). Real
# vocabularies lack some of the others (SmolLM2: a few ASCII controls, C0 C1 F1 F2 F5..FF);
# llama.cpp drops such a byte, and so do we.
REQUIRED_BYTES = [9, 10, 13] + list(range(0x20, 0x7F)) + list(range(0x80, 0xC0)) + list(range(0xC2, 0xF1))
CACHE_PIECE_CHARS = 256      # longer pre-tokens are not cached (the cache must not hold megabytes)

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2, 2.5 and 3: LLAMA3's split with single digits
QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen3.5: QWEN2 with combining marks (\p{M}) kept in words
QWEN35 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
          r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    "default": [GPT2], "gpt2": [GPT2], "gpt-2": [GPT2],
    "llama-bpe": [LLAMA3], "llama3": [LLAMA3], "llama-v3": [LLAMA3],
    "qwen2": [QWEN2], "deepseek-r1-qwen": [QWEN2], "qwen35": [QWEN35],
    "smollm": [r"\p{N}", GPT2], "starcoder": [r"\p{N}", GPT2], "refact": [r"\p{N}", GPT2],
}
# pre-tokenizers whose vocabulary is looked up before merging: a pre-token that is a token
# is that token, even where the merges would not build it (llama.cpp's ignore_merges; HF's
# tokenizer.json says "ignore_merges": true for Llama 3). Such files add BOS unless they say not.
IGNORE_MERGES = {"llama-bpe", "llama3", "llama-v3"}


@functools.lru_cache(maxsize=1)
def byte_alphabet():
    """GPT-2's byte-level alphabet: byte -> one printable code point, and back."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    enc, extra = {}, 0
    for b in range(256):
        if b in keep:
            enc[b] = chr(b)
        else:
            enc[b] = chr(256 + extra)
            extra += 1
    return enc, {c: b for b, c in enc.items()}


def _split(pieces, rx):
    out = []
    for p in pieces:
        last = 0
        for m in rx.finditer(p):
            if m.start() > last:
                out.append(p[last:m.start()])
            if m.end() > m.start():
                out.append(m.group())
            last = m.end()
        if last < len(p):
            out.append(p[last:])
    return out


class BPETokenizer(PartsEncoder):
    """Exact byte-level BPE over a GGUF vocabulary and merges list."""

    def __init__(self, tokens, types, merges, pre="default", bos_id=None, eos_id=None, add_bos=False,
                 path="<vocab>"):
        if pre not in PRE_TOKENIZERS:
            raise FormatError(path, "tokenizer.ggml.pre", f"{pre!r} is not supported "
                                                          f"({', '.join(sorted(PRE_TOKENIZERS))})")
        self.path = path
        self.n_vocab = len(tokens)
        self.tokens, self.types = list(tokens), list(types)      # spellings and types, as the file has them
        self.bos_id, self.eos_id, self.unk_id = bos_id, eos_id, None
        self.add_bos = bool(add_bos) and bos_id is not None
        self.regexes = [regex.compile(r) for r in PRE_TOKENIZERS[pre]]
        self.ignore_merges = pre in IGNORE_MERGES
        self.ids = {t: i for i, t in enumerate(tokens)}
        enc, dec = byte_alphabet()
        missing = [b for b in REQUIRED_BYTES if enc[b] not in self.ids]
        if missing:
            raise FormatError(path, "tokenizer.ggml.tokens", f"has no token for the byte(s) "
                              f"{', '.join(f'0x{b:02X}' for b in missing[:16])}{' ...' if len(missing) > 16 else ''}"
                              f" ({len(missing)} missing): text with them would be dropped; a byte-level BPE "
                              "vocabulary needs tokens for tab, newline, CR, printable ASCII and the UTF-8 bytes "
                              "of U+0080..U+3FFFF")
        self._merges(merges, enc, path)
        # special tokens split out of the text before the pre-tokenizer, as llama.cpp does
        self.special, self.user_defined = special_spellings(tokens, types)
        self.byte_enc = enc
        token_bytes = []
        for i, (tok, ty) in enumerate(zip(tokens, types)):
            if ty in (CONTROL, UNUSED):
                token_bytes.append(b"")
            elif ty == USER_DEFINED:
                token_bytes.append(tok.encode("utf-8"))
            else:
                try:
                    token_bytes.append(bytes(dec[c] for c in tok))
                except KeyError:
                    raise FormatError(path, f"tokenizer.ggml.tokens[{i}]",
                                      f"{tok!r} is not in the byte-level BPE alphabet") from None
        self.byte_table = byte_table(token_bytes, np.zeros(self.n_vocab, np.uint8))   # no dummy prefix to strip
        self._cache = {}

    # -- encoding -----------------------------------------------------------------------
    def _merges(self, merges, enc, path):
        """Every string the merges name (and the 256 byte-level characters) gets a symbol id;
        the merge table maps a pair of symbols to its rank and the merged symbol."""
        sym = {}
        for b in range(256):
            sym.setdefault(enc[b], len(sym))
        left, right, merged = (np.empty(len(merges), np.int32) for _ in range(3))
        for r, m in enumerate(merges):
            a, sep, b = m.partition(" ")
            if not sep:
                raise FormatError(path, f"tokenizer.ggml.merges[{r}]", f"{m!r} is not two pieces")
            left[r] = sym.setdefault(a, len(sym))
            right[r] = sym.setdefault(b, len(sym))
            merged[r] = sym.setdefault(a + b, len(sym))
        self._table = MergeTable(left, right, merged, len(sym))
        self._byte_sym = np.array([sym[enc[b]] for b in range(256)], np.int32)   # byte -> its symbol
        self._sym_text = list(sym)                                                # symbol -> its string
        self._sym_tok = np.array([self.ids.get(t, -1) for t in self._sym_text], np.int64)  # -1: no token

    def _bpe(self, piece):
        """One pre-token (text) -> token ids, merging the lowest-ranked pair first (the
        leftmost of equals), in O(n log n) (_kernels/_bpe.pyx)."""
        ids = self._cache.get(piece)
        if ids is not None:
            return ids
        if self.ignore_merges:
            whole = self.ids.get("".join(self.byte_enc[b] for b in piece.encode("utf-8")))
            if whole is not None:
                return [whole]
        syms = self._table.merge(self._byte_sym[np.frombuffer(piece.encode("utf-8"), np.uint8)])
        toks = self._sym_tok[syms]
        if (toks >= 0).all():
            out = toks.tolist()
        else:
            out = []
            for s, t in zip(syms.tolist(), toks.tolist()):
                if t >= 0:
                    out.append(t)
                else:      # no token for a merged symbol: its single bytes (the ones that have one)
                    out += [self.ids[c] for c in self._sym_text[s] if c in self.ids]
        if len(piece) <= CACHE_PIECE_CHARS and len(self._cache) < 1 << 16:
            self._cache[piece] = out
        return out

    def _encode_text(self, text):
        pieces = [text]
        for rx in self.regexes:
            pieces = _split(pieces, rx)
        return [i for p in pieces for i in self._bpe(p)]

    def encode(self, text, bos=None, eos=False, special=False):
        """text -> ids. ``bos`` None: the file's add_bos_token. ``special``: text that spells a
        control token (``<|im_start|>``) becomes that token, as llama.cpp's parse_special;
        otherwise it is ordinary text. User-defined tokens are split out either way (llama.cpp
        and HF do too)."""
        return self.encode_parts([(text, special)], bos, eos)

    # -- decoding -----------------------------------------------------------------------
    def decode(self, ids):
        blob, offs, _ = self.byte_table
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.n_vocab:
                raise ValueError(f"token id {i} outside [0, {self.n_vocab})")
            out.append(blob[offs[i]:offs[i + 1]].tobytes())
        return b"".join(out).decode("utf-8", errors="replace")

    def token_bytes(self, i):
        blob, offs, _ = self.byte_table
        return blob[offs[i]:offs[i + 1]].tobytes()
