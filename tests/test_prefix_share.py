"""One session's cached prompt prefix copied into another (Session.copy_prefix, and
SessionPool for LLM and the server): the receiver then gives the bits of a whole
evaluation, the source may be running meanwhile (rows it rewrites are never read half
written), and sources of another model, KV type or LoRA adapters are skipped."""
import threading
import time

import numpy as np
import pytest
from test_batching import together
from test_gguf_families import write_family_gguf

import guanaco_rt
from guanaco_rt import ggml_types as T
from guanaco_rt.api import LLM

RNG = np.random.default_rng(7)
P1 = RNG.integers(3, 300, 40).tolist()
P2 = P1[:25] + RNG.integers(3, 300, 9).tolist()       # shares 25 positions with P1


def whole(m, ids, **kw):
    with guanaco_rt.Session(m, n_ctx=128, **kw) as s:
        return s.eval(ids, all_logits=True)


@pytest.mark.parametrize("wtype", ["q4_0", "q4_K", "f16"])
@pytest.mark.parametrize("kv_f16", [False, True])
def test_a_copied_prefix_gives_the_bits_of_a_whole_evaluation(tiny_typed, wtype, kv_f16):
    m = tiny_typed(wtype)
    ref = whole(m, P2, kv_f16=kv_f16)
    with guanaco_rt.Session(m, n_ctx=128, kv_f16=kv_f16) as a, \
            guanaco_rt.Session(m, n_ctx=64, kv_f16=kv_f16) as b:     # another n_ctx: other row offsets
        a.eval(P1)
        b.eval(P2[:5] + [7, 8, 9])              # holds 5 of P2 itself, then differs
        assert b.copy_prefix(P2, [a]) == 25
        assert b.tokens == P2[:25] and b.n_past == 25
        got = b.eval(P2[25:], all_logits=True)
        np.testing.assert_array_equal(got, ref[25:])
        # generate() on the prompt evaluates only what was not copied
        b.reset()
        assert b.copy_prefix(P2, [a]) == 25
        r = b.generate(P2, max_new_tokens=4, temperature=0)
        assert r.timings.reused_tokens == 25 and r.timings.shared_tokens == 25
        assert r.timings.prompt_tokens == len(P2) - 25
        with guanaco_rt.Session(m, n_ctx=128, kv_f16=kv_f16) as c:
            assert c.generate(P2, max_new_tokens=4, temperature=0).tokens == r.tokens


def test_a_session_takes_the_longest_source_and_keeps_its_own_when_longer(tiny_typed):
    m = tiny_typed("q4_0")
    with guanaco_rt.Session(m, n_ctx=128) as a, guanaco_rt.Session(m, n_ctx=128) as b, \
            guanaco_rt.Session(m, n_ctx=128) as c:
        a.eval(P1[:10])
        b.eval(P1[:30])
        assert c.copy_prefix(P1, [a, b]) == 30
        assert c.copy_prefix(P1[:20] + [5], [a]) == 20      # its own 20 beat a's 10: nothing copied
        assert c.n_past == 30
        assert c.copy_prefix([], [a]) == 0


def test_sources_that_cannot_give_their_rows_are_skipped(tiny_typed, tmp_path):
    m, other = tiny_typed("q4_0"), tiny_typed("q8_0")
    with guanaco_rt.Session(m, n_ctx=128) as b:
        sources = []
        for make in (lambda: guanaco_rt.Session(m, n_ctx=128, kv_f16=True),     # another KV type
                     lambda: guanaco_rt.Session(other, n_ctx=128)):            # another model
            s = make()
            s.eval(P1)
            sources.append(s)
        closed = guanaco_rt.Session(m, n_ctx=128)
        closed.eval(P1)
        closed.close()
        b.eval(P1[:3])
        assert b.copy_prefix(P1, sources + [closed, b]) == 3
        assert b.tokens == P1[:3]
        for s in sources:
            s.close()
        with pytest.raises(ValueError, match="outside"):
            b.copy_prefix([10 ** 6], [])


