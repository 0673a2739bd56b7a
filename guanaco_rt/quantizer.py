"""Model quantization: an F32 / F16 / BF16 GGUF (or ggjt v3) file -> a GGUF file of one of the 14
llama.cpp file types, tensor by tensor, as llama.cpp's llama-quantize writes it, without an
importance matrix or with one (imatrix.py reads llama-imatrix's files).

Owns: the choice of each tensor's type (llama.cpp's llama_tensor_get_type: the output and token
embedding tensors, the attn_v / ffn_down "more bits" layers of the mixes, GQA, the fallbacks for
rows that are not a multiple of the block), the order of the output's tensors, its metadata and
layout, and the streaming write. The row quantizers are _kernels/_quantize (C, bit-identical to
ggml's); the file reader is gguf_file. Memory: one tensor in float32 and its quantized copy.

The output is what llama.cpp writes: GGUF v3; the input's metadata in its order minus the split
keys, then general.quantization_version = 2 and general.file_type = the llama_ftype; tensors in
llama.cpp's order (the ones outside blk.N first, then by layer, each group by name); alignment 32.
"""
import os
import re
import struct
from dataclasses import dataclass

import numpy as np

from . import ggml_types as T
from .errors import FormatError, InvalidArgumentError

# llama_ftype of each file type -> the tensor type most tensors get (llama_ftype_get_default_type)
FILE_TYPES = {
    "Q4_0": (2, T.Q4_0), "Q4_1": (3, T.Q4_1), "Q8_0": (7, T.Q8_0), "Q5_0": (8, T.Q5_0), "Q5_1": (9, T.Q5_1),
    "Q2_K": (10, T.Q2_K), "Q3_K_S": (11, T.Q3_K), "Q3_K_M": (12, T.Q3_K), "Q3_K_L": (13, T.Q3_K),
    "Q4_K_S": (14, T.Q4_K), "Q4_K_M": (15, T.Q4_K), "Q5_K_S": (16, T.Q5_K), "Q5_K_M": (17, T.Q5_K),
    "Q6_K": (18, T.Q6_K),
}
IQ4_NL = 20
BF16 = 30
QUANTIZATION_VERSION = 2          # GGML_QNT_VERSION
ALIGNMENT = 32                    # GGUF_DEFAULT_ALIGNMENT: llama.cpp pads its output to it
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")

# a tensor whose rows are not a multiple of its type's block gets this type instead (llama.cpp's
# tensor_type_fallback); one that is not even a multiple of 32 is written F16. The llama.cpp of 2025
# sent Q2_K and Q3_K to IQ4_NL; today's sends them to Q4_0.
FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}
FALLBACK_2025 = {**FALLBACK, T.Q2_K: IQ4_NL, T.Q3_K: IQ4_NL}
RULES = ("2026", "2025")

