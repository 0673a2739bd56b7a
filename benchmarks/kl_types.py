"""Distance from the float forward per weight type, ours against llama.cpp's (issue 23's type target:
mean KL from float64 no more than 1.25x llama.cpp's, over at least 12 prompts).

    python benchmarks/kl_types.py --peer-python /work/peer-llama/bin/python [--types IQ2_XXS TQ2_0 ...]

For each type: a tiny random-weight LLaMA GGUF file (tests/helpers.write_llama_gguf, every matrix and
the tied embeddings in the type), 12 random prompts of 16 tokens; the float64 NumPy forward on the
gguf-dequantized weights (tests/reference.py) is the reference, and each runtime's logits at every
position are scored by KL(softmax(reference) || softmax(runtime)), averaged. llama.cpp runs in
--peer-python (llama-cpp-python), one process per file, one thread.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import guanaco_rt  # noqa: E402
from guanaco_rt import ggml_types as T  # noqa: E402

from helpers import write_llama_gguf  # noqa: E402
from reference import ReferenceModel  # noqa: E402

TYPES = ["Q4_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0"]

PEER = r'''
import json, sys
import numpy as np
import llama_cpp
path, prompts, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
llm = llama_cpp.Llama(path, n_ctx=64, n_threads=1, logits_all=True, verbose=False)
res = []
for p in prompts:
    llm.reset()
    llm.eval(p)
    res.append(np.array(llm.scores[:len(p)], np.float64))
np.save(out, np.stack(res))
'''


@contextlib.contextmanager
def with_context_length(n):
    """llama.cpp needs llama.context_length, which the tests' writer leaves out (we do not read it)"""
    import gguf
    orig = gguf.GGUFWriter.add_block_count

    def add_block_count(self, length):
        orig(self, length)
        self.add_context_length(n)
    gguf.GGUFWriter.add_block_count = add_block_count
    try:
        yield
    finally:
        gguf.GGUFWriter.add_block_count = orig


def kl(ref, x):
    """mean over rows of KL(softmax(ref) || softmax(x)), float64"""
    lp = ref - ref.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = x - x.max(-1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--types", nargs="+", default=TYPES)
    p.add_argument("--peer-python", default=None, help="a Python with llama-cpp-python (omit: ours only)")
    p.add_argument("--prompts", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    prompts = [[1] + [int(t) for t in rng.integers(3, 300, 15)] for _ in range(a.prompts)]
    root = tempfile.mkdtemp()
    print(f"CPU features: {' '.join(sorted(guanaco_rt.show_config().get('cpu_features', [])))}")
    print(f"{a.prompts} prompts x 16 tokens, tiny random LLaMA GGUF files (n_embd 256, 2 layers); "
          f"mean KL(float64 || runtime) over all positions\n")
    print("| type | ours | llama.cpp | ratio |")
    print("|---|---|---|---|")
    for name in a.types:
        t = T.TYPE_BY_NAME[name]
        path = os.path.join(root, f"kl-{name}.gguf")
        with with_context_length(64):
            write_llama_gguf(path, n_embd=256, n_head=4, n_head_kv=2, n_layer=2, n_ff=512, wtype=t.id, emb_type=t.id,
                             tied=True, rope_base=10000.0, seed=1)
        m = guanaco_rt.Model(path)
        ref = ReferenceModel(m)
        refs = [ref.forward(pr) for pr in prompts]
        ours = []
        for pr in prompts:
            with guanaco_rt.Session(m, n_ctx=64, n_threads=1) as s:
                ours.append(s.eval(pr, all_logits=True).astype(np.float64))
        k_ours = float(np.mean([kl(r, o) for r, o in zip(refs, ours)]))
        cell_peer, ratio = "-", "-"
        if a.peer_python:
            out = os.path.join(root, f"peer-{name}.npy")
            r = subprocess.run([a.peer_python, "-c", PEER, path, json.dumps(prompts), out], capture_output=True,
                               text=True)
            if r.returncode == 0:
                peer = np.load(out)
                k_peer = float(np.mean([kl(rf, pe) for rf, pe in zip(refs, peer)]))
                cell_peer, ratio = f"{k_peer:.3g}", f"{k_ours / k_peer:.2f}x"
            else:
                cell_peer = "error: " + (r.stderr.strip().splitlines() or ["?"])[-1][:80]
        print(f"| {name} | {k_ours:.3g} | {cell_peer} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
