"""LoRA adapters: reading them, checking them against a model, merging them into its
weights at load, and building the tables the engine applies at run time.

Owns: the two adapter formats and their names, shapes and scale; the check that an
adapter fits a model; the merged weights of ``Model(path, lora=...)`` (anonymous memory,
requantized to each tensor's type); the run-time tables of ``Session(model, lora=...)``
(_kernels/_lora.pyx does their arithmetic). Does not own the forward pass.

An adapter changes a weight W (n_out rows of n_in) into W + scale * B A, with A (r, n_in),
B (n_out, r) and scale = user scale * alpha / r (the user scale alone when alpha is 0).
The formats:

- GGUF, as llama.cpp's convert_lora_to_gguf.py writes it: ``general.type`` "adapter",
  ``adapter.type`` "lora", ``adapter.lora.alpha`` (float32), and per adapted weight two
  tensors named after the model's, ``blk.N.attn_q.weight.lora_a`` (ne = [n_in, r]: A as
  PEFT has it) and ``.lora_b`` (ne = [r, n_out]: B). Any weight type (F32, F16, BF16, Q8_0...).
  The converter has already applied to B's rows the permutation it applies to wq/wk.
- ggml "ggla", of mid-2023's convert-lora-to-ggml.py (the Guanaco adapters of 2023):
  uint32 magic 0x67676c61, uint32 version 1, int32 r, int32 alpha; then tensors until
  the end: int32 n_dims, int32 name length, int32 ftype (0 F32, 1 F16), int32 ne[n_dims]
  (ne0 first), the name, zero padding to a multiple of 32 bytes of the file, the data.
  Names are ours plus ``.loraA`` / ``.loraB``: ``layers.N.attention.wq.weight.loraA``. loraA
  holds A transposed (ne = [r, n_in]), loraB holds B (ne = [r, n_out]).

Adapted here: the seven matrices of each layer (attention wq wk wv wo, feed_forward w1 w3
w2). An adapter on anything else (token embeddings, output, norms, fused Phi-3 tensors) is
refused with an AdapterError that names the tensor, as is one whose shapes do not fit.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import struct
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import AdapterError, GuanacoError, InvalidArgumentError
from .gguf_model import LAYER_NAMES

# our matrix name (after "layers.N.") -> its slot in the engine's table (_lora.pxd LORA_*)
WHICH = {"attention.wq.weight": 0, "attention.wk.weight": 1, "attention.wv.weight": 2, "attention.wo.weight": 3,
         "feed_forward.w1.weight": 4, "feed_forward.w3.weight": 5, "feed_forward.w2.weight": 6}
GGLA_MAGIC = 0x67676C61
GGUF_NAMES = {"token_embd.weight": "tok_embeddings.weight", "output.weight": "output.weight",
              "output_norm.weight": "norm.weight"}


@dataclass
class Adapter:
    """A LoRA adapter file, read and dequantized to float32: ``weights`` maps our tensor name
    (``layers.0.attention.wq.weight``) to (A (r, n_in), B (n_out, r)); ``alpha`` 0: none."""
    path: str
    alpha: float
    weights: dict = field(default_factory=dict)
    arch: str | None = None
    digest: bytes = b""

    @classmethod
    def load(cls, path) -> Adapter:
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise AdapterError(path, "path", f"cannot read the adapter: {e.strerror or e}") from None
        if data[:4] == b"GGUF":
            ad = _read_gguf(path, data)
        elif len(data) >= 4 and struct.unpack_from("<I", data)[0] == GGLA_MAGIC:
            ad = _read_ggla(path, data)
        else:
            raise AdapterError(path, "magic", f"{data[:4]!r} is neither GGUF nor ggla (a ggml LoRA adapter)")
        ad.digest = hashlib.sha256(data).digest()
        return ad

    def scale(self, name, user_scale):
        """The factor of B A for tensor ``name``: user_scale * alpha / r, or user_scale when alpha is 0."""
        r = self.weights[name][0].shape[0]
        return float(user_scale) * self.alpha / r if self.alpha else float(user_scale)

    @property
    def rank(self):
        return max((a.shape[0] for a, _ in self.weights.values()), default=0)


def _pair(path, pairs, name, part, arr):
    # collect A or B of our tensor `name`
    got = pairs.setdefault(name, [None, None])
    i = 0 if part == "a" else 1
    if got[i] is not None:
        raise AdapterError(path, f"tensor {name}.lora_{part}", "given twice")
    got[i] = arr


def _finish(path, pairs, alpha, arch=None, header_r=None):
    ad = Adapter(path, float(alpha), {}, arch)
    for name, (a, b) in pairs.items():
        if a is None or b is None:
            raise AdapterError(path, f"tensor {name}", f"has lora_{'b' if a is not None else 'a'} but no "
                               f"lora_{'a' if a is None else 'b'}")
        if a.shape[0] != b.shape[1]:
            raise AdapterError(path, f"tensor {name}", f"A has rank {a.shape[0]} but B has rank {b.shape[1]}")
        if header_r is not None and a.shape[0] != header_r:
            raise AdapterError(path, f"tensor {name}", f"rank {a.shape[0]}, but the header says r = {header_r}")
        ad.weights[name] = (a, b)
    if not ad.weights:
        raise AdapterError(path, "tensors", "the adapter has no LoRA tensors")
    return ad


def _read_gguf(path, data):
    from . import gguf_file
    from ._kernels import _quants
    g = gguf_file.parse(path, data)
    md = g.metadata
    if md.get("general.type", "adapter") != "adapter":
        raise AdapterError(path, "general.type", f"{md.get('general.type')!r}: not an adapter (a model file?)")
    if md.get("adapter.type") != "lora":
        raise AdapterError(path, "adapter.type", f"{md.get('adapter.type')!r}: only 'lora' adapters are supported")
    alpha = md.get("adapter.lora.alpha", 0.0)
    if not isinstance(alpha, (int, float)) or not np.isfinite(alpha):
        raise AdapterError(path, "adapter.lora.alpha", f"{alpha!r} is not a finite number")
    pairs = {}
    for gname, t in g.tensors.items():
        base, dot, part = gname.rpartition(".")
        if part not in ("lora_a", "lora_b"):
            raise AdapterError(path, f"tensor {gname}", "not a LoRA tensor (.lora_a / .lora_b); adapters that "
                               "replace norms or other tensors are not supported")
        p = base.split(".")
        if len(p) == 4 and p[0] == "blk" and p[1].isdigit() and p[2] in LAYER_NAMES and p[3] == "weight":
            name = f"layers.{int(p[1])}.{LAYER_NAMES[p[2]]}.weight"
        else:
            name = GGUF_NAMES.get(base, base)
        if len(t.shape) != 2:
            raise AdapterError(path, f"tensor {gname}", f"shape {t.shape}: a LoRA matrix has 2 dimensions")
        n = t.shape[0] * t.shape[1]
        x = _quants.dequantize(t.type, np.frombuffer(data, np.uint8, t.nbytes, t.offset), n)
        x = x.reshape(t.shape[1], t.shape[0])         # rows of ne0
        _pair(path, pairs, name, part[-1], x)          # lora_a: A (r, n_in); lora_b: B (n_out, r)
    return _finish(path, pairs, alpha, md.get("general.architecture"))


def _read_ggla(path, data):
    size = len(data)
    if size < 16:
        raise AdapterError(path, "header", f"{size} bytes: a ggla header has 16")
    _, version, r, alpha = struct.unpack_from("<Iiii", data)
    if version != 1:
        raise AdapterError(path, "version", f"ggla version {version}; only 1 exists")
    if r < 1:
        raise AdapterError(path, "r", f"{r} is not a rank")
    pos, pairs = 16, {}
    while pos < size:
        if pos + 12 > size:
            raise AdapterError(path, f"tensor header at {pos}", "truncated")
        n_dims, n_name, ftype = struct.unpack_from("<iii", data, pos)
        if n_dims != 2 or not 0 < n_name <= 512 or ftype not in (0, 1):
            raise AdapterError(path, f"tensor header at {pos}", f"n_dims {n_dims}, name length {n_name}, ftype "
                               f"{ftype}: expected 2 dims, a name of 1..512 bytes, ftype 0 (F32) or 1 (F16)")
        pos += 12
        if pos + 8 + n_name > size:
            raise AdapterError(path, f"tensor header at {pos - 12}", "truncated")
        ne0, ne1 = struct.unpack_from("<ii", data, pos)
        pos += 8
        name = data[pos:pos + n_name].decode("utf-8", "replace")
        pos = (pos + n_name + 31) & -32
        if ne0 < 1 or ne1 < 1:
            raise AdapterError(path, f"tensor {name}", f"shape ({ne0}, {ne1})")
        dt = np.float32 if ftype == 0 else np.float16
        nbytes = ne0 * ne1 * np.dtype(dt).itemsize
        if pos + nbytes > size:
            raise AdapterError(path, f"tensor {name}", f"data [{pos}, {pos + nbytes}) runs past the end ({size})")
        x = np.frombuffer(data, dt, ne0 * ne1, pos).astype(np.float32).reshape(ne1, ne0)
        pos += nbytes
        base, dot, part = name.rpartition(".")
        if part not in ("loraA", "loraB"):
            raise AdapterError(path, f"tensor {name}", "not a LoRA tensor (.loraA / .loraB)")
        # loraA: ne = [r, n_in], rows of r: A transposed; loraB: ne = [r, n_out]: B
        _pair(path, pairs, base, "a" if part == "loraA" else "b", np.ascontiguousarray(x.T) if part == "loraA" else x)
    return _finish(path, pairs, alpha, None, r)


def parse_spec(spec):
    """``FILE[:SCALE]`` (the command line's --lora) -> (path, scale); a path that itself holds
    a colon is taken whole unless what follows the last colon is a number."""
    path, colon, tail = str(spec).rpartition(":")
    if colon and path:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return str(spec), 1.0


def normalize(lora, what="lora"):
    """``lora`` as Model / Session take it (None, a path, an Adapter, or a list of them or of
    (path or Adapter, scale)) -> [(Adapter, scale), ...]"""
    if lora is None:
        return []
    if isinstance(lora, (str, os.PathLike, Adapter)):
        lora = [lora]
    out = []
    for item in lora:
        if isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise InvalidArgumentError(f"{what}: {item!r} is not (adapter, scale)", param=what)
            src, scale = item
        else:
            src, scale = item, 1.0
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)) or not np.isfinite(scale):
            raise InvalidArgumentError(f"{what}: scale {scale!r} is not a finite number", param=what)
        ad = src if isinstance(src, Adapter) else Adapter.load(src)
        out.append((ad, float(scale)))
    return out


def check(model, adapters):
    """Raise AdapterError unless every tensor of every adapter fits ``model``: a layer matrix
    (WHICH) the model has, A (r, n_in) and B (n_out, r) of its shape."""
    arch = getattr(model.hparams, "arch", "llama")
    for ad, _ in adapters:
        if ad.arch is not None and ad.arch != arch:
            raise AdapterError(ad.path, "general.architecture", f"{ad.arch!r}, but the model is {arch!r}")
        for name, (a, b) in ad.weights.items():
            p = name.split(".", 2)
            if len(p) != 3 or p[0] != "layers" or p[2] not in WHICH:
                raise AdapterError(ad.path, f"tensor {name}", "LoRA on this tensor is not supported (only the layers' "
                                   "attention wq/wk/wv/wo and feed_forward w1/w3/w2)")
            t = model.tensors.get(name)
            if t is None:
                raise AdapterError(ad.path, f"tensor {name}", f"the model {model.path} has no such tensor "
                                   f"(n_layer {model.hparams.n_layer})")
            n_in, n_out = t.shape[0], t.n_rows
            if a.shape[1] != n_in or b.shape[0] != n_out:
                raise AdapterError(ad.path, f"tensor {name}", f"A {a.shape} and B {b.shape} do not fit the model's "
                                   f"weight of {n_out} rows of {n_in}: expected A (r, {n_in}) and B ({n_out}, r)")
    return adapters


def _stack(adapters):
    # our name -> (A (sum r, n_in), B (n_out, sum r) with each adapter's columns times its
    # scale over the first's, that first scale): several adapters as one of their summed rank
    per = {}
    for ad, s in adapters:
        for name, (a, b) in ad.weights.items():
            per.setdefault(name, []).append((a, b, ad.scale(name, s)))
    out = {}
    for name, parts in per.items():
        s0 = parts[0][2]
        if len(parts) == 1:
            out[name] = (parts[0][0], parts[0][1], s0)
        elif s0 == 0:
            out[name] = (np.vstack([a for a, _, _ in parts]), np.hstack([b * s for _, b, s in parts]), 1.0)
        else:
            out[name] = (np.vstack([a for a, _, _ in parts]), np.hstack([b * (s / s0) for _, b, s in parts]), s0)
    return out


def lora_set(model, adapters, tmp_rows=64):
    """The run-time tables of ``adapters`` ([(Adapter, scale)], checked) for one State of ``model``."""
    from ._kernels._lora import LoraSet
    t = model.tensors
    shape = (model.hparams.n_layer, t["layers.0.attention.wq.weight"].shape[0],
             t["layers.0.attention.wq.weight"].n_rows, t["layers.0.attention.wk.weight"].n_rows,
             t["layers.0.feed_forward.w1.weight"].n_rows)
    entries = [(int(name.split(".")[1]), WHICH[name.split(".", 2)[2]], a, b, s)
               for name, (a, b, s) in _stack(adapters).items()]
    return LoraSet(shape, entries, tmp_rows)


F32, F16, BF16 = 0, 1, 30
MERGE_ROWS = 1024        # rows of a weight merged at a time: bounds the float64 delta's memory


def merge(model, buf, adapters, n_threads=1):
    """The weights of ``model`` (whose file bytes ``buf`` shows) with ``adapters`` merged in:
    {our name: uint8 array in anonymous memory, the tensor's bytes as the file lays them out,
    of the same type}, and {"seconds", "bytes", "tensors"}. Each weight is dequantized to
    float32, W + sum scale B A is formed in float64 MERGE_ROWS rows at a time, rounded to
    float32 and quantized again to the weight's type (llama.cpp's export-lora does the same)."""
    from ._kernels import _quantize, _quants
    t0 = time.perf_counter()
    stacked = _stack(adapters)
    out = {}
    for name in sorted(stacked):
        a, b, s = stacked[name]
        t = model.tensors[name]
        n_in, n_out = t.shape[0], t.n_rows
        w = _quants.dequantize(t.type, buf[t.offset:t.offset + t.nbytes], n_in * n_out).reshape(n_out, n_in)
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        tmp = np.empty((min(MERGE_ROWS, n_out), n_in))     # in place, no temporaries of a whole weight
        for lo in range(0, n_out, MERGE_ROWS):
            hi = min(n_out, lo + MERGE_ROWS)
            d = tmp[:hi - lo]
            np.matmul(b64[lo:hi], a64, out=d)
            d *= s
            np.add(w[lo:hi], d, out=w[lo:hi], casting="unsafe")    # summed in float64, rounded once
        anon = mmap.mmap(-1, t.nbytes, flags=mmap.MAP_PRIVATE)
        dst = np.frombuffer(anon, np.uint8)
        if t.type == F32:
            dst[:] = w.reshape(-1).view(np.uint8)
        elif t.type == F16:
            dst[:] = w.astype(np.float16).reshape(-1).view(np.uint8)
        elif t.type == BF16:      # round to nearest even, as ggml's fp32 -> bf16
            u = w.reshape(-1).view(np.uint32).astype(np.uint64)
            dst[:] = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16).view(np.uint8)
        else:
            try:
                _quantize.quantize_rows_into(t.type, np.ascontiguousarray(w), dst.reshape(n_out, -1), n_threads)
            except (GuanacoError, ValueError) as e:
                raise AdapterError(adapters[0][0].path, f"tensor {name}", f"merging into {t.type_name} weights is "
                                   f"not supported ({e}); apply the adapter at run time: Session(model, lora=...)"
                                   ) from None
        out[name] = dst
    stats = {"seconds": time.perf_counter() - t0, "bytes": sum(x.nbytes for x in out.values()), "tensors": len(out)}
    return out, stats
