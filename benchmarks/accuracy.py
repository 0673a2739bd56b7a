"""Logit agreement per file type on tiny random models (the figures the closing note of
the core-runtime issue asks for): largest |difference| / max |reference logit| against
the float64 NumPy forward on gguf-dequantized weights, against the same forward with
activations through the engine's 8-bit formats, and against ctransformers.

    python benchmarks/accuracy.py [--seeds 1 2]

With ``--real FILE.gguf ...``: real GGUF files instead (e.g. one model requantized by llama.cpp
into several types): per file, the mean KL divergence, over every position of 12 chat prompts,
from the float64 NumPy forward on that file's dequantized weights to our logits and to llama.cpp's
(through the llama-cpp-python in ``--peer-python``), and the greedy answer to the France question.

    python benchmarks/accuracy.py --real smol.IQ4_NL.gguf smol.BF16.gguf --peer-python /work/peer-llama/bin/python
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import guanaco_rt  # noqa: E402
from guanaco_rt.ggml_types import GUANACO_FTYPES  # noqa: E402

from helpers import tiny_model  # noqa: E402
from peers import ctransformers_logits  # noqa: E402
from reference import ReferenceModel  # noqa: E402

TOKENS = [1, 5, 60, 7, 250, 9, 10, 11, 42, 99, 3, 17]
SHAPES = [dict(n_embd=256, n_head=4, n_layer=2), dict(n_embd=512, n_head=8, n_layer=1),
          dict(n_embd=256, n_head=2, n_layer=3)]


PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Explain photosynthesis briefly.",
           "List three prime numbers.", "Who wrote Romeo and Juliet?", "Translate 'good morning' into Spanish.",
           "What is 12 times 7?", "Give me a tip for learning to code.", "Why is the sky blue?",
           "Name a planet with rings.", "Describe a cat in one sentence.", "What does a CPU do?"]

# run by the peer's Python: llama.cpp's logits of every position of each prompt (token ids in, npz out)
PEER_LOGITS = r"""
import json, sys
import numpy as np
import llama_cpp
path, prompts, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_batch=512, logits_all=True, n_threads=2, verbose=False)
res = {}
for i, ids in enumerate(prompts):
    llm.reset()
    llm.eval(ids)
    res[str(i)] = np.array(llm.scores[:len(ids)], np.float32)
np.savez(out, **res)
"""


def _kl(ref, x):
    """mean over rows of KL(softmax(ref) || softmax(x)), in float64"""
    ref, x = np.asarray(ref, np.float64), np.asarray(x, np.float64)
    lp = ref - ref.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    lq = x - x.max(1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(1, keepdims=True))
    return float((np.exp(lp) * (lp - lq)).sum(1).mean())


def real_files(paths, peer_python):
    from guanaco_rt.ggml_types import type_name
    print("| file | tensor types | KL ours | KL llama.cpp | ours / llama.cpp | greedy answer |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        m = guanaco_rt.Model(path)
        counts = {}
        for t in m.tensors.values():
            counts[type_name(t.type)] = counts.get(type_name(t.type), 0) + 1
        prompts = [guanaco_rt.Session(m, n_ctx=512).chat_prompt(q) for q in PROMPTS]
        ref = ReferenceModel(m)
        kl_ours, kl_peer = [], []
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "peer.npz")
            subprocess.run([peer_python, "-c", PEER_LOGITS, path, json.dumps(prompts), out], check=True,
                           capture_output=True)
            peer = np.load(out)
            for i, ids in enumerate(prompts):
                r = ref.forward(ids)
                ours = guanaco_rt.Session(m, n_ctx=512).eval(ids, all_logits=True)
                kl_ours.append(_kl(r, ours) * len(ids))
                kl_peer.append(_kl(r, peer[str(i)]) * len(ids))
        n = sum(len(ids) for ids in prompts)
        ko, kp = sum(kl_ours) / n, sum(kl_peer) / n
        answer = guanaco_rt.Session(m, n_ctx=256).chat(PROMPTS[0], max_new_tokens=24, temperature=0)
        types = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
        print(f"| {os.path.basename(path)} | {types} | {ko:.2e} | {kp:.2e} | {ko / kp:.2f} | {answer!r} |", flush=True)
        del ref


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--real", nargs="+", metavar="FILE", help="real GGUF files: KL from float64, ours and llama.cpp's")
    p.add_argument("--peer-python", default="/work/peer-llama/bin/python",
                   help="a Python with llama-cpp-python (for --real)")
    a = p.parse_args()
    if a.real:
        print(f"{len(PROMPTS)} chat prompts, every position; ISA {guanaco_rt.show_config()['isa']}\n")
        real_files(a.real, a.peer_python)
        return
    root = tempfile.mkdtemp()
    print(f"{len(SHAPES) * len(a.seeds)} models per type ({', '.join(f'{s}' for s in SHAPES)}), "
          f"{len(TOKENS)} positions each; worst case over models and positions\n")
    print("| type | vs float ref | min cosine | vs exact 8-bit ref (median / max) | vs ctransformers | "
          "ctransformers vs float ref |")
    print("|---|---|---|---|---|---|")
    for ft in GUANACO_FTYPES:
        worst = dict(ref=0.0, cos=1.0, qmed=0.0, qmax=0.0, peer=0.0, peer_ref=0.0)
        for shape in SHAPES:
            for seed in a.seeds:
                path = tiny_model(root, ft, seed=seed, **shape)
                m = guanaco_rt.Model(path)
                ours = guanaco_rt.Session(m, n_ctx=32).eval(TOKENS, all_logits=True)
                ref = ReferenceModel(m).forward(TOKENS)
                qref = ReferenceModel(m, quantize_acts=True).forward(TOKENS)
                peer = ctransformers_logits(path, TOKENS)
                sc = np.abs(ref).max()
                cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
                qe = np.abs(ours - qref).max(1) / sc
                worst["ref"] = max(worst["ref"], np.abs(ours - ref).max() / sc)
                worst["cos"] = min(worst["cos"], cos.min())
                worst["qmed"] = max(worst["qmed"], float(np.median(qe)))
                worst["qmax"] = max(worst["qmax"], qe.max())
                worst["peer"] = max(worst["peer"], np.abs(ours - peer).max() / sc)
                worst["peer_ref"] = max(worst["peer_ref"], np.abs(peer - ref).max() / sc)
        print(f"| {ft} | {worst['ref']:.2%} | {worst['cos']:.5f} | {worst['qmed']:.1e} / {worst['qmax']:.1e} | "
              f"{worst['peer']:.2%} | {worst['peer_ref']:.2%} |")


if __name__ == "__main__":
    main()
