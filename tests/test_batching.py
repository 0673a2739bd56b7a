"""Shared passes over the weights (Model.batcher, LLM and the server's --parallel): a
sequence's logits, tokens and log-probabilities are the same bits alone and in a pass
with any others, whatever the thread count; sequences join and leave between passes;
a prompt goes in chunks between the others' tokens; cancel, stop strings, seeds and
settings stay per sequence."""
import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gguf_families import write_family_gguf

import guanaco_rt
from guanaco_rt import ggml_types as T
from guanaco_rt._kernels._engine import State
from guanaco_rt.sampling import Sampler

from helpers import TINY_WTYPES


@pytest.fixture(scope="module")
def demo(smollm2):
    m = guanaco_rt.Model(smollm2, n_threads=2)
    yield m
    m.close()


def together(fns):
    """Run the callables on threads of their own at once -> their results, in order (raises the first error)"""
    out, errs = [None] * len(fns), []
    go = threading.Barrier(len(fns))

    def run(i):
        try:
            go.wait()
            out[i] = fns[i]()
        except BaseException as e:      # noqa: BLE001 - handed to the test thread
            errs.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a batched call hung"
    if errs:
        raise errs[0]
    return out


def lined_up(b, fns, n_slots):
    """together(fns) with b paused until n_slots sequences wait in its line: the first pass takes them all"""
    b.pause()
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("out", together(fns)))
    t.start()
    for _ in range(2000):
        if b.stats()["queued"] >= n_slots:
            break
        threading.Event().wait(0.005)
    queued = b.stats()["queued"]
    b.resume()
    t.join(120)
    assert queued == n_slots, f"only {queued} of {n_slots} sequences reached the line"
    return box["out"]


# ---- one pass, several sequences: the bits of each alone ---------------------------------------
@pytest.mark.parametrize("wtype", sorted(TINY_WTYPES))
@pytest.mark.parametrize("nth", [1, 2])
def test_a_pass_gives_each_sequence_its_own_bits(tiny_typed, wtype, nth):
    """Sequences at different positions, adding 1, 3, 4, 5 and 9 tokens in one pass (the
    4-token and 8-row kernels, and their tails): each gets the logits it gets alone"""
    m = tiny_typed(wtype)
    rng = np.random.default_rng(3)
    history = [rng.integers(3, 290, n).astype(np.int32) for n in (1, 7, 2, 12, 5)]
    new = [rng.integers(3, 290, n).astype(np.int32) for n in (1, 3, 4, 5, 9)]
    alone = []
    for h, x in zip(history, new):
        s = State(m._engine, 64, 16, False, nth)
        s.prefill(h)
        s.prefill(x)
        alone.append(s.logits())
    b = m.batcher(max_seqs=8, chunk=16, n_threads=nth)
    try:
        states = []
        for h in history:
            s = State(m._engine, 64, 16, False, 1)
            s.prefill(h)
            s.attach(b)
            states.append(s)
        lined_up(b, [lambda s=s, x=x: s.prefill(x) for s, x in zip(states, new)], len(states))
        assert b.stats()["passes"] == 1 and b.stats()["occupancy"] == len(states)
        for s, ref, h, x in zip(states, alone, history, new):
            assert s.n_past == len(h) + len(x)
            np.testing.assert_array_equal(s.logits(), ref)
    finally:
        b.close()


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(1, 9)), min_size=1, max_size=6), st.integers(1, 2))
def test_any_mix_of_sequences_in_a_pass(tiny_typed, seqs, nth):
    """Hypothesis: any number of sequences, any positions, any token counts that fit a pass"""
    m = tiny_typed("q4_K")
    rng = np.random.default_rng(len(seqs))
    b = m.batcher(max_seqs=6, chunk=54, n_threads=nth)
    try:
        states, refs, news = [], [], []
        for n_hist, n_new in seqs:
            h = rng.integers(3, 290, n_hist).astype(np.int32)
            x = rng.integers(3, 290, n_new).astype(np.int32)
            ref = State(m._engine, 64, 32, False, nth)
            if n_hist:
                ref.prefill(h)
            ref.prefill(x)
            refs.append(ref.logits())
            s = State(m._engine, 64, 32, False, 1)
            if n_hist:
                s.prefill(h)
            s.attach(b)
            states.append(s)
            news.append(x)
        lined_up(b, [lambda s=s, x=x: s.prefill(x) for s, x in zip(states, news)], len(states))
        for s, ref in zip(states, refs):
            np.testing.assert_array_equal(s.logits(), ref)
    finally:
        b.close()


