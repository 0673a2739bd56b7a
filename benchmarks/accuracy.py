"""Logit agreement per file type on tiny random models (the figures the closing note of
the core-runtime issue asks for): largest |difference| / max |reference logit| against
the float64 NumPy forward on gguf-dequantized weights, against the same forward with
activations through the engine's 8-bit formats, and against ctransformers.

    python benchmarks/accuracy.py [--seeds 1 2]
"""
import argparse
import os
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    a = p.parse_args()
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
