"""Regression tests for what an outside attack broke (issue: hardening). Each test names
the item it covers; each failed before its fix."""
import asyncio
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import guanaco_rt
from guanaco_rt.errors import ContextFullError, GuanacoError, ModelClosedError, ModelFileChangedError, StateError
from guanaco_rt.sampling import Sampler, SamplingParams

from helpers import sample, tiny_model

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("hard")


@pytest.fixture(scope="module")
def path(root):
    return tiny_model(root, "q4_0", n_vocab=600)


@pytest.fixture(scope="module")
def model(path):
    return guanaco_rt.Model(path, n_threads=2)


def run_py(code, timeout=60, **kw):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=HERE,
                          **kw)


# ---- 1. stale cancel ---------------------------------------------------------------------
def test_1_cancel_racing_the_end_of_a_call_never_cancels_the_next_one(model):
    # before the fix: 359 of 3000 follow-up calls were cancelled (12%)
    s = guanaco_rt.Session(model, n_ctx=128, n_threads=1)
    stale = 0
    for i in range(500):
        if i % 30 == 0:
            s.reset()
        stop = threading.Event()

        def spam():
            while not stop.is_set():
                s.cancel()

        th = threading.Thread(target=spam)
        th.start()
        try:
            s.eval([1, 5])
        except guanaco_rt.Cancelled:
            pass
        stop.set()
        th.join()
        try:
            s.eval([7])                   # unrelated: nobody cancels this one
        except guanaco_rt.Cancelled:
            stale += 1
    assert stale == 0


# ---- 2. os.fork --------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_2_a_forked_child_works(path):
    code = f"""
import os, sys, guanaco_rt
m = guanaco_rt.Model({path!r}, n_threads=2)
s = guanaco_rt.Session(m, n_ctx=64, n_threads=2)
parent = s.eval([1, 5, 6, 7] * 10)          # starts libgomp's thread pool in the parent
pid = os.fork()
if pid == 0:
    child = s.eval([8, 9])                   # would hang in libgomp
    c2 = guanaco_rt.Session(m, n_ctx=64, n_threads=2).eval([1, 5])
    os._exit(0 if child.shape == (600,) and s.n_threads == 1 and c2.shape == (600,) else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    r = run_py(code, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"


# ---- 3. n_threads ------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1, 2000, 100000])
def test_3_thread_counts_are_bounded(model, path, bad):
    with pytest.raises(ValueError, match="n_threads"):
        guanaco_rt.Session(model, n_threads=bad)
    with pytest.raises(ValueError, match="n_threads"):
        guanaco_rt.Model(path, n_threads=bad)


def test_3_thread_count_from_the_environment(path):
    r = run_py(f"import guanaco_rt; print(guanaco_rt.Model({path!r}).n_threads)",
               env={**os.environ, "GUANACO_RT_THREADS": "3"})
    assert r.stdout.strip() == "3"
    r = run_py(f"import guanaco_rt; guanaco_rt.Model({path!r})", env={**os.environ, "GUANACO_RT_THREADS": "lots"})
    assert "GUANACO_RT_THREADS" in r.stderr and r.returncode != 0


# ---- 4. wrong types ----------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["123", b"Hi", np.array([1.0, 5.0]), [True, 5], [[1, 5]], 5, None,
                                 np.array([[1, 5]])])
def test_4_eval_refuses_what_is_not_token_ids(model, bad):
    s = guanaco_rt.Session(model, n_ctx=64)
    with pytest.raises(TypeError):
        s.eval(bad)
    assert s.n_past == 0


@pytest.mark.parametrize("bad", [b"Hi", bytearray(b"Hi"), [1.5], None, 3])
def test_4_generate_refuses_bytes_and_non_ids(model, bad):
    with pytest.raises(TypeError):
        guanaco_rt.Session(model, n_ctx=64).generate(bad, max_new_tokens=2)


def test_4_text_arguments_must_be_str(model):
    with pytest.raises(TypeError):
        model.tokenize(None)
    with pytest.raises(TypeError):
        guanaco_rt.Session(model, n_ctx=64).chat(b"hi")
    assert guanaco_rt.Session(model, n_ctx=64).eval(np.array([1, 5], np.int64)).shape == (600,)
    assert guanaco_rt.Session(model, n_ctx=64).eval((1, np.int32(5))).shape == (600,)


# ---- 5. the file under the mmap -----------------------------------------------------------
def test_5_a_truncated_file_is_an_error_not_sigbus(path, tmp_path):
    p = tmp_path / "m.bin"
    shutil.copy(path, p)
    code = f"""
