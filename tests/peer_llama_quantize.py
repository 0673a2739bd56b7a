"""Run by the llama.cpp peer's Python (tests/test_quantize.py, benchmarks/bench_quantize.py):
llama.cpp's llama_model_quantize with its default parameters, once per OUT:LLAMA_FTYPE pair;
prints each call's wall time in seconds.

    python peer_llama_quantize.py IN NTHREAD OUT:LLAMA_FTYPE [OUT:LLAMA_FTYPE ...] [--allow-requantize]
                                  [--imatrix-npz FILE]

--imatrix-npz: an importance matrix as llama_model_quantize takes it (params.imatrix, an array of
{name, data, size} ended by a NULL name), from a NumPy .npz of float32 arrays keyed by tensor name.
"""
import ctypes
import sys
import time

import llama_cpp
import numpy as np

argv = sys.argv[1:]
npz = None
if "--imatrix-npz" in argv:
    i = argv.index("--imatrix-npz")
    npz = argv[i + 1]
    del argv[i:i + 2]
args = [a for a in argv if not a.startswith("--")]
src, nthread, jobs = args[0], int(args[1]), args[2:]
imatrix = None
if npz is not None:
    with np.load(npz) as f:
        arrays = {k: np.ascontiguousarray(f[k], np.float32) for k in f.files}
    entries = (llama_cpp.llama_model_imatrix_data * (len(arrays) + 1))()
    names = [k.encode() for k in arrays]          # kept alive with arrays while quantizing
    for e, name, a in zip(entries, names, arrays.values()):
        e.name = name
        e.data = a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        e.size = a.size
    imatrix = entries                               # the last one stays {NULL, NULL, 0}
llama_cpp.llama_backend_init()
for job in jobs:
    dst, ftype = job.rsplit(":", 1)
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = int(ftype)
    p.nthread = nthread
    p.allow_requantize = "--allow-requantize" in argv
    if imatrix is not None:
        p.imatrix = ctypes.cast(imatrix, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p)
    print(f"{dst} {time.perf_counter() - t0:.4f}", flush=True)
    if rc:
        sys.exit(rc)