def test_other_lora_adapters_are_skipped(tiny_typed, tmp_path):
    from test_lora import random_weights, write_gguf_adapter
    m = tiny_typed("f16")
    path = write_gguf_adapter(tmp_path / "a.gguf", random_weights(m, 4, 1), 8)
    with guanaco_rt.Session(m, n_ctx=128, lora=[(path, 1.0)]) as a, guanaco_rt.Session(m, n_ctx=128) as b, \
            guanaco_rt.Session(m, n_ctx=128, lora=[(path, 1.0)]) as c, \
            guanaco_rt.Session(m, n_ctx=128, lora=[(path, 0.5)]) as d:
        a.eval(P1)
        assert b.copy_prefix(P1, [a]) == 0             # no adapter here
        assert d.copy_prefix(P1, [a]) == 0             # another scale
        assert c.copy_prefix(P2, [a]) == 25            # the same adapter and scale
        np.testing.assert_array_equal(c.eval(P2[25:], all_logits=True),
                                      guanaco_rt.Session(m, n_ctx=128, lora=[(path, 1.0)]).eval(
                                          P2, all_logits=True)[25:])


def test_sliding_window_models_copy_nothing(tmp_path):
    path = write_family_gguf(tmp_path / "g.gguf", "gemma3", wtype=T.Q8_0, n_layer=2, head_dim=64, n_swa=8)
    with guanaco_rt.Model(path, n_threads=1) as m, guanaco_rt.Session(m, n_ctx=64) as a, \
            guanaco_rt.Session(m, n_ctx=64) as b:
        ids = list(range(5, 25))
        a.eval(ids)
        assert b.copy_prefix(ids, [a]) == 0 and b.n_past == 0


@pytest.mark.parametrize("batch", [False, True])
def test_a_source_that_rewinds_and_rewrites_while_copied_from_is_never_read_half_written(tiny_typed, batch):
    """The source keeps cutting its sequence back and evaluating other tokens over the
    prefix the receivers copy; every copy must give the reference logits exactly. Batched:
    the source's tokens go in the batcher's passes and the receivers copy on its thread,
    between them."""
    m = tiny_typed("q4_0")
    prefix = P1[:32]
    tails = [RNG.integers(3, 300, 4).tolist() for _ in range(3)]
    refs = [whole(m, prefix + t)[-1] for t in tails]
    other = RNG.integers(3, 300, 32).tolist()           # overwrites the prefix's rows with others
    stop = time.monotonic() + 3.0
    b = m.batcher(max_seqs=4, chunk=8, n_threads=2) if batch else None
    src = guanaco_rt.Session(m, n_ctx=128, n_threads=1, batcher=b)
    src.eval(prefix)
    copies = {"n": 0, "full": 0, "any": 0}

    def source():
        k = 0
        while time.monotonic() < stop:          # generate() cuts the cache back to the common prefix
            cut = int(RNG.integers(0, 32))
            src.generate(prefix[:cut] + other[cut:] if k % 2 else prefix, max_new_tokens=1, temperature=0)
            k += 1
        return k

    def receiver(j):
        with guanaco_rt.Session(m, n_ctx=128, n_threads=1, batcher=b) as r:
            while time.monotonic() < stop:
                r.reset()
                got = r.copy_prefix(prefix + tails[j], [src])
                copies["n"] += 1
                copies["full"] += got == 32
                copies["any"] += got > 0
                logits = r.eval((prefix + tails[j])[got:], all_logits=True)[-1]
                np.testing.assert_array_equal(logits, refs[j])
        return 0

    rounds = together([source, lambda: receiver(0), lambda: receiver(1), lambda: receiver(2)])
    src.close()
    assert rounds[0] > 20 and copies["n"] > 20 and copies["full"] > 0
    if batch:
        st = b.stats()
        b.close()
        assert st["copies"] == copies["any"] and st["copied_positions"] >= 32 * copies["full"]


def test_a_batched_session_copies_while_its_batcher_is_paused_and_alone_once_it_is_closed(tiny_typed):
    m = tiny_typed("q4_K")
    b = m.batcher(max_seqs=2, chunk=8, n_threads=2)
    with guanaco_rt.Session(m, n_ctx=128, batcher=b) as a, guanaco_rt.Session(m, n_ctx=128, batcher=b) as r:
        a.eval(P1)
        b.pause()                               # no passes; copies still run
        assert r.copy_prefix(P2, [a]) == 25
        b.resume()
        assert b.stats()["copies"] == 1 and b.stats()["copied_positions"] == 25
        np.testing.assert_array_equal(r.eval(P2[25:], all_logits=True), whole(m, P2)[25:])
        b.close()                               # the copy then runs on the caller's thread
        r.reset()
        assert r.copy_prefix(P2, [a]) == 25 and r.tokens == P2[:25]
        assert b.stats()["copies"] == 1


