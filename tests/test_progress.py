"""Feedback on long work: the library's progress hooks (it never prints), and the CLI's
bars and notes (tqdm on a terminal; GUANACO_RT_PROGRESS=1/0 stands in for one here)."""
import io
import os
import subprocess
import sys

import numpy as np

import guanaco_rt
from guanaco_rt import cli
from guanaco_rt.writer import write_random_model

from helpers import tiny_model

HERE = os.path.dirname(os.path.abspath(__file__))


def run_cli(*args, env=None, stdin=None):
    return subprocess.run([sys.executable, "-m", "guanaco_rt", *args], capture_output=True, text=True, cwd=HERE,
                          input=stdin, env={**os.environ, **(env or {})}, timeout=300)


def test_prompt_progress_reports_every_batch_and_changes_nothing(tmp_path, capsys):
    m = guanaco_rt.Model(tiny_model(tmp_path, "q4_K_M"), n_threads=1)
    ids = [1] + list(range(3, 40))
    plain = guanaco_rt.Session(m, n_ctx=64, n_batch=8).generate(ids, max_new_tokens=4, temperature=0, n_probs=2)
    s = guanaco_rt.Session(m, n_ctx=64, n_batch=8)
    calls = []
    s.prompt_progress = lambda done, total: calls.append((done, total))
    r = s.generate(ids, max_new_tokens=4, temperature=0, n_probs=2)
    assert calls == [(0, 38)] + [(min(i, 38), 38) for i in range(8, 46, 8)]
    assert r.tokens == plain.tokens and r.token_logprobs == plain.token_logprobs
    assert capsys.readouterr() == ("", "")             # the library printed nothing


def test_writer_progress_ends_at_the_total(tmp_path):
    seen = []
    write_random_model(tmp_path / "m.bin", "q4_K_M", n_vocab=300, n_layer=2, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] == sum(np.diff([0] + [d for d, _ in seen]))
    assert all(a[0] < b[0] for a, b in zip(seen, seen[1:]))


def test_cli_bars_only_when_asked_for(tmp_path):
    out = tmp_path / "r.bin"
    on = run_cli("random-model", str(out), "--n-vocab", "300", env={"GUANACO_RT_PROGRESS": "1"})
    assert on.returncode == 0 and "writing r.bin" in on.stderr
    off = run_cli("random-model", str(out), "--n-vocab", "300", env={"GUANACO_RT_PROGRESS": "0"})
    assert off.returncode == 0 and off.stderr == ""
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 40)
    ppl = run_cli("perplexity", str(out), str(text), "-c", "64", env={"GUANACO_RT_PROGRESS": "1"})
    assert ppl.returncode == 0 and "perplexity, chunks of 64" in ppl.stderr and "PPL = " in ppl.stdout


def test_prompt_note_after_a_second(tmp_path, monkeypatch):
    # the CLI's hook says it is evaluating the prompt once that looks like taking > note_after_s
    m = guanaco_rt.Model(tiny_model(tmp_path, "q4_0"), n_threads=1)
    s = guanaco_rt.Session(m, n_ctx=128, n_batch=8)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("GUANACO_RT_PROGRESS", "0")
    s.prompt_progress = cli._prompt_feedback(note_after_s=0.0)
    s.generate([1] + list(range(3, 60)), max_new_tokens=1)
    assert err.getvalue() == "guanaco-rt: evaluating the prompt (58 tokens) ...\n"
    s.prompt_progress = cli._prompt_feedback(note_after_s=3600.0)
    s.generate([1] + list(range(60, 3, -1)), max_new_tokens=1)
    assert err.getvalue().count("evaluating") == 1


def test_chat_stats(tmp_path):
    path = tiny_model(tmp_path, "q4_0")
    r = run_cli("chat", path, "--stats", "-n", "4", "-c", "512", stdin="hello\n/quit\n")
    assert r.returncode == 0 and "tok/s; prompt" in r.stderr
