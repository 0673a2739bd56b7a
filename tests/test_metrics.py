"""Perplexity by llama.cpp's method: chunking, BOS, second-half scoring, the error term."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import guanaco_rt

from helpers import tiny_model

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return guanaco_rt.Model(tiny_model(tmp_path_factory.mktemp("ppl"), "q4_K_M", n_vocab=600))


TEXT = "the quick brown fox jumps over the lazy dog and runs away " * 12


def direct(model, text, n_ctx):
    ids = model.tokenize(text)
    v = []
    for c in range(len(ids) // n_ctx):
        chunk = ids[c * n_ctx:(c + 1) * n_ctx]
        chunk[0] = 1                                          # BOS first in every chunk
        logits = guanaco_rt.Session(model, n_ctx=n_ctx).eval(chunk, all_logits=True).astype(np.float64)
        for j in range(n_ctx // 2, n_ctx - 1):
            x = logits[j]
            v.append(np.log(np.exp(x - x.max()).sum()) + x.max() - x[chunk[j + 1]])
    v = np.array(v)
    return math.exp(v.mean()), math.exp(v.mean()) * math.sqrt(v.var() / (len(v) - 1)), len(v)


def test_matches_a_direct_computation(model):
    seen = []
    r = guanaco_rt.perplexity(model, TEXT, n_ctx=64, progress=lambda d, t, p: seen.append((d, t)))
    ppl, err, n = direct(model, TEXT, 64)
    assert r.n_scored == n == r.n_chunks * 31 and r.n_chunks == len(model.tokenize(TEXT)) // 64
    assert r.ppl == pytest.approx(ppl, rel=1e-9) and r.error == pytest.approx(err, rel=1e-6)
    assert seen == [(i + 1, r.n_chunks) for i in range(r.n_chunks)]
    assert str(r).startswith("PPL = ")


def test_too_short_a_text_is_an_error(model):
    with pytest.raises(guanaco_rt.GuanacoError, match="fewer than one chunk"):
        guanaco_rt.perplexity(model, "hi", n_ctx=64)


def test_cli_prints_the_llama_cpp_line(model, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(TEXT)
    r = subprocess.run([sys.executable, "-m", "guanaco_rt", "perplexity", model.path, str(f), "-c", "64"],
                       capture_output=True, text=True, cwd=HERE, timeout=120)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("PPL = ") and " +/- " in last
    assert float(last.split()[2]) == pytest.approx(guanaco_rt.perplexity(model, TEXT, n_ctx=64).ppl, rel=1e-4)