@pytest.mark.parametrize("batch", [False, True])
def test_llm_sessions_share_a_prompt_prefix_and_answer_as_alone(tiny_typed, batch):
    m = tiny_typed("q4_K")
    prompts = [P1[:30] + [40 + i, 50 + i] for i in range(4)]
    with LLM(m, n_ctx=128, n_sessions=1) as solo:
        ref = [solo.create_completion(p, max_tokens=6, temperature=0)["choices"][0]["text"] for p in prompts]
    with LLM(m, n_ctx=128, n_sessions=4, batch=batch) as llm:
        assert llm.create_completion(prompts[0], max_tokens=6, temperature=0)["choices"][0]["text"] == ref[0]
        # the free session with the prompt's prefix goes to the first caller, and the two
        # sessions made for the others copy the 30 shared positions from it
        held = [llm.pool.acquire(p) for p in prompts[1:]]
        assert llm.pool.shared_tokens == 2 * 30
        assert sorted(s.n_past for s in held)[:2] == [30, 30]
        for s in held:
            llm.pool.release(s)
        got = together([lambda p=p: llm.create_completion(p, max_tokens=6, temperature=0) for p in prompts])
        assert [g["choices"][0]["text"] for g in got] == ref


def test_usage_reports_the_cached_prompt_tokens(tiny_typed):
    m = tiny_typed("q4_0")
    with LLM(m, n_ctx=128, n_sessions=2) as llm:
        first = llm.create_completion(P1[:30] + [41, 42], max_tokens=3, temperature=0)["usage"]
        assert first["prompt_tokens_details"] == {"cached_tokens": 0}
        s = llm.pool.acquire(P1[:30] + [50])           # keeps the first session busy: the next gets a new one
        try:
            again = llm.create_completion(P1[:30] + [43, 44], max_tokens=3, temperature=0)["usage"]
        finally:
            llm.pool.release(s)
        # its 30 shared positions were copied from a session that holds them, then reused
        assert again["prompt_tokens_details"] == {"cached_tokens": 30} and llm.pool.shared_tokens >= 30
        chunks = list(llm.create_completion(P1[:30] + [43, 44], max_tokens=3, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
        assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 31    # all but the last token


def test_copy_prefix_refuses_what_is_not_ids_or_sessions(tiny_typed):
    from guanaco_rt.errors import InvalidArgumentError
    m = tiny_typed("q4_0")
    with guanaco_rt.Session(m, n_ctx=64) as a, guanaco_rt.Session(m, n_ctx=64) as b:
        a.eval(P1[:10])
        for ids, sources, param in ((P1, a, "sources"), (P1, None, "sources"), (P1, [a, "a"], "sources"),
                                    ([2 ** 70], [a], "ids"), ([-1], [a], "ids"), ([10 ** 6], [a], "ids")):
            with pytest.raises(InvalidArgumentError) as e:
                b.copy_prefix(ids, sources)
            assert e.value.param == param, (ids, sources)
        assert b.n_past == 0


def test_shared_tokens_count_only_positions_still_copied(tiny_typed):
    m = tiny_typed("q4_0")
    with guanaco_rt.Session(m, n_ctx=128) as a, guanaco_rt.Session(m, n_ctx=128) as b:
        a.eval(P1)
        assert b.copy_prefix(P2, [a]) == 25
        b.reset()                                       # the copied positions are gone
        r = b.generate(P2, max_new_tokens=2, temperature=0)
        assert r.timings.shared_tokens == 0 and r.timings.reused_tokens == 0


# ---- requests that start together (SessionPool's cold start) -------------------------------
SYS = RNG.integers(3, 300, 60).tolist()         # a system prompt no session holds yet
COLD = [SYS + [60 + i, 70 + i, 80 + i] for i in range(4)]


@pytest.mark.parametrize("batch", [False, True])
def test_requests_that_start_together_wait_for_the_first_to_evaluate_their_shared_prefix(tiny_typed, batch):
    m = tiny_typed("q4_K")
    with LLM(m, n_ctx=128, n_sessions=1) as solo:
        ref = [solo.create_completion(p, max_tokens=5, temperature=0)["choices"][0]["text"] for p in COLD]
    with LLM(m, n_ctx=128, n_sessions=4, batch=batch) as llm:
        if batch:
            # no passes until all four are in: without the waits, each would queue the
            # system prompt's rows and evaluate them
            llm.batcher.pause()
            threading.Timer(0.5, llm.batcher.resume).start()
        got = together([lambda p=p: llm.create_completion(p, max_tokens=5, temperature=0) for p in COLD])
        assert [g["choices"][0]["text"] for g in got] == ref
        cached = sorted(g["usage"]["prompt_tokens_details"]["cached_tokens"] for g in got)
        assert cached == [0, 60, 60, 60]
        if batch:       # (unbatched, a request may come late enough to be handed the first one's session)
            assert llm.pool.cold_waits == 3 and llm.pool.shared_tokens == 3 * 60


def test_a_request_does_not_wait_for_one_that_idles_or_is_given_back(tiny_typed):
    m = tiny_typed("q4_0")
    with LLM(m, n_ctx=128, n_sessions=3) as llm:
        pool = llm.pool
        a = pool.acquire(COLD[0])           # its caller runs nothing on it
        t0 = time.monotonic()
        b = pool.acquire(COLD[1])
        waited = time.monotonic() - t0
        assert pool.COLD_SHARE_IDLE_S <= waited < pool.COLD_SHARE_IDLE_S + 2 and b.n_past == 0
        pool.release(b)
        # one given back while another waits for it: the wait ends then
        pool.release(a)
        a = pool.acquire(COLD[2])
        a._busy.acquire()                   # as if it were evaluating
        threading.Timer(0.3, lambda: (a._busy.release(), pool.release(a))).start()
        t0 = time.monotonic()
        c = pool.acquire(COLD[3])
        assert 0.25 < time.monotonic() - t0 < 2 and c.n_past == 0
        pool.release(c)
        assert pool.cold_waits == 2


def test_a_request_does_not_wait_for_one_that_went_past_the_shared_part_with_other_tokens(tiny_typed):
    # e.g. a leader whose prompt was cut to fit n_ctx: it will never hold the shared positions
    m = tiny_typed("q4_0")
    with LLM(m, n_ctx=128, n_sessions=2) as llm:
        pool = llm.pool
        a = pool.acquire(COLD[0])
        a.eval(COLD[0][:10] + RNG.integers(3, 300, 70).tolist())      # 80 positions, 10 of them shared
        a._busy.acquire()                   # as if it were generating
        timer = threading.Timer(3.0, lambda: (a._busy.release(), pool.release(a)))
        timer.start()
        try:
            t0 = time.monotonic()
            b = pool.acquire(COLD[1])
            assert time.monotonic() - t0 < 1.0 and b.n_past == 10 and pool.cold_waits == 1
            pool.release(b)
        finally:
            timer.join()


def test_when_the_request_waited_for_ends_short_the_wait_passes_to_the_next_one(tiny_typed):
    # the first request ends (cancelled) before it evaluates the shared part: of the two that
    # waited for it, the first evaluates it and the second waits for that one, then copies it
    m = tiny_typed("q4_0")
    with LLM(m, n_ctx=128, n_sessions=3) as llm:
        pool = llm.pool
        a = pool.acquire(COLD[0])
        a._busy.acquire()                   # as if it were generating
        got = {}

        def second():
            b = pool.acquire(COLD[1])
            got["b_copied"] = b.n_past
            b.eval(COLD[1])
            got["b"] = b

        def third():
            got["c"] = pool.acquire(COLD[2])
        tb = threading.Thread(target=second)
        tb.start()
        time.sleep(0.2)
        tc = threading.Thread(target=third)
        tc.start()
        time.sleep(0.2)
        assert tb.is_alive() and tc.is_alive()          # both wait for a
        a._busy.release()
        pool.release(a)                     # a ends holding nothing
        tb.join(5)
        tc.join(5)
        assert got["b_copied"] == 0 and got["c"].n_past == 60 and got["c"].tokens == COLD[2][:60]
        assert pool.cold_waits == 2 and pool.shared_tokens == 60
        pool.release(got["b"])
        pool.release(got["c"])
