"""Reader of the ggjt v3 container that llama.cpp wrote from May to August 2023.

Owns: magic -> hparams -> vocab -> tensor index, over a read-only mmap of the file,
and the validation of every count, length, dim, type, offset and size against the
file's size and the model's shape, all in Python integers, before anything is
allocated or read. Does no math; never copies tensor data.

Layout (all little-endian)::

    uint32 magic 'ggjt' (0x67676a74), uint32 version (3)
    int32  n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype
    n_vocab x { uint32 len; uint8 text[len]; float32 score }
    until EOF: { int32 n_dims; int32 name_len; int32 type; int32 ne[n_dims];
                 char name[name_len]; zero padding to a 32-byte file offset; data }
"""
import math
import mmap
import os
import stat
import struct
from dataclasses import dataclass, field

from .errors import FormatError, UnsupportedVersionError
from .ggml_types import F32, FTYPES, GGJT_WEIGHT_TYPES, GGML_TYPES, LEGACY_FTYPES, type_name

MAGIC_GGJT = 0x67676A74
MAGIC_GGMF = 0x67676D66
MAGIC_GGML = 0x67676D6C
MAGIC_GGUF = 0x46554747  # b"GGUF" read as a little-endian uint32
GGJT_VERSION = 3
ALIGNMENT = 32

# Limits that no LLaMA-family model comes near; they stop a hostile header from
# asking for huge loops or allocations before the file size check can.
MAX_VOCAB = 1 << 20
MAX_TOKEN_BYTES = 1 << 12
MAX_EMBD = 1 << 16
MAX_LAYER = 1 << 10
MAX_MULT = 1 << 16
MAX_NAME = 1 << 10
MAX_TENSORS = 16 * MAX_LAYER