import os, guanaco_rt
m = guanaco_rt.Model({str(p)!r})
s = guanaco_rt.Session(m, n_ctx=64)
s.eval([1, 5])
os.truncate({str(p)!r}, 4096)
try:
    s.eval([6])
except guanaco_rt.ModelFileChangedError as e:
    print("refused:", e)
"""
    r = run_py(code)
    assert r.returncode == 0 and "refused" in r.stdout and "m.bin" in r.stdout, (r.returncode, r.stderr[-500:])


def test_5_a_file_copied_over_is_an_error(root, tmp_path):
    a = tmp_path / "a.bin"
    shutil.copy(tiny_model(root, "q4_0", n_vocab=600, seed=1), a)
    m = guanaco_rt.Model(a)
    s = guanaco_rt.Session(m, n_ctx=64)
    s.eval([1, 5])
    time.sleep(0.01)
    tmp = tmp_path / "b.bin"
    shutil.copy(tiny_model(root, "q4_0", n_vocab=600, seed=2), tmp)
    shutil.copyfile(tmp, a)                # new bytes in the mapped file (an os.replace would leave it intact)
    with pytest.raises(ModelFileChangedError, match="mmap=False"):
        s.eval([6])
    with pytest.raises(ModelFileChangedError):
        guanaco_rt.Session(m, n_ctx=64)


def test_5_mmap_false_reads_into_memory(path, tmp_path):
    p = tmp_path / "m.bin"
    shutil.copy(path, p)
    ref = guanaco_rt.Session(guanaco_rt.Model(path), n_ctx=64).eval([1, 5, 6])
    m = guanaco_rt.Model(p, mmap=False)
    os.truncate(p, 0)                      # nothing refers to the file any more
    np.testing.assert_array_equal(guanaco_rt.Session(m, n_ctx=64).eval([1, 5, 6]), ref)


# ---- 6. shift policy ---------------------------------------------------------------------
def test_6_n_keep_at_least_the_prompt_does_not_duplicate_a_token(model):
    s = guanaco_rt.Session(model, n_ctx=16, context_policy="shift", n_keep=40)
    prompt = [1] + list(range(10, 24))                # 15 tokens: more than n_ctx minus the reserve
    # before the fix the fitted prompt was n_keep (all 15) + the last token again
    assert s._fit_prompt(prompt, 4) == prompt
    r = s.generate(prompt, max_new_tokens=8, temperature=0)
    assert len(r.tokens) == 8 and s.n_past <= 16
    with pytest.raises(GuanacoError, match="n_keep"):
        guanaco_rt.Session(model, n_keep=-1)


# ---- 7. sampler edges --------------------------------------------------------------------
def test_7_tiny_temperature_is_greedy():
    logits = np.random.default_rng(0).standard_normal(50).astype(np.float32) * 3
    t, _ = sample(Sampler(0), logits, [], SamplingParams(temperature=1e-320, top_k=40, repetition_penalty=1.0))
    assert t == int(np.argmax(logits))


@pytest.mark.parametrize("kw", [dict(frequency_penalty=float("nan")), dict(presence_penalty=float("nan")),
                                dict(frequency_penalty=float("-inf")), dict(repetition_penalty=float("inf")),
                                dict(temperature=float("nan")), dict(top_k=2**40)])
def test_7_non_finite_penalties_are_refused(kw):
    with pytest.raises(ValueError, match=list(kw)[0]):
        SamplingParams(**kw)


def test_7_everything_banned_stops_with_a_reason(model):
    s = guanaco_rt.Session(model, n_ctx=64)
    ban = {i: float("-inf") for i in range(600)}
    for temp in (0.0, 0.8):
        r = s.generate([1, 5], max_new_tokens=5, temperature=temp, logit_bias=ban)
        assert r.finish_reason == "no_candidates" and r.tokens == []


# ---- 8. state blobs ----------------------------------------------------------------------
def _with_meta(blob, edit):
    mlen = struct.unpack_from("<Q", blob, 40)[0]
    meta = json.loads(blob[48:48 + mlen])
    new = json.dumps(edit(meta)).encode() if callable(edit) else edit
    return blob[:40] + struct.pack("<Q", len(new)) + new + blob[48 + mlen:]


@pytest.mark.parametrize("edit", [
    lambda m: {**m, "n_past": "7"}, lambda m: {**m, "n_past": 10**30}, lambda m: {**m, "kv": None},
    lambda m: {k: v for k, v in m.items() if k != "rng"}, lambda m: {**m, "rng": {"bit_generator": "PCG64"}},
    lambda m: {**m, "turns": [[1, 2]]}, lambda m: {**m, "turns": "x"}, lambda m: {**m, "has_logits": "yes"},
    lambda m: {**m, "chat_first_turn": -3}, lambda m: [m], b"[" * 100000 + b"]" * 100000, b"\xff\xfe",
])
def test_8_malformed_state_is_a_state_error_and_changes_nothing(model, edit):
    s = guanaco_rt.Session(model, n_ctx=256, seed=1)
    s.chat("hello", max_new_tokens=3)
    blob = s.save_state()
    other = guanaco_rt.Session(model, n_ctx=256, seed=2)
    other.eval([1, 7, 8])
    before = (other.tokens, other.sampler.state, list(other.conversation.turns), other.eval([9]).copy())
    other._state.truncate(3)
    with pytest.raises(StateError):
        other.load_state(_with_meta(blob, edit))
    assert (other.tokens, other.sampler.state, list(other.conversation.turns)) == before[:3]
    np.testing.assert_array_equal(other.eval([9]), before[3])


# ---- 9. closed objects -------------------------------------------------------------------
def test_9_closed_model_and_session_are_clear_errors(path):
    m = guanaco_rt.Model(path)
    s = guanaco_rt.Session(m, n_ctx=64)
    m.close()
    with pytest.raises(ModelClosedError, match="closed"):
        guanaco_rt.Session(m)
    with pytest.raises(ModelClosedError):
        s.eval([1])
    s2 = guanaco_rt.Session(guanaco_rt.Model(path), n_ctx=256)
    s2.close()
    with pytest.raises(ModelClosedError):
        s2.chat("hi")


# ---- 10. invalid text --------------------------------------------------------------------
def test_10_lone_surrogates_are_a_value_error(model, path):
    with pytest.raises(ValueError, match="surrogate"):
        model.tokenize("ab\ud800cd")
    with pytest.raises(ValueError):
        guanaco_rt.Session(model, n_ctx=64).generate("x\udcff", max_new_tokens=1)
    r = subprocess.run([sys.executable, "-m", "guanaco_rt", "run", path, "-p", "a\udcffb", "-n", "2"],
                       capture_output=True, cwd=HERE, env={**os.environ, "PYTHONUTF8": "1"})
    assert r.returncode == 2 and b"Traceback" not in r.stderr


# ---- 11. chat is not quadratic -----------------------------------------------------------
def test_11_dropping_many_turns_tokenizes_a_few_times(model, monkeypatch):
    s = guanaco_rt.Session(model, n_ctx=256, context_policy="shift", system="")
    for i in range(2000):
        s.conversation.add(f"message {i}", f"reply {i}")
    calls = []
    real = model.tokenize
    monkeypatch.setattr(model, "tokenize", lambda text, **kw: calls.append(1) or real(text, **kw))
    s.chat("and now?", max_new_tokens=2)
    assert s._chat_first_turn > 1900
    assert len(calls) < 40       # binary search: ~log2(2000) prompts, not one per dropped turn


# ---- 12. astream abandoned ---------------------------------------------------------------
def test_12_breaking_out_of_astream_frees_the_session_at_once(model):
    s = guanaco_rt.Session(model, n_ctx=256)

    async def main():
        async for _ in s.astream([1, 5], max_new_tokens=200, temperature=0.9):
            break
        t0 = time.perf_counter()
        r = s.generate([1, 5], max_new_tokens=3, temperature=0)     # same task, right after the break
        return r, time.perf_counter() - t0

    r, dt = asyncio.run(main())
    assert len(r.tokens) == 3 and dt < 2.0


def test_12_busy_message_is_true(model):
    s = guanaco_rt.Session(model, n_ctx=64)
    it = s.stream([1, 5], max_new_tokens=50)
    next(it)
    with pytest.raises(guanaco_rt.SessionBusyError, match="another call"):
        s.eval([1])
    it.close()
    s.eval([1])


# ---- 13. context full under "error" keeps the text ----------------------------------------
def test_13_context_full_error_carries_the_partial_result(model):
    s = guanaco_rt.Session(model, n_ctx=8, context_policy="error")
    with pytest.raises(ContextFullError) as e:
        s.generate([1, 5], max_new_tokens=50, temperature=0)
    res = e.value.result
    assert res.finish_reason == "context_full" and len(res.tokens) >= 5 and s.last_result is res


# ---- 14. not a regular file --------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_14_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "model.bin"
    os.mkfifo(fifo)
    with pytest.raises(guanaco_rt.FormatError, match="regular file"):
        guanaco_rt.Model(fifo)
    r = subprocess.run([sys.executable, "-m", "guanaco_rt", "info", str(fifo)], capture_output=True, text=True,
                       timeout=30, cwd=HERE)
    assert r.returncode == 2 and "regular file" in r.stderr


# ---- 15. Ctrl-C during a generation that prints nothing ------------------------------------
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_15_sigint_stops_generation_within_a_token(path):
    # Ctrl-C as a terminal delivers it: a child started from a background job (nohup, `cmd &`
    # in a script) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    code = f"""