# names llama.cpp never quantizes (tensor_allows_quantization), besides 1-D tensors and norms
_KEEP = ("ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
         "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
         "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
         "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
         "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
         "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
         "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos",
         ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd")
_KEEP_EXACT = ("position_embd.weight", "token_types.weight")

_LAYER = re.compile(r"blk\.\s*([+-]?\d+)\.")


def _layer_of(name):
    m = _LAYER.match(name)
    return int(m.group(1)) if m else -1


def tensor_order(names):
    """llama.cpp's order of a file's tensors (its loader's map): those outside blk.N first, then
    by layer number, each group by name (bytewise)"""
    return sorted(names, key=lambda n: (_layer_of(n), n.encode()))


def _category(name, rules="2026"):
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    if rules == "2025":
        # then a fused QKV had rules of its own, MLA's kv_b none, and neither moved attn_v's counter
        if "attn_qkv.weight" in name:
            return "attn_qkv"
        if "attn_kv_b.weight" in name:
            return "other"
    for key, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"), ("attn_v.weight", "attn_v"),
                     ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat      # fused QKV and MLA's kv_b take attn_v's rules (llama.cpp's QKV branch is never reached)
    return "other"


def allows_quantization(name, shape):
    """llama.cpp's tensor_allows_quantization with its default parameters: 2-D and 3-D weights
    only, no norms, no expert gates and the other small tensors it keeps as they are"""
    n_dims = len(shape)
    while n_dims > 1 and shape[n_dims - 1] == 1:
        n_dims -= 1
    if n_dims < 2 or not name.endswith("weight") or "_norm.weight" in name:
        return False
    return not any(k in name for k in _KEEP) and name not in _KEEP_EXACT


@dataclass
class _Model:
    """What llama.cpp's choice of types reads from the model's hparams"""
    arch: str
    n_layer: int
    n_gqa: int
    n_expert: int
    is_70b: bool


def _model_of(meta):
    arch = meta.get("general.architecture", "llama")

    def get(key, default):
        v = meta.get(f"{arch}.{key}", default)
        return v[0] if isinstance(v, list) else v   # per-layer arrays: llama.cpp's il = 0
    n_layer = int(get("block_count", 0))
    n_head = int(get("attention.head_count", 0))
    n_head_kv = int(get("attention.head_count_kv", n_head))
    n_gqa = n_head // n_head_kv if n_head_kv else 0
    return _Model(arch, n_layer, n_gqa, int(get("expert_count", 0)),
                  arch == "llama" and n_layer == 80 and n_head != n_head_kv)


def _use_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


class _TypeChooser:
    """llama_tensor_get_type for the 14 file types, with its counters (it must see the tensors
    in tensor_order)"""

    def __init__(self, model, ftype_name, names, rules="2026", has_imatrix=False):
        self.m = model
        self.f = ftype_name
        self.rules = rules
        self.has_imatrix = has_imatrix
        self.default = FILE_TYPES[ftype_name][1]
        cats = [_category(n) for n in names]          # the count was the same in 2025
        self.n_attention_wv = cats.count("attn_v")
        self.tied = "output" not in cats
        self.n_ffn = model.n_layer
        self.i_attention_wv = self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0
        self.n_fallback = 0

    def _layer(self, i, name):
        if self.m.n_expert > 1:       # experts need not come in layer order: read the layer from the name
            m = re.match(r"blk\.\s*([+-]?\d+)\.", name)
            if not m or not 0 <= int(m.group(1)) < self.n_ffn:
                raise FormatError("", f"tensor {name!r}", f"has no layer number in [0, {self.n_ffn})")
            return int(m.group(1))
        return i

    def choose(self, name, shape):
        m, f, falcon = self.m, self.f, self.m.arch == "falcon"
        cat = _category(name, self.rules)
        if cat == "token_embd" and self.rules == "2025" and name != "token_embd.weight":
            cat = "token_embd_untied"         # 2025 tied only token_embd itself to the output's type
        new = self.default
        if cat == "output" or (self.tied and cat == "token_embd"):
            if falcon or shape[0] % T.GGML_TYPES[new].blck_size:
                new = T.Q8_0
            elif new != T.Q8_0:
                new = T.Q6_K
        elif cat in ("token_embd", "token_embd_untied"):
            pass
        elif cat == "attn_qkv":               # 2025 rules only
            new = {"Q3_K_M": T.Q4_K, "Q3_K_L": T.Q4_K, "Q4_K_M": T.Q5_K, "Q5_K_M": T.Q6_K}.get(f, new)
        elif cat == "attn_v":
            i, n = self.i_attention_wv, self.n_attention_wv
            if f == "Q2_K":
                new = T.Q4_K if m.n_gqa >= 4 else T.Q3_K
            elif f == "Q3_K_M":
                new = T.Q5_K if i < 2 else T.Q4_K
            elif f == "Q3_K_L":
                new = T.Q5_K
            elif f in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n):
                new = T.Q6_K
            elif f == "Q4_K_S" and i < 4:
                new = T.Q5_K
            if m.is_70b and new in (T.Q3_K, T.Q4_K):
                new = T.Q5_K
            if m.n_expert == 8:
                new = T.Q8_0
            self.i_attention_wv += 1
        elif cat == "attn_k":
            if m.n_expert == 8:
                new = T.Q8_0
        elif cat == "ffn_down":
            i, n = self._layer(self.i_ffn_down, name), self.n_ffn
            if f == "Q2_K":
                new = T.Q3_K
            elif f == "Q3_K_M":
                new = T.Q5_K if i < n // 16 else T.Q4_K if not falcon or _use_more_bits(i, n) else T.Q3_K
            elif f == "Q3_K_L":
                new = T.Q4_K if falcon else T.Q5_K
            elif f == "Q4_K_M":
                if falcon:
                    new = T.Q6_K if i < n // 16 else T.Q5_K if _use_more_bits(i, n) else T.Q4_K
                elif _use_more_bits(i, n):
                    new = T.Q6_K
            elif f == "Q5_K_M" and _use_more_bits(i, n):
                new = T.Q6_K
            elif f == "Q4_K_S" and not falcon and i < n // 8:
                new = T.Q5_K
            elif f in ("Q4_0", "Q5_0") and self.has_imatrix and i < n // 8:
                # llama.cpp's guard for the first ffn_down layers, only with an imatrix (so that the
                # files made without one stay what they were)
                new = T.Q4_1 if f == "Q4_0" else T.Q5_1
            self.i_ffn_down += 1
        elif cat == "attn_output":
            if not falcon:
                if m.n_expert == 8:
                    if f in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M"):
                        new = T.Q5_K
                else:
                    new = {"Q2_K": T.Q3_K, "Q3_K_M": T.Q4_K, "Q3_K_L": T.Q5_K}.get(f, new)
            elif f == "Q3_K_L":
                new = T.Q4_K
        elif cat == "ffn_gate":
            self._layer(self.i_ffn_gate, name)
            self.i_ffn_gate += 1
        elif cat == "ffn_up":
            self._layer(self.i_ffn_up, name)
            self.i_ffn_up += 1
        blck = T.GGML_TYPES[new].blck_size
        if shape[0] % blck:
            self.n_fallback += 1
            table = FALLBACK_2025 if self.rules == "2025" else FALLBACK
            if new not in table:
                # a 32-block type has nowhere smaller to go: today's llama.cpp writes F16 (below), 2025's stopped
                if self.rules == "2025":
                    raise InvalidArgumentError(f"quantize: tensor {name!r} has rows of {shape[0]}, not a multiple of "
                                               f"{blck}: llama.cpp of 2025 had no fallback for {T.type_name(new)}",
                                               param="rules")
                table = {new: new}
            new = table[new]
            if shape[0] % T.GGML_TYPES[new].blck_size:
                new = T.F16
        return new


