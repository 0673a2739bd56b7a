"""Reader of the GGUF container (versions 2 and 3), over a read-only buffer.

Owns: header -> metadata key/values -> tensor index -> data section, and the validation
of every count, length, type, n_dims, dim, offset and alignment against the file's size
before anything is allocated or read. Does no math, never copies tensor data, and knows
nothing of architectures: it hands back typed values and tensor extents.

Written here rather than wrapping gguf-py's GGUFReader: that reader trusts the file
(a huge count is a huge NumPy allocation, a cut string an IndexError, and its errors
are generic), memory-maps by path, and parses every array into NumPy up front; we need
a typed FormatError naming the field, the value and the limit, on any buffer, with the
cost of a malformed header bounded by its size. gguf-py serves as the independent
reference in the tests (its writer makes the files, its reader must agree with ours).

Layout (all little-endian; ggml's gguf.c)::

    char magic[4] "GGUF"; uint32 version (2, 3); uint64 n_tensors; uint64 n_kv
    n_kv x { string key; uint32 type; value }      string = uint64 len + UTF-8 bytes
        types: 0 u8 1 i8 2 u16 3 i16 4 u32 5 i32 6 f32 7 bool 8 string
               9 array (uint32 type, uint64 count, count values) 10 u64 11 i64 12 f64
    n_tensors x { string name; uint32 n_dims; uint64 ne[n_dims]; uint32 type; uint64 offset }
    zero padding to general.alignment (default 32); the data section: tensor offsets are
    relative to its start and multiples of the alignment
"""
import struct
from dataclasses import dataclass, field

from .errors import FormatError, UnsupportedVersionError
from .ggml_types import GGML_TYPES, type_label

GGUF_MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Limits no LLaMA-family file comes near; they bound what a hostile header can ask for
MAX_KV = 1 << 16
MAX_TENSORS = 1 << 16
MAX_KEY = 1 << 16           # bytes in a key or tensor name
MAX_STRING = 1 << 26        # bytes in a string value (chat templates are a few KB)
MAX_ARRAY = 1 << 24         # elements in an array (vocabularies: ~10^5)
MAX_DEPTH = 2               # arrays of arrays, no deeper
MAX_DIMS = 4                # GGML_MAX_DIMS
MAX_ALIGNMENT = 1 << 16

_SCALARS = {  # type id: (name, struct format)
    0: ("u8", "<B"), 1: ("i8", "<b"), 2: ("u16", "<H"), 3: ("i16", "<h"), 4: ("u32", "<I"), 5: ("i32", "<i"),
    6: ("f32", "<f"), 7: ("bool", "<B"), 10: ("u64", "<Q"), 11: ("i64", "<q"), 12: ("f64", "<d"),
}
STRING, ARRAY = 8, 9
TYPE_NAMES = {**{k: v[0] for k, v in _SCALARS.items()}, STRING: "string", ARRAY: "array"}


@dataclass
class GGUFTensor:
    name: str
    type: int
    shape: tuple        # ggml order: shape[0] = ne0 = row length
    offset: int         # of the data, in the file (absolute)
    nbytes: int

    @property
    def n_rows(self):
        n = 1
        for d in self.shape[1:]:
            n *= d
        return n

    @property
    def type_name(self):
        return GGML_TYPES[self.type].name


@dataclass
class GGUFFile:
    path: str
    size: int
    version: int
    metadata: dict                     # key -> Python value (int, float, bool, str, list)
    types: dict                        # key -> value type name ("u32", "string", "array[string]", ...)
    tensors: dict = field(default_factory=dict)   # name -> GGUFTensor, in file order
    alignment: int = DEFAULT_ALIGNMENT
    data_offset: int = 0


class _Cursor:
    def __init__(self, path, buf):
        self.path = path
        self.buf = buf
        self.size = len(buf)
        self.pos = 0

    def fail(self, fld, msg):
        raise FormatError(self.path, fld, msg)

    def need(self, n, fld):
        if n < 0 or self.pos + n > self.size:
            self.fail(fld, f"needs {n} bytes at offset {self.pos}, the file ends at {self.size}")

    def unpack(self, fmt, fld):
        n = struct.calcsize(fmt)
        self.need(n, fld)
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v[0] if len(v) == 1 else v

    def string(self, fld, limit):
        n = self.unpack("<Q", fld + " length")
        if n > limit:
            self.fail(fld, f"string of {n} bytes is longer than the limit {limit}")
        self.need(n, fld)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fail(fld, f"is not valid UTF-8 (byte {e.start} of {n})")

    def value(self, vtype, fld, depth=0):
        """One value of GGUF type ``vtype`` -> (Python value, type name)."""
        if vtype in _SCALARS:
            name, fmt = _SCALARS[vtype]
            v = self.unpack(fmt, fld)
            if vtype == 7:
                if v > 1:
                    self.fail(fld, f"bool value {v} is neither 0 nor 1")
                v = bool(v)
            return v, name
        if vtype == STRING:
            return self.string(fld, MAX_STRING), "string"
        if vtype == ARRAY:
            if depth >= MAX_DEPTH:
                self.fail(fld, f"arrays nest deeper than {MAX_DEPTH}")
            etype = self.unpack("<I", fld + " element type")
            if etype not in TYPE_NAMES:
                self.fail(fld, f"array element type {etype} is not a GGUF type (0..12)")
            count = self.unpack("<Q", fld + " count")
            # every element takes at least one byte (strings 8): a count the rest of the file
            # cannot hold is refused before any loop runs
            least = 8 if etype in (STRING, ARRAY) else struct.calcsize(_SCALARS[etype][1])
            if count > MAX_ARRAY or count * least > self.size - self.pos:
                self.fail(fld, f"array of {count} elements does not fit (limit {MAX_ARRAY}, "
                               f"{self.size - self.pos} bytes left)")
            if etype in _SCALARS and etype != 7:
                fmt = _SCALARS[etype][1]
                n = struct.calcsize(fmt)
                vals = list(struct.unpack_from(f"<{count}{fmt[1]}", self.buf, self.pos))
                self.pos += n * count
                return vals, f"array[{TYPE_NAMES[etype]}]"
            out = [self.value(etype, f"{fld}[{i}]", depth + 1)[0] for i in range(count)]
            return out, f"array[{TYPE_NAMES[etype]}]"
        self.fail(fld, f"value type {vtype} is not a GGUF type (0..12)")


