"""Cancelling a request before its generation starts (a CancelHandle cancelled early, while
the request waits in line or for a cold start's leader: the server's client gone meanwhile),
closing an LLM while requests run or wait, and the interpreter exiting while a daemon
thread generates."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from guanaco_rt.api import LLM, CancelHandle
from guanaco_rt.errors import Cancelled, ModelClosedError

NO_END = {"0": -100, "1": -100, "2": -100}      # the tiny model's BOS/EOS: generations run to their limit
PROMPT = list(range(10, 40))


def _in_thread(fn):
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:      # noqa: BLE001 -- handed to the test
            box["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


@pytest.mark.parametrize("stream", [False, True])
def test_a_handle_cancelled_before_the_call_ends_it_as_cancelled_without_generating(tiny_typed, stream):
    with LLM(tiny_typed("q4_0"), n_ctx=256) as llm:
        for call in (lambda **kw: llm.create_completion(PROMPT, **kw),
                     lambda **kw: llm.create_chat_completion([{"role": "user", "content": "hi"}], **kw)):
            h = CancelHandle()
            h.cancel()
            r = call(max_tokens=50, logit_bias=NO_END, cancel=h, stream=stream,
                     **({"stream_options": {"include_usage": True}} if stream else {}))
            if stream:
                chunks = list(r)
                assert r.finish_reason == "cancelled" and chunks[-1]["usage"]["completion_tokens"] == 0
            else:
                assert r["choices"][0]["finish_reason"] == "cancelled" and r["usage"]["completion_tokens"] == 0
        # the session is usable afterwards: the hold on its calls ended with the request
        r = llm.create_completion(PROMPT, max_tokens=8, logit_bias=NO_END)
        assert r["usage"]["completion_tokens"] == 8 and r["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_cancelled_while_it_waits_in_line_ends_at_once(tiny_typed, stream):
    with LLM(tiny_typed("q4_0"), n_ctx=256, n_sessions=1) as llm:
        held = llm.pool.acquire()           # the only session: the request waits in line
        h = CancelHandle()

        def ask():
            r = llm.create_completion(PROMPT, max_tokens=20, logit_bias=NO_END, cancel=h, stream=stream)
            return (list(r), r.finish_reason) if stream else r
        t, box = _in_thread(ask)
        time.sleep(0.2)
        assert t.is_alive() and llm.pool.waiting == 1
        t0 = time.monotonic()
        h.cancel()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - t0 < 1.0
        got = box["value"]
        reason = got[1] if stream else got["choices"][0]["finish_reason"]
        assert reason == "cancelled" and llm.pool.waiting == 0
        llm.pool.release(held)


def test_pool_acquire_raises_cancelled_for_a_handle_cancelled_while_it_waits_for_a_cold_leader(tiny_typed):
    m = tiny_typed("q4_0")
    with LLM(m, n_ctx=256, n_sessions=2) as llm:
        pool = llm.pool
        a = pool.acquire(PROMPT)          # a leader that holds the shared part but runs nothing yet
        a._busy.acquire()                 # as if it were generating: not an idle one
        try:
            h = CancelHandle()
            threading.Timer(0.3, h.cancel).start()
            t0 = time.monotonic()
            with pytest.raises(Cancelled):
                pool.acquire(PROMPT[:25] + [5, 6, 7], cancel=h)
            assert 0.25 < time.monotonic() - t0 < 1.5 and pool.cold_waits == 1
            assert pool.busy == 1           # the session it had been handed went back
        finally:
            a._busy.release()
            pool.release(a)


def test_closing_an_llm_stops_its_running_requests_and_fails_the_waiting_ones(tiny_typed):
    llm = LLM(tiny_typed("q4_0"), n_ctx=4096, n_sessions=1)
    # a generation of up to 4000 tokens, and a second request waiting in line behind it
    first, fbox = _in_thread(lambda: llm.create_completion(PROMPT, max_tokens=4000, logit_bias=NO_END))
    time.sleep(0.3)
    second, sbox = _in_thread(lambda: llm.create_completion(PROMPT, max_tokens=5))
    time.sleep(0.2)
    assert first.is_alive() and second.is_alive()
    t0 = time.monotonic()
    llm.close()
    first.join(5)
    second.join(5)
    assert time.monotonic() - t0 < 2.0
    assert isinstance(sbox.get("error"), ModelClosedError)
    if "value" in fbox:             # it ended as cancelled, short of its 4000 tokens
        r = fbox["value"]
        assert r["choices"][0]["finish_reason"] == "cancelled" and r["usage"]["completion_tokens"] < 4000
    else:                           # or it found the LLM closed as it ended
        assert isinstance(fbox["error"], ModelClosedError)
    with pytest.raises(ModelClosedError):
        llm.create_completion(PROMPT, max_tokens=2)


def test_the_interpreter_exits_cleanly_while_a_daemon_thread_generates(tiny_typed):
    # the thread is in the decode loop's C code (the GIL released) when the main thread ends:
    # without the exit hook the interpreter aborted as it finalized ("Fatal Python error:
    # PyEval_SaveThread"), in most runs. An exit handler of the app's that runs after the hook
    # (registered before the import) may still close the LLM
    path = tiny_typed("q4_0").path
    script = textwrap.dedent(f"""
        import atexit, threading, time
        atexit.register(lambda: (llm.close(), print("closed at exit", flush=True)))
        from guanaco_rt.api import LLM
        llm = LLM({str(path)!r}, n_ctx=8192, n_threads=1)
        started = threading.Event()
        def run():
            started.set()
            try:
                llm.create_completion(list(range(10, 40)), max_tokens=None, logit_bias={NO_END!r})
            except Exception as e:
                print("thread:", type(e).__name__)
        threading.Thread(target=run, daemon=True).start()
        started.wait()
        time.sleep(0.3)
        print("exiting", flush=True)
    """)
    for _ in range(3):
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                           cwd=os.path.dirname(__file__))      # the installed package, not the source tree's
        assert p.returncode == 0 and "Fatal Python error" not in p.stderr, p.stderr[-2000:]
        assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr[-2000:]
        assert "exiting" in p.stdout and "closed at exit" in p.stdout and time.monotonic() - t0 < 30


def test_a_session_closes_after_its_model_and_a_pool_gives_one_back_quietly(tiny_typed, tmp_path):
    # LLM.close() closes the pool, then the Model it opened; a running call's session comes back
    # after that and is closed: that raised ModelClosedError from a call that had ended as cancelled
    import guanaco_rt
    from guanaco_rt.api import SessionPool
    path = tiny_typed("q4_0").path
    m = guanaco_rt.Model(path)
    s = guanaco_rt.Session(m, n_ctx=64)
    s.eval([1, 5, 6])
    m.close()
    s.close()
    with pytest.raises(ModelClosedError):
        s.eval([7])
    m = guanaco_rt.Model(path)
    pool = SessionPool(m, 2, n_ctx=64)
    held = pool.acquire(PROMPT)
    pool.close()
    m.close()
    pool.release(held)
    with pytest.raises(ModelClosedError):
        held.eval([7])


def test_the_file_check_does_not_blame_the_file_for_a_close_in_another_thread(tiny_typed, monkeypatch):
    # Model.close() between check_file's look at the handle and its fstat: EBADF read as "the file
    # changed under the model" (ModelFileChangedError) from a call that ended as cancelled
    import guanaco_rt
    import guanaco_rt.model as model_mod
    m = guanaco_rt.Model(tiny_typed("q4_0").path)
    real = os.fstat

    def closing_fstat(fd):
        m.close()
        return real(fd)
    monkeypatch.setattr(model_mod.os, "fstat", closing_fstat)
    m.check_file()                  # closed meanwhile: nothing to check
    monkeypatch.setattr(model_mod.os, "fstat", real)


@pytest.mark.parametrize("stream", [False, True])
def test_closing_an_llm_that_opened_its_model_ends_running_calls_as_cancelled(tiny_typed, stream):
    for delay in (0.05, 0.15, 0.3):
        llm = LLM(str(tiny_typed("q4_0").path), n_ctx=4096, n_sessions=2)

        def call():
            if not stream:
                return llm.create_completion(PROMPT, max_tokens=4000, logit_bias=NO_END)["choices"][0]["finish_reason"]
            last = None
            for chunk in llm.create_completion(PROMPT, max_tokens=4000, logit_bias=NO_END, stream=True):
                last = chunk["choices"][0]["finish_reason"] or last
            return last
        runs = [_in_thread(call) for _ in range(2)]
        time.sleep(delay)
        llm.close()
        for t, box in runs:
            t.join(5)
            assert not t.is_alive()
            assert box.get("value") == "cancelled", box.get("error")
