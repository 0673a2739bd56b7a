"""Small model files for tests, written once per session by guanaco_rt's own writer; a
free localhost port for the server tests."""
import os
import socket
import struct

import numpy as np

from guanaco_rt import ggml_types as T
from guanaco_rt.writer import write_random_model

_CACHE = {}


def tiny_model(tmp_root, ftype="q4_0", n_vocab=300, n_embd=256, n_head=4, n_layer=2, n_mult=256, seed=1, vocab=None,
               tag=""):
    key = (ftype, n_vocab, n_embd, n_head, n_layer, n_mult, seed, tag)
    if key not in _CACHE:
        path = os.path.join(str(tmp_root), "tiny-{}-{}-{}-{}-{}-{}-{}{}.bin".format(*key))
        if not os.path.exists(path):
            write_random_model(path, ftype, n_vocab=n_vocab, n_embd=n_embd, n_mult=n_mult, n_head=n_head,
                               n_layer=n_layer, seed=seed, vocab=vocab)
        _CACHE[key] = path
    return _CACHE[key]


class FileLayout:
    """Byte offsets of the fields of a ggjt file, for planting one defect at a time."""

    def __init__(self, data):
        self.data = bytes(data)
        n_vocab = struct.unpack_from("<i", self.data, 8)[0]
        self.hparams = 8
        self.vocab = 36
        pos = 36
        self.vocab_entries = []
        for _ in range(n_vocab):
            n = struct.unpack_from("<I", self.data, pos)[0]
            self.vocab_entries.append(pos)
            pos += 4 + n + 4
        self.tensors = []   # (header offset, name, type offset, dims offset, n_dims, data offset, nbytes)
        from guanaco_rt.ggml_types import GGML_TYPES
        while pos < len(self.data):
            n_dims, name_len, ttype = struct.unpack_from("<3i", self.data, pos)
            dims = struct.unpack_from(f"<{n_dims}i", self.data, pos + 12)
            name = self.data[pos + 12 + 4 * n_dims: pos + 12 + 4 * n_dims + name_len].decode()
            end_hdr = pos + 12 + 4 * n_dims + name_len
            off = (end_hdr + 31) // 32 * 32
            t = GGML_TYPES[ttype]
            nbytes = t.row_bytes(dims[0]) * (dims[1] if n_dims > 1 else 1)
            self.tensors.append(dict(at=pos, name=name, n_dims=n_dims, dims=dims, type=ttype, data=off,
                                     nbytes=nbytes, end_hdr=end_hdr))
            pos = off + nbytes

    def tensor(self, name):
        return next(t for t in self.tensors if t["name"] == name)

    def patch(self, offset, fmt, *values):
        b = bytearray(self.data)
        struct.pack_into(fmt, b, offset, *values)
        return bytes(b)


def penalize(sampler, logits, history, p):
    """The C chain's bias and penalties through its twin: float64 (n_vocab,)."""
    logits = np.ascontiguousarray(logits, np.float32)
    return sampler.core(p, logits.size).penalize(logits, np.asarray(history, np.int32))


def sample(sampler, logits, history, p):
    """One draw of the C chain through its twin -> (token id, top log-probs or None)."""
    logits = np.ascontiguousarray(logits, np.float32)
    return sampler.core(p, logits.size).sample(logits, np.asarray(history, np.int32))


