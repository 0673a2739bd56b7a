"""Writer of ggjt v3 files: the format llama.cpp's convert.py and quantize wrote in 2023.

Owns: the byte layout on the way out (header, hparams, vocab, tensors padded to
32-byte offsets) and random-weight models of any LLaMA shape and any of the 14
Guanaco file types, with per-tensor types mixed the way llama.cpp's quantizer
did. Tests and benchmarks build their models with it. Weights are random valid
blocks whose scales are set so each element has roughly the requested standard
deviation; no float model is quantized, so writing a 7B file takes seconds.
"""
import os
import struct

import numpy as np

from . import ggml_types as T
from .ggml_file import ALIGNMENT, GGJT_VERSION, MAGIC_GGJT, HParams, expected_shapes
from .ggml_types import (
    BF16,
    F16,
    F32,
    FTYPE_BY_NAME,
    GGML_TYPES,
    IQ4_NL,
    IQ4_XS,
    Q2_K,
    Q3_K,
    Q4_0,
    Q4_1,
    Q4_K,
    Q5_0,
    Q5_1,
    Q5_K,
    Q6_K,
    Q8_0,
    tensor_type_for,
)

# per block type: how many q-units one unit of d spreads an element over (measured on
# uniform random bits), and the second scale (m or dmin) as a multiple of d that centres
# the block (see the block layouts in ggml_types / ggml_blocks.h)
_SCALE_SPREAD = {
    #      spread, second_mult
    Q4_0: (4.6, None),
    Q4_1: (4.6, -7.5),        # m = -7.5 d
    Q5_0: (9.2, None),
    Q5_1: (9.2, -15.5),       # m = -15.5 d
    Q8_0: (73.0, None),
    Q2_K: (10.0, 1.5),        # dmin = 1.5 d
    Q3_K: (42.5, None),
    Q4_K: (167.0, 7.5),       # dmin = 7.5 d
    Q5_K: (335.0, 15.5),      # dmin = 15.5 d
    Q6_K: (1350.0, None),
    IQ4_NL: (67.4, None),     # the RMS of kvalues_iq4nl
    IQ4_XS: (1246.0, None),   # times that of the sub-block scales, -32..31
    # ---- i-quants and ternary types (issue 23): the std of their weights at d = 1 (random bits)
    T.IQ2_XXS: (53.0, None),
    T.IQ2_XS: (56.0, None),
    T.IQ2_S: (56.0, None),
    T.IQ3_XXS: (142.0, None),
    T.IQ3_S: (140.0, None),
    T.IQ1_S: (7.2, None),
    T.IQ1_M: (7.2, None),     # its d lives in the top nibbles of scales (ggml_types.with_iq1m_scale)
    T.TQ1_0: (0.82, None),
    T.TQ2_0: (0.82, None),    # 2-bit fields 0..2 only, as the quantizer writes them
}


def random_tensor_bytes(ttype, shape, rng, std=None):
    """Random valid data of ``shape`` (ne0 first) in ggml type ``ttype``, as bytes."""
    ne0 = shape[0]
    n_rows = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    if std is None:
        std = 1.0 / np.sqrt(ne0)
    if ttype == F32:
        return (rng.standard_normal(ne0 * n_rows, dtype=np.float32) * std).astype("<f4").tobytes()
    if ttype == F16:
        return (rng.standard_normal(ne0 * n_rows, dtype=np.float32) * std).astype("<f2").tobytes()
    if ttype == BF16:          # the top halves of f32 values (truncated)
        x = (rng.standard_normal(ne0 * n_rows, dtype=np.float32) * std).astype("<f4")
        return (x.view("<u4") >> 16).astype("<u2").tobytes()
    t = GGML_TYPES[ttype]
    nb = ne0 // t.blck_size * n_rows
    raw = np.frombuffer(rng.bytes(nb * t.type_size), dtype=np.uint8).reshape(nb, t.type_size).copy()
    spread, mult = _SCALE_SPREAD[ttype]
    scale_fields = t.scale_fields          # d first, then m / dmin
    d = (std / spread) * rng.uniform(0.5, 1.5, nb).astype(np.float32)
    if ttype == T.TQ2_0:                   # t = 3 decodes, but no quantizer writes it: keep 0..2
        tq = rng.integers(0, 3, size=(nb, 64, 4), dtype=np.uint8) << np.array([0, 2, 4, 6], np.uint8)
        raw[:, :64] = np.bitwise_or.reduce(tq, axis=2)
    if ttype == T.IQ1_M:
        off = t.offset("scales")
        raw[:, off:off + 8] = T.with_iq1m_scale(raw[:, off:off + 8], d.astype(np.float16))
        return raw.tobytes()
    d_off = t.offset(scale_fields[0])
    raw[:, d_off:d_off + 2] = d.astype("<f2").view(np.uint8).reshape(nb, 2)
    if mult is not None:
        off = t.offset(scale_fields[1])
        raw[:, off:off + 2] = (d * mult).astype("<f2").view(np.uint8).reshape(nb, 2)
    return raw.tobytes()


