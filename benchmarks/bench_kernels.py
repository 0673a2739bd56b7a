"""Kernel throughput: GB/s of weights streamed by the matrix-vector product (one token)
and by the batched product (--tokens > 1), per block type x ISA x thread count.

    python benchmarks/bench_kernels.py [--rows 44032] [--cols 4096] [--tokens 1 8] [--isa avx2 avx512]

Weights are random valid blocks of a rows x cols matrix (default ~100-190 MB per type,
far beyond the caches), activations quantized the way the engine does it, and the rows
interleaved 8 at a time where the unit has 8-row kernels for the type, as a Model does at
load (--no-interleave: the one-row kernels). The units of --isa (default: every unit this
CPU runs, test-only ones aside) take turns, repetition by repetition, so that a drift of
the machine's speed falls on all of them; the median is reported.
"""
import argparse
import time

import numpy as np

from guanaco_rt import ggml_types as T
from guanaco_rt._kernels import _engine
from guanaco_rt._kernels._twins import matmul_twin, repack_twin
from guanaco_rt._kernels.dispatch import available_isas, kernel_set
from guanaco_rt._kernels.isa_list import UNITS
from guanaco_rt.errors import GuanacoError
from guanaco_rt.writer import random_tensor_bytes

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "F16"]


def timed(K, ttype, w, ne0, ne1, x, nth, r8):
    t0 = time.perf_counter()
    matmul_twin(K, ttype, w, ne0, ne1, x, nth, interleaved=r8)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=44032)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--types", nargs="+", default=TYPES)
    p.add_argument("--isa", nargs="+", default=None, help="units to compare (default: every unit this CPU runs)")
    p.add_argument("--no-interleave", action="store_true", help="the one-row kernels even where 8-row ones exist")
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    test_only = {u["name"] for u in UNITS if not u["default"]}
    isas = a.isa or [i for i in available_isas() if i not in test_only]
    for isa in isas:               # a unit this machine cannot run: one line, not a traceback
        try:
            kernel_set(isa, source="--isa")
        except GuanacoError as e:
            raise SystemExit(f"bench_kernels: {e}")
    cols = [f"{isa} t{n} x{tok}" for isa in isas for n in a.threads for tok in a.tokens]
    print(f"CPU features: {' '.join(sorted(_engine.cpu_features()))}")
    print(f"GB/s of weights ({a.rows} x {a.cols}; 'x8' = 8 tokens per weight pass, counted once per token; "
          f"r8: rows interleaved 8 at a time; median of {a.reps}, the units taking turns)\n")
    print("| type | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name in a.types:
        t = {k.lower(): v for k, v in T.TYPE_BY_NAME.items()}.get(name.lower())
        if t is None:
            raise SystemExit(f"--types: {name!r} is not one of {sorted(T.TYPE_BY_NAME)}")
        w = np.frombuffer(random_tensor_bytes(t.id, (a.cols, a.rows), rng), np.uint8)
        sets = {isa: kernel_set(isa) for isa in isas}
        r8 = {isa: not a.no_interleave and K.interleaves(t.id) and a.rows % 8 == 0 for isa, K in sets.items()}
        packed = repack_twin(t.id, w, a.cols, a.rows) if any(r8.values()) else None
        row = []
        for nth in a.threads:
            for tok in a.tokens:
                x = rng.standard_normal((tok, a.cols)).astype(np.float32)
                times = {isa: [] for isa in isas}
                for isa in isas:      # warm up (and fault in)
                    timed(sets[isa], t.id, packed if r8[isa] else w, a.cols, a.rows, x, nth, r8[isa])
                for _ in range(a.reps if tok == 1 or "generic" not in isas else 1):
                    for isa in isas:
                        times[isa].append(timed(sets[isa], t.id, packed if r8[isa] else w, a.cols, a.rows, x, nth,
                                                r8[isa]))
                row.append({isa: w.nbytes / sorted(v)[len(v) // 2] / 1e9 * tok for isa, v in times.items()})
        cells = [f"{row[i][isa]:.1f}{' r8' if r8[isa] else ''}" for isa in isas for i in range(len(row))]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
