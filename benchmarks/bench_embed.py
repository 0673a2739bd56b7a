"""Embedding throughput: Model.embed over a set of texts against llama.cpp's llama-embedding
on the same file and texts, side by side in one run (alternating, best of --repeat).

    python benchmarks/bench_embed.py --llama-embedding PATH [--model FILE] [--texts 64] [--threads 2]

Ours: the texts' tokens per second of Model.embed(texts, pooling="mean") (tokenizing
included). llama-embedding: the texts' tokens over its wall time less that of a run with one
text (its model load and set-up).
"""
import argparse
import os
import subprocess
import tempfile
import time

from machine import cpu_flags  # benchmarks/machine.py

import guanaco_rt

BASE = ["The cat sat on the mat.", "Quarterly revenue rose by five percent in the third quarter.",
        "Paris is the capital of France, and its largest city.", "How do I reset my password?",
        "The mitochondria is the powerhouse of the cell.", "Shipping takes three to five business days.",
        "Guanaco is a camelid native to South America, related to the llama.",
        "She tuned the violin before the concert began."]


def ours(model, texts):
    t0 = time.perf_counter()
    model.embed(texts, pooling="mean")
    dt = time.perf_counter() - t0
    n = sum(len(model.tokenize(t)) for t in texts)
    return n / dt


def run_binary(binary, path, texts, threads, extra=()):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(texts))
    try:
        t0 = time.perf_counter()
        r = subprocess.run([binary, "-m", path, "-f", f.name, "--pooling", "mean", "-t", str(threads), "-tb",
                            str(threads), "--embd-output-format", "json", *extra],
                           capture_output=True, text=True, timeout=600)
        dt = time.perf_counter() - t0
    finally:
        os.unlink(f.name)
    if r.returncode:
        raise RuntimeError("llama-embedding failed:\n" + r.stderr[-2000:])
    return dt


def theirs(binary, path, texts, n_tokens, threads, extra):
    # llama-embedding prints no timings of its own: the run's wall time less that of a run
    # with one short text (the load and set-up), per token of the texts
    return n_tokens / (run_binary(binary, path, texts, threads, extra) - run_binary(binary, path, texts[:1], threads,
                                                                                     extra))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-embedding", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--texts", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--llama-args", default="", help="more llama-embedding options, e.g. '-b 512 -ub 512'")
    a = p.parse_args()
    path = a.model or guanaco_rt.demo_model_path()
    texts = [BASE[i % len(BASE)] + f" ({i})" for i in range(a.texts)]
    model = guanaco_rt.Model(path, n_threads=a.threads)
    model.embed(texts[:2], pooling="mean")                  # warm-up
    o, t = [], []
    for _ in range(a.repeat):
        o.append(ours(model, texts))
        t.append(theirs(a.llama_embedding, path, texts, sum(len(model.tokenize(x)) for x in texts), a.threads,
                        a.llama_args.split()))
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    print(f"{os.path.basename(path)}, {a.texts} texts, mean pooling, {a.threads} threads, best of {a.repeat}")
    print(f"ours {max(o):.0f} tok/s, llama-embedding {max(t):.0f} tok/s: {max(o) / max(t):.2f}x")


if __name__ == "__main__":
    main()