def test_a_pass_fills_up_to_its_limits_and_the_rest_waits(tiny_typed):
    """max_seqs sequences a pass; a prompt chunk that does not fit the rows left waits for the next"""
    m = tiny_typed("q8_0")
    b = m.batcher(max_seqs=2, chunk=4, n_threads=1)
    try:
        states = []
        for i in range(5):
            s = State(m._engine, 64, 16, False, 1)
            s.attach(b)
            states.append(s)
        ids = [np.arange(3 + i, 5 + i, dtype=np.int32) for i in range(5)]
        lined_up(b, [lambda s=s, x=x: s.prefill(x) for s, x in zip(states, ids)], 5)
        st_ = b.stats()
        assert st_["passes"] == 3 and st_["rows"] == 10
        for s, x in zip(states, ids):
            ref = State(m._engine, 64, 16, False, 1)
            ref.prefill(x)
            np.testing.assert_array_equal(s.logits(), ref.logits())
    finally:
        b.close()


def test_a_long_prompt_goes_in_chunks(tiny_typed):
    m = tiny_typed("q4_0")
    ids = np.random.default_rng(1).integers(3, 290, 50).astype(np.int32)
    ref = State(m._engine, 64, 64, False, 2)
    ref.prefill(ids)
    b = m.batcher(max_seqs=4, chunk=8, n_threads=2)
    try:
        s = State(m._engine, 64, 64, False, 2)
        s.attach(b)
        assert s.prefill(ids) == 50
        assert b.stats()["passes"] == 7 and b.stats()["members"] == 0
        np.testing.assert_array_equal(s.logits(), ref.logits())
        all_logits = np.zeros((3, m.n_vocab), np.float32)        # every position's logits: alone
        s.prefill(ids[:3], all_logits)
        assert b.stats()["passes"] == 7
    finally:
        b.close()


def test_sliding_window_layers_in_a_pass(tmp_path):
    """Gemma 3's local layers: each sequence slides its own window rows in a pass"""
    m = guanaco_rt.Model(write_family_gguf(tmp_path / "g.gguf", "gemma3", wtype=T.Q8_0, n_layer=7, head_dim=64,
                                           n_swa=4), n_threads=2)
    b = m.batcher(max_seqs=4, chunk=4)
    try:
        rng = np.random.default_rng(5)
        prompts = [[1] + rng.integers(3, 290, n).tolist() for n in (3, 20, 9)]
        kw = dict(max_new_tokens=24, temperature=0)
        alone = [guanaco_rt.Session(m, n_ctx=48, swa_full=True).generate(p, **kw).tokens for p in prompts]
        sessions = [guanaco_rt.Session(m, n_ctx=48, n_batch=4, batcher=b) for _ in prompts]
        assert sessions[0]._state.kv_stats()["swa_keep"] < 48
        got = together([lambda s=s, p=p: s.generate(p, **kw).tokens for s, p in zip(sessions, prompts)])
        assert got == alone
    finally:
        b.close()
        m.close()


# ---- generation: sessions on a batcher -------------------------------------------------------
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "List three colors.",
           "Count to ten.", "Who wrote Hamlet?", "Name a large animal.", "What is 2 + 2?", "Say hello."]


def gen(s, i, **kw):
    """greedy for even i, seeded sampling for odd (top-k, top-p, temperature, a logit bias), with log-probs"""
    tk = s.model.tokenizer
    no_end = {t: float("-inf") for t in {tk.eos_id, *getattr(tk, "eog_ids", ())} if t is not None}
    args = dict(max_new_tokens=24, n_probs=2, logit_bias=no_end)        # every one runs its 24 tokens
    if i % 2:
        s.sampler.set_state(Sampler(100 + i).state)
        args.update(temperature=0.9, top_k=40, top_p=0.95, logit_bias={**no_end, 13: -2.0})
    else:
        args.update(temperature=0)
    args.update(kw)
    r = s.generate(PROMPTS[i], **args)
    return r.tokens, r.logprobs, r.finish_reason


