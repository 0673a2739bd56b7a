"""Embeddings against the float64 forward: ours and llama.cpp's, per pooling, on one model.

    python benchmarks/embeddings_check.py [--model FILE] [--peer-python PY]

The float64 reference is transformers' model of the same GGUF file (its own loader, CPU
torch: pip install torch==2.13.0 transformers accelerate). llama.cpp's vectors come from
llama-cpp-python in the --peer-python interpreter (Llama(embedding=True, pooling_type=...)).
Prints the mean and minimum cosine similarity to float64 over the texts.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import guanaco_rt  # noqa: E402

TEXTS = ["The cat sat on the mat.", "A kitten rested on the rug.", "Quarterly revenue rose by five percent.",
         "Paris is the capital of France.", "How do I reset my password?", "def add(a, b):\n    return a + b",
         "The mitochondria is the powerhouse of the cell.", "Il pleut depuis trois jours à Lyon.",
         "Shipping takes three to five business days.", "Guanaco is a camelid native to South America.",
         "Prices in the euro area rose 2.4% in April.", "She tuned the violin before the concert began."]
POOLS = {"mean": 1, "cls": 2, "last": 3}


def pool(h, p):
    v = {"mean": h.mean(axis=0), "cls": h[0], "last": h[-1]}[p]
    return v / np.linalg.norm(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--peer-python", default=None)
    a = ap.parse_args()
    path = a.model or guanaco_rt.demo_model_path()
    from family_reference import TransformersGGUFReference
    ref = TransformersGGUFReference(path)
    m = guanaco_rt.Model(path, n_threads=1)
    hidden = [ref.hidden(m.tokenize(t)) for t in TEXTS]
    theirs = None
    if a.peer_python:
        code = (f"import json, llama_cpp\nout = {{}}\n"
                f"for name, p in {list(POOLS.items())!r}:\n"
                f"    llm = llama_cpp.Llama({path!r}, embedding=True, pooling_type=p, n_ctx=256, verbose=False)\n"
                f"    out[name] = [llm.embed(t, normalize=True) for t in {TEXTS!r}]\n"
                f"print(json.dumps(out))\n")
        r = subprocess.run([a.peer_python, "-c", code], capture_output=True, text=True, timeout=600)
        if r.returncode:
            sys.exit(r.stderr[-2000:])
        theirs = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"# {os.path.basename(path)}, {len(TEXTS)} texts: cosine similarity to float64 (mean / min)")
    print("| pooling | ours | llama.cpp |")
    print("|---|---|---|")
    for p in POOLS:
        want = [pool(h, p) for h in hidden]
        ours = [float(np.dot(v, w)) for v, w in zip(m.embed(TEXTS, pooling=p), want)]
        row = f"| {p} | {np.mean(ours):.5f} / {np.min(ours):.5f} |"
        if theirs:
            cs = [float(np.dot(np.asarray(v) / np.linalg.norm(v), w)) for v, w in zip(theirs[p], want)]
            row += f" {np.mean(cs):.5f} / {np.min(cs):.5f} |"
        else:
            row += " - |"
        print(row)


if __name__ == "__main__":
    main()
