"""Kernel throughput: GB/s of weights streamed by the matrix-vector product (one token)
and by the batched product (--tokens > 1), per block type x ISA x thread count.

    python benchmarks/bench_kernels.py [--rows 44032] [--cols 4096] [--tokens 1 8]

Weights are random valid blocks of a rows x cols matrix (default ~100-190 MB per type,
far beyond the caches), activations quantized the way the engine does it.
"""
import argparse
import time

import numpy as np

from guanaco_rt import ggml_types as T
from guanaco_rt._kernels._twins import matmul_twin
from guanaco_rt._kernels.dispatch import available_isas, kernel_set
from guanaco_rt.writer import random_tensor_bytes

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "F16"]


def bench(K, ttype, w, ne0, ne1, x, nth, reps):
    matmul_twin(K, ttype, w, ne0, ne1, x, nth)          # warm up (and fault in)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        matmul_twin(K, ttype, w, ne0, ne1, x, nth)
        times.append(time.perf_counter() - t0)
    return w.nbytes / sorted(times)[len(times) // 2] / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=44032)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--types", nargs="+", default=TYPES)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    isas = available_isas()
    cols = [f"{isa} t{n} x{tok}" for isa in isas for n in a.threads for tok in a.tokens]
    print(f"GB/s of weights ({a.rows} x {a.cols}; 'x8' = 8 tokens per weight pass, "
          f"counted once per token)\n")
    print("| type | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name in a.types:
        t = T.TYPE_BY_NAME[name]
        w = np.frombuffer(random_tensor_bytes(t.id, (a.cols, a.rows), rng), np.uint8)
        row = []
        for isa in isas:
            K = kernel_set(isa)
            for nth in a.threads:
                for tok in a.tokens:
                    x = rng.standard_normal((tok, a.cols)).astype(np.float32)
                    reps = a.reps if (isa != "generic" or tok == 1) else 1
                    row.append(bench(K, t.id, w, a.cols, a.rows, x, nth, reps) * tok)
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in row) + " |")


if __name__ == "__main__":
    main()