@pytest.mark.parametrize("n_clients", [1, 2, 4, 8])
def test_generations_in_a_batch_are_those_alone(demo, n_clients):
    alone = [gen(guanaco_rt.Session(demo, n_ctx=256), i) for i in range(n_clients)]
    b = demo.batcher(max_seqs=8, chunk=16)
    try:
        sessions = [guanaco_rt.Session(demo, n_ctx=256, batcher=b) for _ in range(n_clients)]
        got = together([lambda s=s, i=i: gen(s, i) for i, s in enumerate(sessions)])
        assert got == alone
        st_ = b.stats()
        assert st_["members"] == 0 and st_["queued"] == 0
        if n_clients > 1:
            assert st_["occupancy"] > 1.2          # they did share passes
    finally:
        b.close()


def test_thread_count_of_the_batch_does_not_change_the_bits(demo):
    outs = []
    for nth in (1, 2):
        b = demo.batcher(max_seqs=4, chunk=8, n_threads=nth)
        try:
            sessions = [guanaco_rt.Session(demo, n_ctx=256, batcher=b) for _ in range(3)]
            outs.append(together([lambda s=s, i=i: gen(s, i) for i, s in enumerate(sessions)]))
        finally:
            b.close()
    assert outs[0] == outs[1]


def test_stop_strings_cancel_and_streams_stay_per_session(demo):
    b = demo.batcher(max_seqs=4, chunk=16)
    try:
        a, c, d = (guanaco_rt.Session(demo, n_ctx=256, batcher=b) for _ in range(3))
        ref = guanaco_rt.Session(demo, n_ctx=256).generate(PROMPTS[3], max_new_tokens=40, temperature=0,
                                                           stop=["5"])

        def cancelled():
            pieces = []
            for piece in d.stream(PROMPTS[1], max_new_tokens=200, temperature=0):
                pieces.append(piece)
                if len(pieces) == 3:
                    d.cancel()
            return d.last_result.finish_reason

        def streamed():
            return "".join(c.stream(PROMPTS[0], max_new_tokens=30, temperature=0))

        r_stop, reason, text = together([
            lambda: a.generate(PROMPTS[3], max_new_tokens=40, temperature=0, stop=["5"]), cancelled, streamed])
        assert r_stop.text == ref.text and r_stop.finish_reason == ref.finish_reason
        assert reason == "cancelled"
        assert text == guanaco_rt.Session(demo, n_ctx=256).generate(PROMPTS[0], max_new_tokens=30,
                                                                     temperature=0).text
        assert b.stats()["members"] == 0
        # the cancelled session goes on, consistent
        assert d.generate(PROMPTS[2], max_new_tokens=8, temperature=0).tokens == \
            guanaco_rt.Session(demo, n_ctx=256).generate(PROMPTS[2], max_new_tokens=8, temperature=0).tokens
    finally:
        b.close()


def test_structured_output_masks_stay_per_session(demo):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    kw = dict(max_new_tokens=40, temperature=0)
    alone = [guanaco_rt.Session(demo, n_ctx=256).generate(PROMPTS[6], json_schema=schema, **kw).text,
             guanaco_rt.Session(demo, n_ctx=256).generate(PROMPTS[0], **kw).text]
    b = demo.batcher(max_seqs=4)
    try:
        s1, s2 = (guanaco_rt.Session(demo, n_ctx=256, batcher=b) for _ in range(2))
        got = together([lambda: s1.generate(PROMPTS[6], json_schema=schema, **kw).text,
                        lambda: s2.generate(PROMPTS[0], **kw).text])
        assert got == alone
    finally:
        b.close()