import signal, time, guanaco_rt
signal.signal(signal.SIGINT, signal.default_int_handler)
m = guanaco_rt.Model({path!r}, n_threads=1)
s = guanaco_rt.Session(m, n_ctx=4096, context_policy="shift")
print("ready", flush=True)
t0 = time.perf_counter()
try:
    s.generate([1, 5], max_new_tokens=100000, temperature=0.9)
except KeyboardInterrupt:
    s.eval([7])                                   # still usable
    print("interrupted after", time.perf_counter() - t0, flush=True)
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=HERE)
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        t0 = time.perf_counter()
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
    finally:
        p.kill()                  # a child that did not stop would generate on past the test
        p.communicate()
    assert "interrupted" in out
    assert time.perf_counter() - t0 < 1.0


# ---- 16/17. the command line -------------------------------------------------------------
def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "guanaco_rt", *args], capture_output=True, text=True, cwd=HERE,
                          timeout=60, **kw)


@pytest.mark.parametrize("flags", [["--logit-bias", "foo"], ["--logit-bias", "99999=1"], ["--temp", "-1"],
                                   ["--temperature", "nan"], ["-n", "-1"], ["--seed", "-1"], ["-c", "99999999999"],
                                   ["--top-k", "99999999999"], ["-t", "5000"]])