def check_overlaps(path, tensors):
    """Refuse two tensors whose data share a byte: with the weights interleaved in place
    (mmap=False) the second would be rewritten through the first (all-NaN logits), and
    no writer produces such a file."""
    prev = None
    for t in sorted(tensors, key=lambda t: (t.offset, t.offset + t.nbytes)):
        if prev is not None and t.offset < prev.offset + prev.nbytes:
            raise FormatError(path, f"tensor {t.name!r} data",
                              f"bytes [{t.offset}, {t.offset + t.nbytes}) overlap those of tensor {prev.name!r} "
                              f"[{prev.offset}, {prev.offset + prev.nbytes})")
        if prev is None or t.offset + t.nbytes > prev.offset + prev.nbytes:
            prev = t


def is_gguf(buf):
    return len(buf) >= 4 and bytes(buf[:4]) == GGUF_MAGIC


def parse(path, buf):
    """Parse and validate a whole GGUF file held in ``buf`` (bytes, mmap or memoryview)."""
    c = _Cursor(str(path), buf)
    if not is_gguf(buf):
        c.fail("magic", f"{bytes(buf[:4])!r} is not b'GGUF'")
    c.pos = 4
    version = c.unpack("<I", "version")
    if version not in VERSIONS:
        raise UnsupportedVersionError(str(path), "version", f"GGUF version {version} is not supported "
                                      f"(supported: {', '.join(map(str, VERSIONS))}; version 1 files predate "
                                      "September 2023: convert them again)")
    n_tensors = c.unpack("<Q", "n_tensors")
    n_kv = c.unpack("<Q", "n_kv")
    if n_tensors > MAX_TENSORS:
        c.fail("n_tensors", f"{n_tensors} tensors is more than the limit {MAX_TENSORS}")
    if n_kv > MAX_KV:
        c.fail("n_kv", f"{n_kv} metadata entries is more than the limit {MAX_KV}")
    metadata, types = {}, {}
    for i in range(n_kv):
        key = c.string(f"metadata[{i}].key", MAX_KEY)
        if key in metadata:
            c.fail(f"metadata[{i}].key", f"duplicate key {key!r}")
        vtype = c.unpack("<I", f"metadata {key!r} type")
        metadata[key], types[key] = c.value(vtype, f"metadata {key!r}")
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if types.get("general.alignment", "u32") != "u32" or not (
            0 < alignment <= MAX_ALIGNMENT and alignment & (alignment - 1) == 0):
        c.fail("general.alignment", f"{alignment!r} is not a power of two in [1, {MAX_ALIGNMENT}] (u32)")
    infos = []
    for i in range(n_tensors):
        name = c.string(f"tensor[{i}].name", MAX_KEY)
        n_dims = c.unpack("<I", f"tensor {name!r} n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            c.fail(f"tensor {name!r} n_dims", f"{n_dims} is outside [1, {MAX_DIMS}]")
        dims = tuple(c.unpack("<Q", f"tensor {name!r} ne[{d}]") for d in range(n_dims))
        ttype = c.unpack("<I", f"tensor {name!r} type")
        offset = c.unpack("<Q", f"tensor {name!r} offset")
        infos.append((i, name, dims, ttype, offset))
    data_offset = -(-c.pos // alignment) * alignment
    if infos and data_offset > c.size:          # (a file without tensors ends unpadded)
        c.fail("data", f"the data section would start at {data_offset}, past the end of the file ({c.size})")
    tensors = {}
    for i, name, dims, ttype, offset in infos:
        fld = f"tensor {name!r}"
        if name in tensors:
            c.fail(f"tensor[{i}].name", f"duplicate tensor name {name!r}")
        if ttype not in GGML_TYPES or not GGML_TYPES[ttype].weight:
            c.fail(fld + " type", f"{type_label(ttype)} is not one this runtime reads "
                                  f"({', '.join(t.name for t in GGML_TYPES.values() if t.weight)})")
        t = GGML_TYPES[ttype]
        if any(d < 1 or d > 1 << 40 for d in dims):
            c.fail(fld + " shape", f"{dims}: every dim must be in [1, 2^40]")
        n = 1
        for d in dims:
            n *= d
        if dims[0] % t.blck_size:
            c.fail(fld + " shape", f"row length {dims[0]} is not a multiple of {t.name}'s block size {t.blck_size}")
        nbytes = n // t.blck_size * t.type_size
        if offset % alignment:
            c.fail(fld + " offset", f"{offset} is not a multiple of the alignment {alignment}")
        start = data_offset + offset
        if start + nbytes > c.size:
            c.fail(fld + " data", f"bytes [{start}, {start + nbytes}) run past the end of the file ({c.size})")
        tensors[name] = GGUFTensor(name, ttype, dims, start, nbytes)
    check_overlaps(str(path), tensors.values())
    return GGUFFile(str(path), c.size, version, metadata, types, tensors, alignment, data_offset)
