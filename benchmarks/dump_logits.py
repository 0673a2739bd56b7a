"""Logit dump for before/after proofs: a refactor of the kernels must not move one bit.

    python benchmarks/dump_logits.py --models-dir DIR --out before.npz     # old build
    python benchmarks/dump_logits.py --models-dir DIR --out after.npz      # new build
    python benchmarks/dump_logits.py --compare before.npz after.npz

Writes (once, if missing) a small random model of each of the 14 Guanaco file types
into DIR, then for every ISA this machine runs (each in its own process, forced with
GUANACO_RT_ISA), 1, 2 and 3 threads, f32 and f16 KV caches: the logits of a 41-token
prompt evaluated in batches of 64 (all positions), the same prompt in batches of 5 and
token by token (last position), and 12 sampled tokens with their log-probabilities.
``--compare`` exits 1 unless every array is bit-identical.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FTYPES = ["q2_K", "q3_K_L", "q3_K_M", "q3_K_S", "q4_0", "q4_1", "q4_K_M", "q4_K_S",
          "q5_0", "q5_1", "q5_K_M", "q5_K_S", "q6_K", "q8_0"]

CHILD = r'''
import json, sys
import numpy as np
import guanaco_rt
paths, out = json.loads(sys.argv[1]), sys.argv[2]
res = {"isa": guanaco_rt.show_config()["isa"]}
prompt = [1] + [int(t) for t in np.random.default_rng(7).integers(3, 300, 40)]
for ftype, path in paths.items():
    m = guanaco_rt.Model(path)
    for nth in (1, 2, 3):
        for f16 in (False, True):
            key = f"{ftype}/t{nth}/{'f16' if f16 else 'f32'}"
            with guanaco_rt.Session(m, n_ctx=128, n_batch=64, n_threads=nth, kv_f16=f16) as s:
                res[key + "/all"] = s.eval(prompt, all_logits=True)
            with guanaco_rt.Session(m, n_ctx=128, n_batch=5, n_threads=nth, kv_f16=f16) as s:
                res[key + "/b5"] = s.eval(prompt)
            with guanaco_rt.Session(m, n_ctx=128, n_batch=1, n_threads=nth, kv_f16=f16) as s:
                res[key + "/b1"] = s.eval(prompt)
            with guanaco_rt.Session(m, n_ctx=128, n_threads=nth, kv_f16=f16, seed=3) as s:
                r = s.generate(prompt, max_new_tokens=12, temperature=0.8, top_k=0, top_p=0.95, n_probs=3)
                res[key + "/gen"] = np.array(r.tokens, np.int64)
                res[key + "/genlp"] = np.array([[lp for _, lp in row] for row in r.logprobs], np.float64)
np.savez(out, **{k: v for k, v in res.items() if k != "isa"}, isa=np.array(res["isa"]))
'''


def write_models(models_dir):
    from guanaco_rt.writer import write_random_model
    os.makedirs(models_dir, exist_ok=True)
    paths = {}
    for i, ftype in enumerate(FTYPES):
        path = os.path.join(models_dir, f"dump-{ftype}.bin")
        if not os.path.exists(path):
            write_random_model(path, ftype, n_vocab=300, n_embd=256, n_mult=256, n_head=4, n_layer=2, seed=100 + i)
        paths[ftype] = path
    return paths


def dump(models_dir, out):
    from guanaco_rt._kernels.dispatch import available_isas
    paths = write_models(models_dir)
    merged = {}
    for isa in available_isas():
        tmp = f"{out}.{isa}.npz"
        subprocess.run([sys.executable, "-c", CHILD, json.dumps(paths), tmp], check=True, cwd=HERE,
                       env={**os.environ, "GUANACO_RT_ISA": isa})
        with np.load(tmp) as z:
            assert str(z["isa"]) == isa
            merged.update({f"{isa}/{k}": z[k] for k in z.files if k != "isa"})
        os.remove(tmp)
    np.savez(out, **merged)
    print(f"{len(merged)} arrays ({len(paths)} file types x ISAs {available_isas()}) -> {out}")


def compare(a, b):
    za, zb = np.load(a), np.load(b)
    keys = sorted(set(za.files) | set(zb.files))
    bad = [k for k in keys if k not in za.files or k not in zb.files
           or za[k].shape != zb[k].shape or za[k].tobytes() != zb[k].tobytes()]
    print(f"{len(keys) - len(bad)} of {len(keys)} arrays bit-identical")
    for k in bad[:20]:
        print("  differs:", k)
    return 1 if bad else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", default=os.path.join(HERE, "models", "dump"))
    p.add_argument("--out")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"))
    a = p.parse_args()
    if a.compare:
        sys.exit(compare(*a.compare))
    if not a.out:
        p.error("--out or --compare is required")
    dump(a.models_dir, a.out)


if __name__ == "__main__":
    main()