def free_port():
    """A localhost TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def child():
    """subprocess keywords for a child Python that must import the guanaco_rt under test, as
    installed or as built in place: its folder first on PYTHONPATH, and this folder as the
    working directory, where no unbuilt source tree (a fresh checkout's ./guanaco_rt, which
    `python -c` and `-m` would put first on sys.path) can shadow it."""
    import guanaco_rt
    root = os.path.dirname(os.path.dirname(os.path.abspath(guanaco_rt.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    return {"env": env, "cwd": TESTS_DIR}


def spm_vocab(n_vocab=300):
    """A SentencePiece vocabulary of n_vocab >= 260 pieces (the first 300 always the same)"""
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    words = [f"\u2581{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmn") + ["\u2581"]
    words += [f"\u2581{a}{b}" for a in "abcdefghijklmnopqrstuvwxyz" for b in "abcdefghijklmnopqrstuvwxyz"]
    pieces += [(w, -float(i), 1) for i, w in enumerate(words)]
    return pieces[:n_vocab]


def add_llama_hparams(w, n_layer, n_embd, n_ff, n_head, n_head_kv=None, eps=1e-5, n_ctx=None, rope_base=None,
                      file_type=None):
    """The llama.* hyperparameters the runtime and llama.cpp's loader read, on a gguf.GGUFWriter, in
    one order (n_ctx, rope_base, file_type only when given; n_head_kv defaults to n_head)"""
    if n_ctx is not None:
        w.add_context_length(n_ctx)
    w.add_block_count(n_layer)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head if n_head_kv is None else n_head_kv)
    w.add_rope_dimension_count(n_embd // n_head)
    if rope_base is not None:
        w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(eps)
    if file_type is not None:
        w.add_file_type(file_type)


def write_llama_gguf(path, n_embd=192, n_head=6, n_head_kv=2, n_layer=2, n_ff=320, wtype=3, emb_type=8,  # Q4_1, Q8_0
                     tied=True, rope_base=100000.0, scaling=None, eps=1e-5, seed=0, flags=None, n_vocab=300,
                     extra=None):
    """A small LLaMA GGUF file with random weights of type ``wtype`` (the embeddings ``emb_type``) and
    spm_vocab(n_vocab); ``tied``: no output.weight (the output multiplies by the token embeddings, as
    SmolLM2's does)"""
    import gguf

    from guanaco_rt.writer import add_spm_vocab, random_tensor_bytes

    pieces = spm_vocab(n_vocab)
    n_vocab = len(pieces)
    hd = n_embd // n_head
    w = gguf.GGUFWriter(str(path), "llama")
    add_llama_hparams(w, n_layer, n_embd, n_ff, n_head, n_head_kv, eps=eps, rope_base=rope_base)
    if scaling:
        w.add_string("llama.rope.scaling.type", scaling[0])
        w.add_float32("llama.rope.scaling.factor", scaling[1])
    add_spm_vocab(w, pieces)
    for key, value in (extra or {}).items():       # more metadata: {key: int or str}
        if isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_uint32(key, value)
    for key, value in (flags or {}).items():
        if isinstance(value, bool):
            w.add_bool(f"tokenizer.ggml.{key}", value)
        else:
            w.add_uint32(f"tokenizer.ggml.{key}", value)
    rng = np.random.default_rng(seed)

    def add(name, ttype, shape):           # shape in ggml order (ne0 first)
        raw = np.frombuffer(random_tensor_bytes(ttype, shape, rng), np.uint8)
        if ttype == 0:                     # F32
            w.add_tensor(name, raw.view(np.float32).reshape(tuple(reversed(shape))))
        else:
            rows = int(np.prod(shape[1:]))
            w.add_tensor(name, raw.reshape(rows, -1), raw_dtype=gguf.GGMLQuantizationType(ttype))

    add("token_embd.weight", emb_type, (n_embd, n_vocab))
    for i in range(n_layer):
        add(f"blk.{i}.attn_norm.weight", 0, (n_embd,))
        add(f"blk.{i}.attn_q.weight", wtype, (n_embd, n_embd))
        add(f"blk.{i}.attn_k.weight", wtype, (n_embd, n_head_kv * hd))
        add(f"blk.{i}.attn_v.weight", wtype, (n_embd, n_head_kv * hd))
        add(f"blk.{i}.attn_output.weight", wtype, (n_embd, n_embd))
        add(f"blk.{i}.ffn_norm.weight", 0, (n_embd,))
        add(f"blk.{i}.ffn_gate.weight", wtype, (n_embd, n_ff))
        add(f"blk.{i}.ffn_up.weight", wtype, (n_embd, n_ff))
        add(f"blk.{i}.ffn_down.weight", wtype, (n_ff, n_embd))
    add("output_norm.weight", 0, (n_embd,))
    if not tied:
        add("output.weight", emb_type, (n_embd, n_vocab))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


# the weight types tiny_typed (conftest) makes tiny models of, by name
TINY_WTYPES = {"q4_0": T.Q4_0, "q8_0": T.Q8_0, "q4_K": T.Q4_K, "q6_K": T.Q6_K, "iq4_nl": T.IQ4_NL, "f16": T.F16}


def tiny_gguf(tmp_root, wtype, emb_type=None, n_vocab=300, tied=True, n_embd=256, n_head=4, n_head_kv=2, n_layer=2,
              n_ff=512, seed=0):
    """write_llama_gguf's file (RoPE base 10000), written once per session"""
    key = ("gguf", wtype, emb_type, n_vocab, tied, n_embd, n_head, n_head_kv, n_layer, n_ff, seed)
    if key not in _CACHE:
        path = os.path.join(str(tmp_root), "tiny-" + "-".join(map(str, key)) + ".gguf")
        _CACHE[key] = write_llama_gguf(path, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv, n_layer=n_layer,
                                       n_ff=n_ff, wtype=wtype, emb_type=wtype if emb_type is None else emb_type,
                                       tied=tied, rope_base=10000.0, seed=seed, n_vocab=n_vocab)
    return _CACHE[key]


def add_one_layer_llama(w, n_embd, n_vocab, seed=0, n_head=2, n_ff=64):
    """The LLaMA hparams and one layer of random F32 tensors (norms of ones) on a gguf.GGUFWriter
    that has its vocabulary: a file the runtime and llama.cpp open, for tokenizer and template tests."""
    from guanaco_rt import ggml_types as T
    from guanaco_rt.writer import random_tensor_bytes
    add_llama_hparams(w, 1, n_embd, n_ff, n_head)
    rng = np.random.default_rng(seed)

    def add(name, shape):
        if len(shape) == 1:
            w.add_tensor(name, np.ones(shape, np.float32))
        else:
            raw = np.frombuffer(random_tensor_bytes(T.F32, shape, rng), np.float32)
            w.add_tensor(name, raw.reshape(tuple(reversed(shape))))

    add("token_embd.weight", (n_embd, n_vocab))
    for name, shape in (("attn_norm", (n_embd,)), ("attn_q", (n_embd, n_embd)), ("attn_k", (n_embd, n_embd)),
                        ("attn_v", (n_embd, n_embd)), ("attn_output", (n_embd, n_embd)), ("ffn_norm", (n_embd,)),
                        ("ffn_gate", (n_embd, n_ff)), ("ffn_up", (n_embd, n_ff)), ("ffn_down", (n_ff, n_embd))):
        add(f"blk.0.{name}.weight", shape)
    add("output_norm.weight", (n_embd,))


def finish_gguf(w):
    """Write a gguf.GGUFWriter's header, metadata and tensors, and close it."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
