"""Run by the llama.cpp peer's Python (tests/test_quantize.py, benchmarks/bench_quantize.py):
llama.cpp's llama_model_quantize with its default parameters, no importance matrix, once per
OUT:LLAMA_FTYPE pair; prints each call's wall time in seconds.

    python peer_llama_quantize.py IN NTHREAD OUT:LLAMA_FTYPE [OUT:LLAMA_FTYPE ...] [--allow-requantize]
"""
import sys
import time

import llama_cpp

args = [a for a in sys.argv[1:] if not a.startswith("--")]
src, nthread, jobs = args[0], int(args[1]), args[2:]
llama_cpp.llama_backend_init()
for job in jobs:
    dst, ftype = job.rsplit(":", 1)
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = int(ftype)
    p.nthread = nthread
    p.allow_requantize = "--allow-requantize" in sys.argv
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p)
    print(f"{dst} {time.perf_counter() - t0:.4f}", flush=True)
    if rc:
        sys.exit(rc)
