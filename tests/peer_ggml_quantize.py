"""Run by the llama.cpp peer's Python (tests/test_quantize.py): quantizes float32 rows with that
build's own ggml_quantize_chunk (no importance matrix), the oracle of our row quantizers.

It serves requests on stdin/stdout until stdin closes: a request is three little-endian int64
(ggml type, nrows, n_per_row) and nrows*n_per_row float32; the answer is one int64 (the byte count)
and the bytes.
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
    head = inp.read(24)
    if len(head) < 24:
        break
    t, nrows, n_per_row = struct.unpack("<3q", head)
    src = inp.read(4 * nrows * n_per_row)
    dst = ctypes.create_string_buffer(base.ggml_row_size(t, n_per_row) * nrows)
    n = base.ggml_quantize_chunk(t, ctypes.c_char_p(src), dst, 0, nrows, n_per_row, None)
    out.write(struct.pack("<q", n) + dst.raw[:n])
    out.flush()