# ---- GGUF writing --------------------------------------------------------------------------

_SCALAR_FMT = {"u8": (0, "<B"), "i8": (1, "<b"), "u16": (2, "<H"), "i16": (3, "<h"), "u32": (4, "<I"),
               "i32": (5, "<i"), "f32": (6, "<f"), "bool": (7, "<B"), "u64": (10, "<Q"), "i64": (11, "<q"),
               "f64": (12, "<d")}


def _gguf_string(s):
    b = s if isinstance(s, bytes) else s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _gguf_value(tname, v, key):
    if tname == "string":
        return struct.pack("<I", 8) + _gguf_string(v)
    if tname in _SCALAR_FMT:
        code, fmt = _SCALAR_FMT[tname]
        return struct.pack("<I", code) + struct.pack(fmt, v)
    inner = tname[len("array["):-1]
    if inner == "string":
        return struct.pack("<IIQ", 9, 8, len(v)) + b"".join(_gguf_string(s) for s in v)
    if inner not in _SCALAR_FMT:
        raise FormatError("", f"metadata {key!r}", f"an array of {inner} cannot be copied (llama.cpp refuses it too)")
    code, fmt = _SCALAR_FMT[inner]
    return struct.pack("<IIQ", 9, code, len(v)) + struct.pack(f"<{len(v)}{fmt[1]}", *v)


def _metadata_bytes(meta, types, ftype_id, extra=()):
    """The KV section: the input's pairs in order minus the split keys and the two llama.cpp sets,
    which come next, then ``extra`` [(key, type name, value)] (llama-quantize's overrides: a key
    set again moves to the end)"""
    out, n = [], 0
    extra_keys = {k for k, _, _ in extra}
    for key, v in meta.items():
        if key in SPLIT_KEYS or key in ("general.quantization_version", "general.file_type") or key in extra_keys:
            continue
        if key == "general.alignment":
            v = ALIGNMENT      # llama.cpp pads to 32 whatever the input said
        out.append(_gguf_string(key) + _gguf_value(types[key], v, key))
        n += 1
    out.append(_gguf_string("general.quantization_version") + _gguf_value("u32", QUANTIZATION_VERSION, ""))
    out.append(_gguf_string("general.file_type") + _gguf_value("u32", ftype_id, ""))
    for key, tname, v in extra:
        out.append(_gguf_string(key) + (struct.pack("<I", 8) + _gguf_string(v) if tname == "string"
                                        else _gguf_value(tname, v, key)))
    return b"".join(out), n + 2 + len(extra)