def test_a_closed_batcher_leaves_its_sessions_running_alone(demo):
    b = demo.batcher(max_seqs=2)
    s = guanaco_rt.Session(demo, n_ctx=256, batcher=b)
    first = gen(s, 0)
    b.close()
    assert b.closed
    s.reset()
    assert gen(s, 0) == first
    with pytest.raises(guanaco_rt.GuanacoError, match="batcher"):
        guanaco_rt.Session(demo, batcher="yes")


def test_bad_batcher_settings_are_typed_errors(demo):
    for kw in ({"max_seqs": 0}, {"chunk": True}, {"gather_ms": -1}, {"max_seqs": 5000}):
        with pytest.raises(guanaco_rt.GuanacoError, match=next(iter(kw))):
            demo.batcher(**kw)


def test_closing_the_model_stops_its_batchers(smollm2):
    m = guanaco_rt.Model(smollm2, n_threads=1)
    b = m.batcher()
    m.close()
    assert b.closed
    with pytest.raises(guanaco_rt.ModelClosedError):
        m.batcher()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_runs_its_batched_session_alone(demo):
    b = demo.batcher(max_seqs=2)
    try:
        s = guanaco_rt.Session(demo, n_ctx=256, batcher=b, n_threads=1)
        ref = gen(s, 0)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                   # the child: no batcher thread here
            try:
                s.reset()
                ok = gen(s, 0) == ref
                os.write(w, b"1" if ok else b"0")
            finally:
                os._exit(0)
        os.close(w)
        got = os.read(r, 1)
        os.waitpid(pid, 0)
        assert got == b"1"
    finally:
        b.close()


# ---- LLM and memory ---------------------------------------------------------------------------
def test_llm_batches_its_sessions_with_the_bits_of_one(smollm2):
    req = dict(max_tokens=20, temperature=0.7, seed=11, logprobs=2)
    with guanaco_rt.LLM(smollm2, n_sessions=1) as one:
        assert one.batcher is None and one.batch_stats() is None
        ref = [one.create_completion(p, **req) for p in PROMPTS[:4]]
    with guanaco_rt.LLM(smollm2, n_sessions=4) as llm:
        assert llm.batcher is not None and llm.batcher.max_seqs == 4
        got = together([lambda p=p: llm.create_completion(p, **req) for p in PROMPTS[:4]])
        stats = llm.batch_stats()
    for a, c in zip(ref, got):
        assert a["choices"][0]["text"] == c["choices"][0]["text"]
        assert a["choices"][0]["logprobs"] == c["choices"][0]["logprobs"]
    assert stats["passes"] > 0 and stats["members"] == 0 and stats["tokens_per_s"] > 0


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_the_kv_cache_costs_the_positions_it_holds(demo):
    """16 sessions of n_ctx 4096 (180 MiB of K/V each if committed) with 60 tokens each: a few MiB each"""
    before = rss_mib()
    sessions = [guanaco_rt.Session(demo, n_ctx=4096, n_batch=16) for _ in range(16)]
    ids = demo.tokenize("Hello, how are you today? " * 8)
    for s in sessions:
        s.eval(ids)
    assert sessions[0]._state.kv_stats()["bytes"] > 150 * 2**20
    grown = rss_mib() - before
    assert grown < 16 * 20, f"RSS grew {grown:.0f} MiB for 16 sessions of {len(ids)} tokens"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_releasing_thread_pools_is_skipped_in_a_forked_child(demo):
    """release_threads frees the caller's OpenMP pool in the process that made it (a load, a
    session); a forked child has a copy of the pool without its threads, and freeing it there
    would wait for them forever: the child skips it and still generates"""
    from guanaco_rt.model import release_threads

    s = guanaco_rt.Session(demo, n_ctx=128, n_threads=2)
    ref = s.generate("Hello", max_new_tokens=4, temperature=0).tokens      # a pool on this thread
    release_threads()
    s.generate("Hello", max_new_tokens=4, temperature=0)                    # and again
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            release_threads()
            ok = guanaco_rt.Session(demo, n_ctx=128, n_threads=2).generate(
                "Hello", max_new_tokens=4, temperature=0).tokens == ref
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    import select
    ready, _, _ = select.select([r], [], [], 60)
    got = os.read(r, 1) if ready else b"hung"
    if not ready:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert got == b"1"