class GGJTWriter:
    """Streams a ggjt v3 file: ``write_header`` once, then ``write_tensor`` per tensor."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.f = open(self.path, "wb")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.f:
            self.f.close()
            self.f = None

    def write_header(self, hp, vocab):
        f = self.f
        f.write(struct.pack("<II", MAGIC_GGJT, GGJT_VERSION))
        f.write(struct.pack("<7i", hp.n_vocab, hp.n_embd, hp.n_mult, hp.n_head, hp.n_layer, hp.n_rot, hp.ftype))
        if len(vocab) != hp.n_vocab:
            raise ValueError(f"vocab has {len(vocab)} entries, hparams.n_vocab is {hp.n_vocab}")
        for text, score in vocab:
            f.write(struct.pack("<I", len(text)))
            f.write(text)
            f.write(struct.pack("<f", score))

    def write_tensor(self, name, ttype, shape, data):
        f = self.f
        raw = name.encode("utf-8")
        f.write(struct.pack("<3i", len(shape), len(raw), ttype))
        f.write(struct.pack(f"<{len(shape)}i", *shape))
        f.write(raw)
        pad = -f.tell() % ALIGNMENT
        f.write(b"\0" * pad)
        f.write(data)


def synthetic_vocab(n_vocab):
    """A SentencePiece-style vocab of ``n_vocab`` pieces in the 2023 convert.py convention.

    <unk>, <s>, </s>, the 256 byte tokens, then single characters and growing
    strings of letters (with and without a leading space), each reachable by BPE
    merges of shorter pieces. Scores fall with the id, like a trained vocab's.
    """
    if n_vocab < 259:
        raise ValueError(f"n_vocab {n_vocab} < 259 (3 control/unknown + 256 byte tokens)")
    vocab = [(" \u2047 ".encode(), 0.0), (b"", 0.0), (b"", 0.0)]
    vocab += [(bytes([b]), 0.0) for b in range(256)]
    pieces, seen = [], set()

    def add(p):
        if p not in seen and len(vocab) + len(pieces) < n_vocab:
            seen.add(p)
            pieces.append(p)

    chars = [chr(c) for c in range(33, 127)] + list("éèàüöäßñçøå’“”—…€°")
    add(" ")
    for c in chars:
        add(" " + c)
        add(c)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    frontier = list(letters)
    while len(vocab) + len(pieces) < n_vocab and frontier:
        nxt = []
        for p in frontier:
            for c in letters:
                q = p + c
                add(q)
                add(" " + q)
                nxt.append(q)
                if len(vocab) + len(pieces) >= n_vocab:
                    break
        frontier = nxt
    vocab += [(p.encode("utf-8"), -float(i)) for i, p in enumerate(pieces)]
    return vocab


def gguf_vocab_arrays(path):
    """A GGUF file's vocabulary as written: (token pieces, scores, token types), three lists
    of n_vocab. Needs the ``gguf`` package."""
    import gguf
    r = gguf.GGUFReader(path)

    def field(name):
        f = r.fields[name]
        return [f.parts[i] for i in f.data]

    tokens = [bytes(p).decode("utf-8") for p in field("tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in field("tokenizer.ggml.scores")]
    types = [int(p[0]) for p in field("tokenizer.ggml.token_type")]
    return tokens, scores, types


def vocab_from_gguf(path):
    """The vocab of a GGUF file (e.g. ../shared/data/ggml-vocab-llama-spm.gguf) written the
    way the 2023 convert.py wrote it into ggjt files. Needs the ``gguf`` package."""
    tokens, scores, types = gguf_vocab_arrays(path)
    out = []
    for piece, score, ttype in zip(tokens, scores, types):
        if ttype == 2:      # unknown
            text = " \u2047 ".encode()
        elif ttype == 3:    # control
            text = b""
        elif ttype == 6:    # byte: "<0xNN>"
            text = bytes([int(piece[3:-1], 16)])
        else:
            text = piece.replace("\u2581", " ").encode("utf-8")
        out.append((text, score))
    return out


def write_random_model(path, ftype="q4_0", n_vocab=None, n_embd=256, n_mult=256, n_head=4, n_layer=2,
                       n_rot=None, vocab=None, seed=0, log=None, progress=None):
    """Write a random-weight LLaMA model of the given shape and file type to ``path``.

    ``vocab`` is a list of (bytes, score) in the ggjt convention; by default a
    synthetic one of ``n_vocab`` pieces (32000 if not given). Returns the HParams.
    ``progress(done, total)``: called after each tensor, in bytes of tensor data.
    """
    f = FTYPE_BY_NAME[ftype]
    if vocab is None:
        vocab = synthetic_vocab(n_vocab or 32000)
    hp = HParams(len(vocab), n_embd, n_mult, n_head, n_layer, n_rot or n_embd // n_head, f.id)
    rng = np.random.default_rng(seed)
    tmp = os.fspath(path) + ".tmp"
    with GGJTWriter(tmp) as w:
        w.write_header(hp, vocab)
        plan = [(name, shape, tensor_type_for(ftype, name, shape, _layer(name), n_layer))
                for name, shape in _file_order(expected_shapes(hp))]
        total = sum(_data_nbytes(ttype, shape) for _, shape, ttype in plan)
        done = 0
        for name, shape, ttype in plan:
            if len(shape) == 1:
                data = (1.0 + 0.1 * rng.standard_normal(shape[0], dtype=np.float32)).astype("<f4").tobytes()
            else:
                data = random_tensor_bytes(ttype, shape, rng)
            w.write_tensor(name, ttype, shape, data)
            if log:
                log(name, ttype, shape)
            done += len(data)
            if progress:
                progress(done, total)
    os.replace(tmp, path)
    return hp


def _layer(name):
    return int(name.split(".")[1]) if name.startswith("layers.") else 0


def _data_nbytes(ttype, shape):
    # what write_random_model writes for a tensor: 1-D ones (the norms) as f32
    if len(shape) == 1:
        return 4 * shape[0]
    return GGML_TYPES[ttype].row_bytes(shape[0]) * int(np.prod(shape[1:]))


def _file_order(shapes):
    # convert.py's order: embeddings, final norm, output, then each layer's tensors
    names = list(shapes)
    head = ["tok_embeddings.weight", "norm.weight", "output.weight"]
    return [(n, shapes[n]) for n in head] + [(n, shapes[n]) for n in names if n not in head]


def add_spm_vocab(w, pieces, bos_id=1, eos_id=2, unk_id=None):
    """A SentencePiece vocabulary (pieces: (text, score, type) each) into a gguf.GGUFWriter's
    metadata, as llama.cpp's converters write it (tokenizer.ggml.*); unk_id None: no unk key."""
    w.add_tokenizer_model("llama")
    w.add_token_list([p for p, _, _ in pieces])
    w.add_token_scores([s for _, s, _ in pieces])
    w.add_token_types([t for _, _, t in pieces])
    w.add_bos_token_id(bos_id)
    w.add_eos_token_id(eos_id)
    if unk_id is not None:
        w.add_unk_token_id(unk_id)


