"""Run by the llama.cpp peer's Python (tests/test_quantize.py): quantizes float32 rows with that
build's own ggml_quantize_chunk, without or with an importance matrix, the oracle of our row
quantizers.

It serves requests on stdin/stdout until stdin closes: a request is four little-endian int64
(ggml type, nrows, n_per_row, with_imatrix), nrows*n_per_row float32 and, if with_imatrix,
n_per_row float32 (the importance of each column); the answer is one int64 (the byte count) and
the bytes.
"""
import ctypes
import glob
import os
import struct
import sys

import llama_cpp

lib_dir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
base = ctypes.CDLL(glob.glob(os.path.join(lib_dir, "libggml-base.so*"))[0])
base.ggml_quantize_chunk.restype = ctypes.c_size_t
base.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                     ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
base.ggml_row_size.restype = ctypes.c_size_t
base.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]

inp, out = sys.stdin.buffer, sys.stdout.buffer
while True:
    head = inp.read(32)
    if len(head) < 32:
        break
    t, nrows, n_per_row, with_imatrix = struct.unpack("<4q", head)
    src = inp.read(4 * nrows * n_per_row)
    qw = ctypes.c_char_p(inp.read(4 * n_per_row)) if with_imatrix else None
    dst = ctypes.create_string_buffer(base.ggml_row_size(t, n_per_row) * nrows)
    n = base.ggml_quantize_chunk(t, ctypes.c_char_p(src), dst, 0, nrows, n_per_row, qw)
    out.write(struct.pack("<q", n) + dst.raw[:n])
    out.flush()
