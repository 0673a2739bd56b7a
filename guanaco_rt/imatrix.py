"""llama.cpp's importance-matrix files, read as llama-quantize --imatrix reads them.

Owns: the two formats llama-imatrix writes and turning their sums into the per-column importance
the quantizers take. It does not quantize (quantizer.py and _kernels/_quantize do).

An entry is a weight tensor's name and, for each of its n_expert matrices (1 for a dense weight),
the sum over the calibration tokens of the squared activation that multiplies each of its ne0
columns, with the number of tokens. The importance of a column is that sum divided by the count:
the mean square of its input.

- The legacy binary file (``.dat``, llama-imatrix before mid-2025 and ``--output-format dat``
  since): int32 n_entries, then per entry int32 name length, the name, int32 ncall, int32 nval
  and nval float32 values, which are already means scaled back by ncall (so the importance is
  value / ncall); then, optionally, int32 chunk count, int32 length and the dataset's name.
- The GGUF file (llama-imatrix since mid-2025): per entry the tensors ``<name>.in_sum2`` (F32,
  ne0 x n_expert, the raw sums) and ``<name>.counts`` (F32, one count per expert), and the keys
  ``imatrix.datasets``, ``imatrix.chunk_count`` and ``imatrix.chunk_size``, which llama-quantize
  requires. An expert that saw no token gets importance 1 for every column.
"""
import math
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from .errors import FormatError

DATASETS, CHUNK_COUNT, CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"


@dataclass
class ImportanceMatrix:
    """The importance of each column of each weight: name -> float32 (n_expert * ne0,)"""
    path: str
    entries: dict = field(default_factory=dict)
    datasets: list = field(default_factory=list)
    chunk_count: int = 0
    legacy: bool = False


def load(path):
    """Read a llama.cpp importance-matrix file (GGUF or legacy binary); FormatError names the
    file, the entry and what is wrong."""
    path = os.fspath(path)
    with open(path, "rb") as fh:
        buf = fh.read()
    im = _load_gguf(path, buf) if buf[:4] == b"GGUF" else _load_legacy(path, buf)
    for name, v in im.entries.items():
        if not np.all(np.isfinite(v)):
            bad = v[~np.isfinite(v)][0]
            raise FormatError(path, f"entry {name!r}", f"holds a non-finite importance ({bad}): llama-quantize "
                                                       "refuses such a file too")
    return im


def _load_legacy(path, buf):
    pos = 0

    def take(n, what):
        nonlocal pos
        if pos + n > len(buf):
            raise FormatError(path, what, f"the file ends at byte {len(buf)}, {pos + n - len(buf)} bytes short")
        b = buf[pos:pos + n]
        pos += n
        return b
    if len(buf) < 4:
        raise FormatError(path, "n_entries", f"a file of {len(buf)} bytes is neither GGUF nor an imatrix .dat")
    n_entries = struct.unpack("<i", take(4, "n_entries"))[0]
    if n_entries < 1:
        raise FormatError(path, "n_entries", f"{n_entries}: no data (at least 1 entry)")
    sums, calls = {}, {}
    for i in range(n_entries):
        n = struct.unpack("<i", take(4, f"entry {i} name length"))[0]
        if not 0 <= n <= 1 << 16:
            raise FormatError(path, f"entry {i} name length", f"{n} is not in [0, 65536]")
        # llama.cpp keeps the name up to its first NUL; a later entry of the same name replaces it
        name = take(n, f"entry {i} name").split(b"\0", 1)[0].decode("utf-8", "replace")
        ncall, nval = struct.unpack("<ii", take(8, f"entry {name!r} ncall, nval"))
        if nval < 1:
            raise FormatError(path, f"entry {name!r} nval", f"{nval}: an entry has at least 1 value")
        sums[name] = np.frombuffer(take(4 * nval, f"entry {name!r} values"), np.float32).copy()
        calls[name] = ncall
    im = ImportanceMatrix(path, legacy=True)
    if len(buf) - pos >= 4:            # the optional trailer: chunk count, then the dataset's name
        im.chunk_count = struct.unpack("<i", take(4, "chunk count"))[0]
        if len(buf) - pos >= 4:
            n = struct.unpack("<i", take(4, "dataset name length"))[0]
            if 0 < n <= len(buf) - pos:
                im.datasets.append(take(n, "dataset name").split(b"\0", 1)[0].decode("utf-8", "replace"))
    for name, s in sums.items():
        ncall = calls[name]
        # the values are (sum / count) * ncall: dividing by ncall (in float32, as llama.cpp) gives the mean
        im.entries[name] = s / np.float32(ncall) if ncall > 0 else s
    return im


def _load_gguf(path, buf):
    from . import ggml_types as T
    from . import gguf_file
    g = gguf_file.parse(path, buf)
    if not g.tensors:
        raise FormatError(path, "n_tensors", "0: an imatrix file has at least one entry")
    missing = [k for k in (DATASETS, CHUNK_COUNT, CHUNK_SIZE) if k not in g.metadata]
    if missing:
        raise FormatError(path, missing[0], "missing: llama-quantize requires imatrix.datasets, imatrix.chunk_count "
                                            "and imatrix.chunk_size in a GGUF imatrix")
    pairs = {}
    for t in g.tensors.values():
        for suffix, slot in ((".in_sum2", 0), (".counts", 1)):
            if t.name.endswith(suffix) and len(t.name) > len(suffix):
                pairs.setdefault(t.name[:-len(suffix)], [None, None])[slot] = t
    im = ImportanceMatrix(path)
    ds = g.metadata[DATASETS]
    if g.types[DATASETS] == "array[string]":
        im.datasets = list(ds)
    im.chunk_count = int(g.metadata[CHUNK_COUNT]) if g.types[CHUNK_COUNT] == "u32" else 0
    for name in sorted(pairs):
        s, c = pairs[name]
        if s is None or c is None:
            raise FormatError(path, f"entry {name!r}", f"has {'no .in_sum2' if s is None else 'no .counts'} tensor: "
                                                       "sums and counts come in pairs")
        for t in (s, c):
            if t.type != T.F32:
                raise FormatError(path, f"tensor {t.name!r}", f"is {T.type_name(t.type)}: sums and counts are F32")
        sums = np.frombuffer(buf, np.float32, s.nbytes // 4, s.offset)
        counts = np.frombuffer(buf, np.float32, c.nbytes // 4, c.offset)
        if counts.size == 0 or sums.size % counts.size:
            raise FormatError(path, f"entry {name!r}", f"{sums.size} sums are not {counts.size} equal expert slices")
        ne0 = sums.size // counts.size
        e = np.empty(sums.size, np.float32)
        for j, cf in enumerate(counts.tolist()):
            count = np.float32(_lround(cf))            # llama.cpp rounds the stored count to an integer
            e[j * ne0:(j + 1) * ne0] = sums[j * ne0:(j + 1) * ne0] / count if count > 0 else np.float32(1)
        im.entries[name] = e
    return im


def _lround(v):
    """C's lround: half away from zero"""
    if not math.isfinite(v):
        return 0
    return int(math.copysign(math.floor(abs(v) + 0.5), v))