def ggjt_to_gguf(src, dst, eps=1e-6, n_ctx=2048, retype=None):
    """Write a GGUF v3 copy of the ggjt v3 file ``src`` to ``dst``: the same tensor bytes
    under GGUF's names, the hparams as ``llama.*`` keys (``eps``: the RMSNorm epsilon, which
    ggjt files do not store; guanaco_rt and the 2023 llama.cpp use 1e-6) and the vocab
    rebuilt into SentencePiece pieces and types. Needs the ``gguf`` package. Both files then
    give the same logits.

    Tensors are copied as they are: the ggjt Q/K rows are already in the order GGUF's llama
    files use (ggml's RoPE on adjacent pairs). ``retype``: a ggml type id; every quantized 2-D
    tensor becomes random blocks of that type instead (a file of a type ggjt never had, for
    benchmarks: IQ4_NL, IQ4_XS, BF16).
    """
    import gguf

    from .ggml_file import open_mmap, parse
    from .gguf_model import LAYER_NAMES, NAMES
    from .tokenizer import rebuild_pieces

    src = os.fspath(src)
    mm, _, _ = open_mmap(src)
    try:
        f = parse(src, mm)
        hp = f.hparams
        to_gguf = {v: k for k, v in NAMES.items()}
        to_gguf.update({f"{v}.weight": f"{k}.weight" for k, v in LAYER_NAMES.items()})
        tmp = os.fspath(dst) + ".tmp"
        w = gguf.GGUFWriter(tmp, "llama")
        w.add_name(os.path.basename(src))
        w.add_file_type(hp.ftype)
        w.add_context_length(n_ctx)
        w.add_embedding_length(hp.n_embd)
        w.add_block_count(hp.n_layer)
        w.add_feed_forward_length(hp.n_ff)
        w.add_head_count(hp.n_head)
        w.add_head_count_kv(hp.n_head)
        w.add_rope_dimension_count(hp.n_rot)
        w.add_layer_norm_rms_eps(eps)
        add_spm_vocab(w, rebuild_pieces(f.vocab, src), unk_id=0)
        buf = np.frombuffer(mm, np.uint8)
        rng = np.random.default_rng(7)
        for name, t in f.tensors.items():
            layer = name.split(".", 2)
            gname = f"blk.{layer[1]}.{to_gguf[layer[2]]}" if layer[0] == "layers" else to_gguf[name]
            data, ttype = buf[t.offset:t.offset + t.nbytes], t.type
            if retype is not None and t.type != F32 and len(t.shape) == 2:
                data, ttype = np.frombuffer(random_tensor_bytes(retype, t.shape, rng), np.uint8), retype
            if ttype == F32:
                w.add_tensor(gname, data.view(np.float32).reshape(tuple(reversed(t.shape))))
            else:
                w.add_tensor(gname, data.reshape(t.n_rows, -1), raw_dtype=gguf.GGMLQuantizationType(ttype))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        del buf, data, w
        os.replace(tmp, dst)
    finally:
        mm.close()