@dataclass
class HParams:
    n_vocab: int
    n_embd: int
    n_mult: int
    n_head: int
    n_layer: int
    n_rot: int
    ftype: int
    version: int = GGJT_VERSION

    @property
    def n_ff(self):
        return ((2 * (4 * self.n_embd) // 3 + self.n_mult - 1) // self.n_mult) * self.n_mult

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @property
    def ftype_name(self):
        return FTYPES[self.ftype].name

    def as_dict(self):
        return {"n_vocab": self.n_vocab, "n_embd": self.n_embd, "n_mult": self.n_mult,
                "n_head": self.n_head, "n_layer": self.n_layer, "n_rot": self.n_rot,
                "n_ff": self.n_ff, "ftype": self.ftype, "ftype_name": self.ftype_name,
                "version": self.version}


@dataclass
class TensorInfo:
    name: str
    type: int
    shape: tuple       # ggml order: shape[0] = ne0 = row length
    offset: int        # of the data, in the file
    nbytes: int

    @property
    def type_name(self):
        return GGML_TYPES[self.type].name

    @property
    def n_rows(self):
        return self.shape[1] if len(self.shape) > 1 else 1


@dataclass
class GGJTFile:
    path: str
    file_size: int
    hparams: HParams
    vocab: list            # [(bytes, score)] in id order
    tensors: dict = field(default_factory=dict)   # name -> TensorInfo, file order


def expected_shapes(hp):
    """name -> shape (ne0 first) of every tensor a LLaMA model of these hparams has."""
    e, v, f = hp.n_embd, hp.n_vocab, hp.n_ff
    shapes = {"tok_embeddings.weight": (e, v), "norm.weight": (e,), "output.weight": (e, v)}
    for i in range(hp.n_layer):
        p = f"layers.{i}."
        for w in ("wq", "wk", "wv", "wo"):
            shapes[p + f"attention.{w}.weight"] = (e, e)
        shapes[p + "attention_norm.weight"] = (e,)
        shapes[p + "feed_forward.w1.weight"] = (e, f)
        shapes[p + "feed_forward.w2.weight"] = (f, e)
        shapes[p + "feed_forward.w3.weight"] = (e, f)
        shapes[p + "ffn_norm.weight"] = (e,)
    return shapes


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; every overrun is a FormatError."""

    def __init__(self, path, buf):
        self.path, self.buf, self.pos, self.size = path, buf, 0, len(buf)

    def need(self, n, what):
        if n < 0 or self.pos + n > self.size:
            raise FormatError(self.path, what,
                              f"needs {n} bytes at offset {self.pos}, but the file ends at {self.size} "
                              f"(truncated or corrupt)")

    def take(self, n, what):
        self.need(n, what)
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def i32(self, what):
        return struct.unpack("<i", self.take(4, what))[0]

    def u32(self, what):
        return struct.unpack("<I", self.take(4, what))[0]

    def f32(self, what):
        return struct.unpack("<f", self.take(4, what))[0]


def _check_range(path, field_name, value, lo, hi):
    if not lo <= value <= hi:
        raise FormatError(path, field_name, f"value {value} is outside the allowed range [{lo}, {hi}]")


def _read_magic(c):
    magic = c.u32("magic")
    if magic == MAGIC_GGJT:
        version = c.u32("version")
        if version == GGJT_VERSION:
            return version
        if version in (1, 2):
            why = {1: "its Q4/Q8 blocks use the pre-May-2023 bit layout",
                   2: "its Q4_0/Q4_1/Q8_0 blocks store f32 scales (v3 stores f16)"}[version]
            raise UnsupportedVersionError(c.path, "version",
                                          f"ggjt version {version} is not supported ({why}); "
                                          f"re-convert the model to ggjt v3 with a llama.cpp of June-August 2023")
        raise UnsupportedVersionError(c.path, "version",
                                      f"ggjt version {version} is unknown; only version {GGJT_VERSION} is supported")
    if magic == MAGIC_GGMF:
        raise UnsupportedVersionError(c.path, "magic",
                                      "this is a 'ggmf' (version 1) file; re-convert the model to ggjt v3")
    if magic == MAGIC_GGML:
        raise UnsupportedVersionError(c.path, "magic",
                                      "this is an unversioned 'ggml' file (no mmap, no scores); "
                                      "re-convert the model to ggjt v3")
    if magic == MAGIC_GGUF:
        raise UnsupportedVersionError(c.path, "magic",
                                      "this is a GGUF file; this reader takes ggjt v3 (.ggmlv3.*.bin) files, "
                                      "guanaco_rt.Model opens both")
    raise FormatError(c.path, "magic", f"0x{magic:08x} is not a model file guanaco_rt reads (expected ggjt v3, "
                                       f"magic 0x{MAGIC_GGJT:08x} 'ggjt', or GGUF v2/v3, magic 'GGUF')")


def _read_hparams(c, version):
    vals = [c.i32(f"hparams.{n}") for n in ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")]
    hp = HParams(*vals, version=version)
    p = c.path
    _check_range(p, "hparams.n_vocab", hp.n_vocab, 1, MAX_VOCAB)
    _check_range(p, "hparams.n_embd", hp.n_embd, 1, MAX_EMBD)
    _check_range(p, "hparams.n_mult", hp.n_mult, 1, MAX_MULT)
    _check_range(p, "hparams.n_head", hp.n_head, 1, hp.n_embd)
    _check_range(p, "hparams.n_layer", hp.n_layer, 1, MAX_LAYER)
    if hp.n_embd % hp.n_head:
        raise FormatError(p, "hparams.n_head", f"n_embd {hp.n_embd} is not a multiple of n_head {hp.n_head}")
    if hp.head_dim % 2:
        raise FormatError(p, "hparams.n_head", f"head size n_embd/n_head = {hp.head_dim} must be even for RoPE")
    _check_range(p, "hparams.n_rot", hp.n_rot, 2, hp.head_dim)
    if hp.n_rot % 2:
        raise FormatError(p, "hparams.n_rot", f"value {hp.n_rot} must be even")
    ftype = hp.ftype % 1000  # ggml's examples fold a quantization version in as ftype + 1000 * qver
    if ftype in LEGACY_FTYPES:
        raise UnsupportedVersionError(p, "hparams.ftype", f"ftype {hp.ftype} ({LEGACY_FTYPES[ftype]}) is not supported")
    if ftype not in FTYPES:
        raise FormatError(p, "hparams.ftype", f"value {hp.ftype} is not a known llama ftype ({sorted(FTYPES)})")
    hp.ftype = ftype
    return hp


def _read_vocab(c, hp):
    # every entry takes at least 8 bytes: refuse a count the file cannot hold before looping
    if hp.n_vocab * 8 > c.size - c.pos:
        raise FormatError(c.path, "hparams.n_vocab",
                          f"{hp.n_vocab} vocab entries need at least {hp.n_vocab * 8} bytes, "
                          f"but only {c.size - c.pos} remain in the file")
    vocab = []
    for i in range(hp.n_vocab):
        n = c.u32(f"vocab[{i}].length")
        if n > MAX_TOKEN_BYTES:
            raise FormatError(c.path, f"vocab[{i}].length", f"value {n} exceeds the limit {MAX_TOKEN_BYTES}")
        text = bytes(c.take(n, f"vocab[{i}].text"))
        score = c.f32(f"vocab[{i}].score")
        if not math.isfinite(score):
            raise FormatError(c.path, f"vocab[{i}].score", f"value {score} is not finite")
        vocab.append((text, score))
    return vocab


def _read_tensors(c, hp):
    tensors = {}
    expected = expected_shapes(hp)
    while c.pos < c.size:
        if len(tensors) >= MAX_TENSORS:
            raise FormatError(c.path, "tensors", f"more than {MAX_TENSORS} tensors")
        where = f"tensor #{len(tensors)} at offset {c.pos}"
        n_dims = c.i32(f"{where}: n_dims")
        name_len = c.i32(f"{where}: name length")
        ttype = c.i32(f"{where}: type")
        _check_range(c.path, f"{where}: n_dims", n_dims, 1, 2)
        _check_range(c.path, f"{where}: name length", name_len, 1, MAX_NAME)
        dims = [c.i32(f"{where}: ne[{k}]") for k in range(n_dims)]
        raw = bytes(c.take(name_len, f"{where}: name"))
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(c.path, f"{where}: name", f"{raw!r} is not UTF-8") from None
        where = f"tensor '{name}'"
        if ttype not in GGJT_WEIGHT_TYPES:
            raise FormatError(c.path, f"{where}: type",
                              f"value {ttype} ({type_name(ttype)}) is not a ggml weight type of ggjt v3 files "
                              f"({', '.join(GGML_TYPES[i].name for i in GGJT_WEIGHT_TYPES)})")
        for k, d in enumerate(dims):
            _check_range(c.path, f"{where}: ne[{k}]", d, 1, (1 << 31) - 1)
        t = GGML_TYPES[ttype]
        if dims[0] % t.blck_size:
            raise FormatError(c.path, f"{where}: ne[0]",
                              f"row length {dims[0]} is not a multiple of the {t.name} block size {t.blck_size}")
        if name not in expected:
            raise FormatError(c.path, where, "is not a tensor of a LLaMA model with these hparams "
                                             f"(n_layer={hp.n_layer})")
        if name in tensors:
            raise FormatError(c.path, where, f"appears twice (again at offset {c.pos})")
        if tuple(dims) != expected[name]:
            raise FormatError(c.path, f"{where}: shape", f"{tuple(dims)} does not match the expected "
                                                         f"{expected[name]} for these hparams")
        if len(dims) == 1 and ttype != F32:
            raise FormatError(c.path, f"{where}: type", f"1-D tensors must be F32, not {t.name}")
        nbytes = t.row_bytes(dims[0]) * (dims[1] if n_dims > 1 else 1)
        offset = (c.pos + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
        if offset + nbytes > c.size:
            raise FormatError(c.path, f"{where}: data",
                              f"{nbytes} bytes at offset {offset} run past the end of the file ({c.size} bytes)")
        tensors[name] = TensorInfo(name, ttype, tuple(dims), offset, nbytes)
        c.pos = offset + nbytes
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise FormatError(c.path, "tensors", f"{len(missing)} required tensor(s) missing, first: '{missing[0]}'")
    return tensors


def parse(path, buf):
    """Parse and validate a whole ggjt v3 file held in ``buf`` (bytes, mmap or memoryview)."""
    c = _Cursor(str(path), buf)
    version = _read_magic(c)
    hp = _read_hparams(c, version)
    vocab = _read_vocab(c, hp)
    tensors = _read_tensors(c, hp)
    return GGJTFile(str(path), c.size, hp, vocab, tensors)


def open_mmap(path, copy=False):
    """Map ``path`` read-only (or, with ``copy``, read it into memory); returns (buffer, size,
    (size, mtime_ns, inode, device)). Only a regular file is opened: a FIFO or a device
    would block or stream forever. An empty file is a FormatError, not a crash."""
    f, buf, size, ident = open_mapped(path, copy)
    f.close()
    return buf, size, ident


def open_mapped(path, copy=False):
    """As open_mmap, but also hands back the open file (first), so that the caller can
    fstat the very file it mapped later on, whatever happens to the path."""
    path = os.fspath(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(path, "path", "not a regular file (a FIFO, device or directory cannot hold a model)")
    f = open(path, "rb")
    try:
        st = os.fstat(f.fileno())
        size = st.st_size
        if size < 8:
            raise FormatError(path, "magic", f"file is {size} bytes long; a ggjt file has at least 8")
        ident = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        if copy:
            data = bytearray(size)
            if f.readinto(data) != size:
                raise FormatError(path, "size", f"file shrank while being read (expected {size} bytes)")
            return f, memoryview(data).toreadonly(), size, ident
        return f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size, ident
    except BaseException:
        f.close()
        raise