def _pad(n, a=ALIGNMENT):
    return -(-n // a) * a


def _to_f32(data, ttype, n, path, name, allow_requantize):
    """A tensor's bytes -> float32 (n,), as llama.cpp converts them"""
    if ttype == T.F32:
        return np.frombuffer(data, np.float32, n)
    if ttype == T.F16:
        return np.frombuffer(data, np.float16, n).astype(np.float32)
    if ttype == BF16:
        return (np.frombuffer(data, np.uint16, n).astype(np.uint32) << 16).view(np.float32)
    if not allow_requantize:
        raise InvalidArgumentError(f"{path}: tensor {name!r} is {T.type_name(ttype)}: requantizing a quantized "
                                   "tensor loses precision; pass allow_requantize=True (--allow-requantize) to do it",
                                   param="allow_requantize")
    from ._kernels import _quants
    return _quants.dequantize(ttype, np.frombuffer(data, np.uint8), n)


def _from_f32(x, new, nrows, n_per_row, threads, qw=None, rows_per_expert=0):
    """float32 (nrows * n_per_row,) -> the bytes of type ``new`` (qw: the importance of the columns,
    per expert)"""
    if new == T.F32:
        return x.tobytes()
    if new == T.F16:
        return x.astype(np.float16).tobytes()
    from ._kernels import _quantize
    out = np.empty((nrows, _quantize.row_bytes(new, n_per_row)), np.uint8)
    _quantize.quantize_rows_into(new, x.reshape(nrows, n_per_row), out, threads, qw, rows_per_expert)
    return out


def quantize(src, dst, ftype, allow_requantize=False, threads=None, progress=None, rules="2026", imatrix=None,
             format="gguf"):
    """Quantize the model file ``src`` (GGUF of F32/F16/BF16 weights, or ggjt v3) into the GGUF file
    ``dst`` of file type ``ftype`` (one of FILE_TYPES, case-insensitive: "Q4_K_M", "q8_0", ...),
    byte for byte as llama.cpp's llama-quantize of the same tensor rules writes it without an
    importance matrix. ``allow_requantize``: also take already-quantized tensors (dequantized
    first, as llama.cpp does). ``threads``: rows are quantized on that many threads (default: all
    cores). ``progress(i, n, name)`` is called before each of the n tensors. ``rules``: "2026" (the
    default: llama.cpp since early 2026, the peer we test against) or "2025" (llama.cpp of 2025: rows
    that are not a multiple of 256 fall back from Q2_K/Q3_K to IQ4_NL rather than Q4_0, and a fused
    attn_qkv tensor has its own rules). ``imatrix``: an importance matrix, as llama-quantize
    --imatrix: the path of a file of llama.cpp's llama-imatrix (GGUF or the legacy .dat; its name,
    dataset, entry and chunk counts go into the metadata as quantize.imatrix.*, as llama-quantize
    writes them), or a dict tensor name -> float32 importances (n_expert * ne0,) as
    llama_model_quantize takes them (no metadata). A tensor it has no entry for is quantized without
    one; with one, Q4_0 and Q5_0 files give their first n_layer/8 ffn_down tensors Q4_1 / Q5_1, as
    llama.cpp does. ``format``: "gguf" (the default) or "ggjt": the same tensors written as a ggjt v3
    file (the seed's format, as the llama.cpp of June-August 2023 wrote it), for LLaMA models that
    format can describe (no GQA, RoPE base 10000, RMSNorm epsilon 1e-6, SentencePiece vocabulary,
    an output tensor of its own; InvalidArgumentError names the field otherwise). Returns a dict:
    tensor name -> the type name it got.
    """
    if rules not in RULES:
        raise InvalidArgumentError(f"quantize: rules {rules!r} is not one of {', '.join(RULES)}", param="rules")
    key = str(ftype).strip().upper()
    names = {k.upper(): k for k in FILE_TYPES}
    if key not in names:
        raise InvalidArgumentError(f"quantize: file type {ftype!r} is not one of {', '.join(FILE_TYPES)}",
                                   param="ftype")
    ftype_name = names[key]
    threads = max(1, int(threads or os.cpu_count() or 1))
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise InvalidArgumentError(f"quantize: the output {dst} is the input file: writing it would destroy the "
                                   f"source before it is read", param="dst")
    if format not in ("gguf", "ggjt"):
        raise InvalidArgumentError(f"quantize: format {format!r} is not 'gguf' or 'ggjt'", param="format")
    imat = _imatrix_of(imatrix)
    if format == "ggjt":
        return _quantize_to_ggjt(src, dst, ftype_name, allow_requantize, threads, progress, rules, imat)
    with open(src, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        from .ggml_file import MAGIC_GGJT
        if len(magic) == 4 and struct.unpack("<I", magic)[0] == MAGIC_GGJT:
            return _quantize_ggjt(src, dst, ftype_name, allow_requantize, threads, progress, rules, imat)
        raise FormatError(src, "magic", f"{magic!r} is neither GGUF nor ggjt: not a model file quantize reads")
    return _quantize_gguf(src, dst, ftype_name, allow_requantize, threads, progress, rules, imat)


def _quantize_to_ggjt(src, dst, ftype_name, allow_requantize, threads, progress, rules, imat):
    """quantize into a GGUF file next to dst, then rewrite it as ggjt v3 (writer.gguf_to_ggjt); a GGUF
    input that ggjt cannot describe is refused before anything is quantized"""
    from .writer import ggjt_hparams, gguf_to_ggjt
    with open(src, "rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        import mmap

        from . import gguf_file
        with open(src, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            ggjt_hparams(gguf_file.parse(src, mm), check_types=False)
        finally:
            mm.close()
    tmp = dst + ".to-ggjt.gguf"
    try:
        types = quantize(src, tmp, ftype_name, allow_requantize, threads, progress, rules,
                         imatrix=_ImatrixPlan(imat))
        gguf_to_ggjt(tmp, dst)
        return types
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class _ImatrixPlan(tuple):
    """an imatrix already read (entries, extra metadata): passed on as it is"""


def _imatrix_of(imatrix):
    """quantize's imatrix argument -> (entries {name: float32 array} or None, the metadata llama-quantize
    adds [(key, type, value)])"""
    if imatrix is None:
        return None, ()
    if isinstance(imatrix, _ImatrixPlan):
        return tuple(imatrix)
    if isinstance(imatrix, dict):
        entries = {}
        for name, v in imatrix.items():
            a = np.ascontiguousarray(v, np.float32).ravel()
            if not np.all(np.isfinite(a)):
                raise InvalidArgumentError(f"quantize: the importance of {name!r} holds a non-finite value",
                                           param="imatrix")
            entries[str(name)] = a
        return entries or None, ()
    from . import imatrix as im_file
    path = os.fspath(imatrix)
    im = im_file.load(path)
    # llama-quantize's overrides: strings cut to 127 bytes, counts as u32; the chunk count only when > 0
    extra = [("quantize.imatrix.file", "string", path.encode("utf-8")[:127])]
    if im.datasets:
        extra.append(("quantize.imatrix.dataset", "string", im.datasets[0].encode("utf-8")[:127]))
    extra.append(("quantize.imatrix.entries_count", "u32", len(im.entries)))
    if im.chunk_count > 0:
        extra.append(("quantize.imatrix.chunks_count", "u32", im.chunk_count))
    return im.entries, tuple(extra)


def _importance_for(entries, name, shape, src):
    """The importance of a tensor's columns (or None), checked as llama.cpp checks it: a size other
    than ne0 * n_expert is an error, except for the token embeddings, which go without"""
    if entries is None or name not in entries:
        return None
    qw = entries[name]
    want = shape[0] * (shape[2] if len(shape) > 2 else 1)
    if qw.size != want:
        if name in ("token_embd.weight", "per_layer_token_embd.weight"):
            return None
        raise FormatError(src, f"imatrix entry {name!r}", f"has {qw.size} values where the tensor of shape "
                          f"{tuple(shape)} needs {want} (ne0 * n_expert): an imatrix of another model?")
    return qw


def _quantize_ggjt(src, dst, ftype_name, allow_requantize, threads, progress, rules, imat=(None, ())):
    """A ggjt v3 file goes through a GGUF copy of itself (writer.ggjt_to_gguf) next to dst"""
    from .writer import ggjt_to_gguf
    tmp = dst + ".from-ggjt.gguf"
    try:
        ggjt_to_gguf(src, tmp)
        return _quantize_gguf(tmp, dst, ftype_name, allow_requantize, threads, progress, rules, imat)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _quantize_gguf(src, dst, ftype_name, allow_requantize, threads, progress, rules, imat=(None, ())):
    import mmap

    from . import gguf_file
    ftype_id = FILE_TYPES[ftype_name][0]
    with open(src, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        g = gguf_file.parse(src, mm)
        order = tensor_order(list(g.tensors))
        entries, extra = imat
        chooser = _TypeChooser(_model_of(g.metadata), ftype_name, order, rules, has_imatrix=entries is not None)
        plan = []                        # (tensor, its new type, its shape without trailing 1s)
        for name in order:
            t = g.tensors[name]
            shape = list(t.shape)
            while len(shape) > 1 and shape[-1] == 1:
                shape.pop()
            new = chooser.choose(name, t.shape) if allows_quantization(name, t.shape) else t.type
            if new != t.type and t.type not in (T.F32, T.F16, BF16) and not allow_requantize:
                raise InvalidArgumentError(f"{src}: tensor {name!r} is {T.type_name(t.type)}: requantizing a "
                                           "quantized tensor loses precision; pass allow_requantize=True "
                                           "(--allow-requantize) to do it", param="allow_requantize")
            plan.append((t, new, shape))
        kv, n_kv = _metadata_bytes(g.metadata, g.types, ftype_id, extra)
        infos, offset, sizes = [], 0, []
        for t, new, shape in plan:
            n = int(np.prod(shape))
            nbytes = n // T.GGML_TYPES[new].blck_size * T.GGML_TYPES[new].type_size
            infos.append(_gguf_string(t.name) + struct.pack("<I", len(shape)) +
                         struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<IQ", new, offset))
            sizes.append(nbytes)
            offset += _pad(nbytes)
        head = b"GGUF" + struct.pack("<IQQ", 3, len(plan), n_kv) + kv + b"".join(infos)
        head += b"\0" * (_pad(len(head)) - len(head))
        tmp = dst + ".tmp"
        types = {}
        try:
            with open(tmp, "wb") as out:
                out.write(head)
                for i, ((t, new, shape), nbytes) in enumerate(zip(plan, sizes)):
                    if progress is not None:
                        progress(i, len(plan), t.name)
                    data = np.frombuffer(mm, np.uint8, t.nbytes, t.offset)    # a view: no copy
                    n = int(np.prod(shape))
                    qw = None if new == t.type else _importance_for(entries, t.name, shape, src)
                    rpe = shape[1] if len(shape) > 1 else 1          # the rows of one expert
                    if new == t.type:
                        blob = data
                    elif t.type in (T.F32, T.F16, BF16) and new not in (T.F32, T.F16):
                        from ._kernels import _quantize
                        blob = np.empty(nbytes, np.uint8)
                        _quantize.quantize_raw_into(new, t.type, data, shape[0], blob, threads, qw, rpe)
                    else:
                        x = _to_f32(data, t.type, n, src, t.name, allow_requantize)
                        blob = _from_f32(x, new, n // shape[0], shape[0], threads, qw, rpe)
                        del x
                    out.write(memoryview(blob))
                    out.write(b"\0" * (_pad(nbytes) - nbytes))
                    types[t.name] = T.type_name(new)
                    del data, blob
                if progress is not None:
                    progress(len(plan), len(plan), "")
            os.replace(tmp, dst)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return types
    finally:
        try:
            mm.close()
        except BufferError:     # an exception's traceback still holds a view of it: the GC closes it
            pass