# ---- GGUF -> ggjt v3 (quantize(..., format="ggjt")) -----------------------------------------

_GGJT_FROM_GGUF = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
                   "output.weight": "output.weight"}
_GGJT_LAYER = {"attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv",
               "attn_output": "attention.wo", "attn_norm": "attention_norm", "ffn_gate": "feed_forward.w1",
               "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3", "ffn_norm": "ffn_norm"}
GGJT_EPS = 1e-6          # the RMSNorm epsilon a ggjt file implies (it has no field for it)


def _find_n_mult(n_ff, n_embd):
    """The n_mult the 2023 convert.py stored for a feed-forward width (its find_n_mult: the
    largest that rounds 8 * n_embd / 3 up to n_ff), or None"""
    for n_mult in range(8192, 1, -1):
        if ((2 * (4 * n_embd) // 3 + n_mult - 1) // n_mult) * n_mult == n_ff:
            return n_mult
    return None


def ggjt_hparams(g, check_types=True):
    """The ggjt v3 HParams of a parsed GGUF LLaMA file (gguf_file.GGUFFile), or InvalidArgumentError
    naming the field or tensor that ggjt cannot describe: another architecture, GQA, a RoPE base
    or scaling, an RMSNorm epsilon other than 1e-6, a BPE vocabulary, tied embeddings, tensors
    beyond LLaMA's, a feed-forward width no n_mult gives; with ``check_types``, a tensor type
    newer than ggjt v3's."""
    from .errors import InvalidArgumentError
    m, p = g.metadata, g.path

    def refuse(fld, why):
        raise InvalidArgumentError(f"{p}: ggjt v3 cannot describe this model: {fld} {why}; write GGUF instead",
                                   param="format")
    arch = m.get("general.architecture")
    if arch != "llama":
        refuse("general.architecture", f"is {arch!r}: ggjt files hold LLaMA models only")
    n_head = int(m.get("llama.attention.head_count", 0))
    n_embd = int(m.get("llama.embedding_length", 0))
    n_layer = int(m.get("llama.block_count", 0))
    n_ff = int(m.get("llama.feed_forward_length", 0))
    if not (n_head and n_embd and n_layer and n_ff):
        refuse("llama.attention.head_count", "(or embedding_length, block_count, feed_forward_length) is missing")
    kv = m.get("llama.attention.head_count_kv", n_head)
    if kv != n_head:
        refuse("llama.attention.head_count_kv", f"= {kv} differs from head_count {n_head} (grouped-query "
                                                "attention): ggjt has no field for it")
    if m.get("llama.rope.freq_base", 10000.0) != 10000.0:
        refuse("llama.rope.freq_base", f"= {m['llama.rope.freq_base']}: ggjt implies 10000")
    if m.get("llama.rope.scaling.type", "none") != "none":
        refuse("llama.rope.scaling.type", f"= {m['llama.rope.scaling.type']!r}: ggjt has no RoPE scaling")
    eps = m.get("llama.attention.layer_norm_rms_epsilon", 1e-5)       # our GGUF loader's default
    if np.float32(eps) != np.float32(GGJT_EPS):
        refuse("llama.attention.layer_norm_rms_epsilon", f"= {eps}: ggjt implies {GGJT_EPS}")
    if m.get("llama.expert_count", 0):
        refuse("llama.expert_count", f"= {m['llama.expert_count']}: ggjt has no experts")
    if m.get("tokenizer.ggml.model") != "llama" or "tokenizer.ggml.scores" not in m:
        refuse("tokenizer.ggml.model", f"is {m.get('tokenizer.ggml.model')!r}: ggjt holds a SentencePiece "
                                       "vocabulary with scores ('llama')")
    n_mult = _find_n_mult(n_ff, n_embd)
    if n_mult is None:
        refuse("llama.feed_forward_length", f"= {n_ff}: no n_mult rounds 8 * {n_embd} / 3 to it")
    n_rot = int(m.get("llama.rope.dimension_count", n_embd // n_head))
    ftype = int(m.get("general.file_type", 0))
    hp = HParams(len(m["tokenizer.ggml.tokens"]), n_embd, n_mult, n_head, n_layer, n_rot, ftype)
    want = expected_shapes(hp)
    for name, t in g.tensors.items():
        ours = _ggjt_name(name)
        if ours not in want:
            refuse(f"tensor {name!r}", "is not one of a LLaMA model's (ggjt has no name for it)")
        if tuple(t.shape) != want[ours]:
            refuse(f"tensor {name!r}", f"has shape {tuple(t.shape)}, not the {want[ours]} of these hparams")
        if check_types and t.type not in T.GGJT_WEIGHT_TYPES:
            refuse(f"tensor {name!r}", f"is {T.type_name(t.type)}, which ggjt v3 files never held")
    for name in want:
        if name not in {_ggjt_name(n) for n in g.tensors}:
            gname = {v: k for k, v in _GGJT_FROM_GGUF.items()}.get(name, name)
            refuse(f"tensor {gname!r}", "is missing (tied embeddings?): a ggjt LLaMA file has every tensor")
    if check_types and ftype not in T.FTYPES:
        refuse("general.file_type", f"= {ftype} is not a file type of ggjt v3")
    return hp


def _ggjt_name(gguf_name):
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _GGJT_LAYER and parts[3] == "weight":
        return f"layers.{parts[1]}.{_GGJT_LAYER[parts[2]]}.weight"
    return _GGJT_FROM_GGUF.get(gguf_name, gguf_name)


def _ggjt_vocab(m):
    """tokenizer.ggml.* -> [(bytes, score)] in the 2023 convert.py convention (vocab_from_gguf's)"""
    tokens, scores = m["tokenizer.ggml.tokens"], m["tokenizer.ggml.scores"]
    types = m.get("tokenizer.ggml.token_type", [1] * len(tokens))
    out = []
    for piece, score, ttype in zip(tokens, scores, types):
        if ttype == 2:
            text = " \u2047 ".encode()
        elif ttype == 3:
            text = b""
        elif ttype == 6 and len(piece) == 6 and piece.startswith("<0x"):
            text = bytes([int(piece[3:-1], 16)])
        else:
            text = piece.replace("\u2581", " ").encode("utf-8")
        out.append((text, float(score)))
    return out


def gguf_to_ggjt(src, dst):
    """Write the GGUF LLaMA file ``src`` as a ggjt v3 file ``dst``, as the llama.cpp of June-August
    2023 wrote them: hparams with the file type, the vocabulary with its scores, the tensors' bytes
    unchanged under the 2023 names in convert.py's order, each at a 32-byte offset. Models ggjt
    cannot describe are refused (ggjt_hparams)."""
    import mmap

    from . import gguf_file
    src, dst = os.fspath(src), os.fspath(dst)
    with open(src, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        g = gguf_file.parse(src, mm)
        hp = ggjt_hparams(g)
        by_name = {_ggjt_name(n): t for n, t in g.tensors.items()}
        tmp = dst + ".tmp"
        try:
            with GGJTWriter(tmp) as w:
                w.write_header(hp, _ggjt_vocab(g.metadata))
                for name, shape in _file_order(expected_shapes(hp)):
                    t = by_name[name]
                    w.write_tensor(name, t.type, shape, mm[t.offset:t.offset + t.nbytes])
            os.replace(tmp, dst)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return hp
    finally:
        mm.close()
