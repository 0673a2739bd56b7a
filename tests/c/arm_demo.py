"""The demo model asked the France question (as tests/test_gguf_model.py asks it) on each
kernel unit named, in one process: its reply, and its logits over the prompt saved to
OUT_<unit>.npy. NEON units come from tests/c/neon_try.c (run_arm_python.sh builds it).

    python arm_demo.py OUT generic,neon_i8mm,neon_dotprod,neon [--against X86_generic.npy]

(generic first; the others are NEON builds)

Exits 1 when a unit's reply is not the expected one, or when a NEON unit's logits are not
the generic unit's bits (every NEON kernel the model uses is exact, tests/c/test_neon.c)."""
import platform
import sys
import time

import numpy as np

import guanaco_rt
from guanaco_rt._kernels import _engine, _isa_generic, dispatch

CHATML = ["<|im_start|>", "user", "Ċ", "What", "Ġis", "Ġthe", "Ġcapital", "Ġof", "ĠFrance", "?", "<|im_end|>", "Ċ",
          "<|im_start|>", "ass", "istant", "Ċ"]
ANSWER = "The capital of France is Paris."


def main(out, units, against=None):
    if any(name.startswith("neon") for name in units):
        from guanaco_rt._kernels import _neon_try
        for name in units[1:]:
            dispatch._SETS[name] = _engine.KernelSet(name, [(name, _neon_try.kernel_table(name)),
                                                             ("generic", _isa_generic.kernel_table())])
        print(f"{platform.machine()}: the best NEON build for this CPU is {_neon_try.best()}")
    path = guanaco_rt.demo_model_path(fetch=False)
    logits, bad = {}, 0
    for isa in units:
        model = guanaco_rt.Model(path, isa=isa, n_threads=2)
        index = {t: i for i, t in enumerate(model.file.vocab["tokens"])}
        ids = [index[p] for p in CHATML]
        t = time.time()
        with guanaco_rt.Session(model, n_ctx=128, n_threads=2) as s:
            logits[isa] = s.eval(ids, all_logits=True)
        with guanaco_rt.Session(model, n_ctx=128, n_threads=2) as s:
            reply = s.generate(ids, max_new_tokens=16, temperature=0).text
        print(f"{isa}: {reply!r} ({time.time() - t:.1f} s)", flush=True)
        np.save(f"{out}_{isa}.npy", logits[isa])
        bad += reply != ANSWER
    ref = logits[units[0]]
    for isa in units[1:]:
        same = np.array_equal(ref, logits[isa])
        print(f"{isa} vs {units[0]}: logits bit-identical: {same}; max |diff| {np.abs(ref - logits[isa]).max():.3g}"
              f" (max |logit| {np.abs(ref).max():.3g})")
        bad += isa.startswith("neon") and not same
    if against:
        other = np.load(against)
        for isa in units:
            print(f"{isa} vs {against}: bit-identical: {np.array_equal(other, logits[isa])}; "
                  f"max |diff| {np.abs(other - logits[isa]).max():.3g}")
    return 1 if bad else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    vs = args[args.index("--against") + 1] if "--against" in args else None
    sys.exit(main(args[0], args[1].split(","), vs))