def test_17_bad_flags_are_messages_not_tracebacks(path, flags):
    r = cli("generate", path, "-p", "hi", "-n", "2", *flags)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "error" in r.stderr


def test_17_bad_isa_is_a_message(path):
    r = cli("run", path, "-p", "hi", "-n", "1", env={**os.environ, "GUANACO_RT_ISA": "avx9000"})
    assert r.returncode == 2 and "avx9000" in r.stderr and "Traceback" not in r.stderr


def test_17_random_model_refuses_shapes_its_loader_refuses(tmp_path):
    r = cli("random-model", str(tmp_path / "x.bin"), "--n-head", "3")
    assert r.returncode == 2 and not (tmp_path / "x.bin").exists()
    r = cli("random-model", str(tmp_path / "no" / "such" / "dir.bin"))
    assert r.returncode == 2 and "dir.bin" in r.stderr and ".tmp" not in r.stderr


def test_16_chat_keeps_the_conversation_on_every_error(path, tmp_path):
    too_long = "x " * 3000            # longer than the context
    script = "\n".join(["hello", "/help", "/save", "/sav x", f"/save {tmp_path}/no/such/file", too_long,
                        "/save " + str(tmp_path / "ok.state"), "/quit"]) + "\n"
    r = cli("chat", path, "-c", "512", "-n", "4", "--temp", "0", input=script)
    assert r.returncode == 0, r.stderr
    assert "/reset" in r.stderr                              # /help printed the commands
    assert "needs a file name" in r.stderr and "unknown command" in r.stderr
    assert "/save failed" in r.stderr and "error:" in r.stderr
    assert (tmp_path / "ok.state").exists()
    s = guanaco_rt.Session(guanaco_rt.Model(path), n_ctx=512)
    s.load_state((tmp_path / "ok.state").read_bytes())
    assert [h for h, _ in s.conversation.turns] == ["hello"]


# ---- 18. the library does not print --------------------------------------------------------
def test_18_library_logging_has_a_null_handler(path):
    code = f"""
import logging, guanaco_rt
m = guanaco_rt.Model({path!r})
s = guanaco_rt.Session(m, n_ctx=8, context_policy="shift")
s.generate([1] + list(range(10, 30)), max_new_tokens=1)     # logs a warning (prompt truncated)
"""
    r = run_py(code)
    assert r.returncode == 0 and r.stderr == ""


# ---- 20. private twins check their arguments ----------------------------------------------
def test_20_twins_refuse_bad_shapes_instead_of_crashing():
    from guanaco_rt._kernels import _twins as E
    from guanaco_rt._kernels.dispatch import kernel_set
    x = np.zeros((1, 64), np.float32)
    with pytest.raises(ValueError):
        E.rope_twin(x, 0, 2, 0)
    with pytest.raises(ValueError):
        E.attention_twin(kernel_set("generic"), x, np.zeros((4, 64), np.float32), np.zeros((4, 64), np.float32), 0, 0)
    with pytest.raises(ValueError):
        E.matmul_twin(kernel_set("generic"), 2, np.zeros(10, np.uint8), 64, 4, x)
