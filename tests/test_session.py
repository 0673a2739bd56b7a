"""The embedding API: generation, streaming, stops, chat, context policies, state,
threads, cancellation."""
import asyncio
import gc
import os
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import guanaco_rt
from guanaco_rt._kernels._decode import Decoder, TextStage
from guanaco_rt.chat import Conversation, format_turn
from guanaco_rt.sampling import Sampler, SamplingParams

from helpers import penalize, sample, tiny_model
from reference import sample_chain, sample_penalize

PROMPT = "the cat sat on the mat"
PKG_DIR = os.path.dirname(guanaco_rt.__file__)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("sess")


@pytest.fixture(scope="module")
def model(root):
    return guanaco_rt.Model(tiny_model(root, "q4_K_M", n_vocab=600))


@pytest.fixture(scope="module")
def one_layer(root):
    # with one layer a cached key depends only on its own token, so a shifted cache
    # must equal a fresh evaluation of the kept tokens up to rounding
    return guanaco_rt.Model(tiny_model(root, "q4_K_M", n_vocab=600, n_layer=1))


@pytest.fixture(scope="module")
def big_model(root):
    # big enough that a long prompt takes seconds: for cancellation and GIL tests
    return guanaco_rt.Model(tiny_model(root, "q4_0", n_vocab=1000, n_embd=1024, n_head=8, n_layer=6))


def cancel_midway(s, run, delay):
    """run() on another thread, s.cancel() after ``delay`` s -> (run's result, seconds from cancel() to return)."""
    res = {}
    th = threading.Thread(target=lambda: res.setdefault("r", run()))
    th.start()
    time.sleep(delay)
    t_cancel = time.perf_counter()
    s.cancel()
    th.join()
    return res["r"], time.perf_counter() - t_cancel


def fresh_logits(model, tokens):
    return guanaco_rt.Session(model, n_ctx=max(8, len(tokens) + 1)).eval(tokens)


# ---- generation --------------------------------------------------------------------------
def test_greedy_follows_argmax_of_eval(model):
    s = guanaco_rt.Session(model, n_ctx=64)
    r = s.generate(PROMPT, max_new_tokens=12, temperature=0, repetition_penalty=1.0)
    ids = model.tokenize(PROMPT)
    ref = guanaco_rt.Session(model, n_ctx=64)
    logits = ref.eval(ids)
    want = []
    for _ in range(12):
        t = int(np.argmax(logits))
        if t == 2:
            break
        want.append(t)
        logits = ref.eval([t])
    assert r.tokens == want
    assert r.finish_reason in ("length", "eos")


def test_seeded_sampling_is_deterministic_across_threads(model):
    kw = dict(max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.9, repetition_penalty=1.1)
    a = guanaco_rt.Session(model, n_ctx=64, seed=7, n_threads=1).generate(PROMPT, **kw)
    b = guanaco_rt.Session(model, n_ctx=64, seed=7, n_threads=2).generate(PROMPT, **kw)
    c = guanaco_rt.Session(model, n_ctx=64, seed=8, n_threads=2).generate(PROMPT, **kw)
    assert a.tokens == b.tokens and a.text == b.text
    assert a.tokens != c.tokens


def test_stream_equals_generate_and_never_splits_characters(model):
    kw = dict(max_new_tokens=40, temperature=1.5, top_k=0, top_p=1.0, repetition_penalty=1.0)
    # random weights at a high temperature emit byte tokens (ids 3..258): partial UTF-8
    s = guanaco_rt.Session(model, n_ctx=64, seed=3)
    stream = s.stream(PROMPT, **kw)
    pieces = list(stream)
    r = guanaco_rt.Session(model, n_ctx=64, seed=3).generate(PROMPT, **kw)
    assert "".join(pieces) == r.text == stream.result.text
    assert any(3 <= t < 259 for t in r.tokens)
    for p in pieces:
        p.encode("utf-8")          # whole characters only (no lone surrogates)


def test_stop_string_across_token_boundaries(model):
    base = guanaco_rt.Session(model, n_ctx=64).generate(PROMPT, max_new_tokens=30, temperature=0)
    text = base.text
    # a stop string that straddles two tokens somewhere in the middle
    tok = model.tokenizer
    pos, boundary = 0, None
    for t in base.tokens[:-1]:
        pos += len(tok.token_bytes(t).decode("utf-8", "replace"))
        if pos > 3 and len(text) - pos > 3:
            boundary = pos
            break
    assert boundary is not None
    stop = text[boundary - 2:boundary + 2]
    s = guanaco_rt.Session(model, n_ctx=64)
    stream = s.stream(PROMPT, max_new_tokens=30, temperature=0, stop=["zzzz-never", stop])
    pieces = list(stream)
    want = text[:text.find(stop)]
    assert "".join(pieces) == want == stream.result.text
    assert stream.result.finish_reason == "stop"
    assert all(stop not in p for p in pieces)
    # one string is one stop string, not a list of characters
    r = guanaco_rt.Session(model, n_ctx=64).generate(PROMPT, max_new_tokens=30, temperature=0, stop=stop)
    assert r.text == want and r.finish_reason == "stop"
    with pytest.raises(TypeError, match="stop"):
        s.generate(PROMPT, max_new_tokens=3, stop=[b"x"])
    # stream() checks its arguments when called, not at the first next()
    with pytest.raises(TypeError, match="stop"):
        s.stream(PROMPT, stop=[b"x"])
    with pytest.raises(ValueError, match="logit_bias token id"):
        s.stream(PROMPT, logit_bias={10**6: 1.0})
    assert s.generate(PROMPT, max_new_tokens=2, temperature=0).finish_reason == "length"   # not left busy


@given(text=st.text(alphabet="ab#H: é", max_size=40), cuts=st.lists(st.integers(0, 40), max_size=10),
       stops=st.lists(st.text(alphabet="ab#H: é", min_size=1, max_size=4), min_size=1, max_size=3))
def test_stop_matcher_property(text, cuts, stops):
    # the decode loop's text stage (C), fed text pieces instead of tokens
    bounds = sorted(set(c for c in cuts if c <= len(text)))
    pieces = [text[a:b] for a, b in zip([0] + bounds, bounds + [len(text)])]
    empty_vocab = (np.zeros(1, np.uint8), np.zeros(2, np.int64), np.zeros(1, np.uint8))
    m = TextStage(empty_vocab, stops)
    out, stopped = [], False
    for p in pieces:
        o, stopped = m.push_text(p)
        out.append(o)
        if stopped:
            break
    if not stopped:
        o, stopped = m.finish()
        out.append(o)
    # oracle: generation stops at the first piece boundary where some stop string is
    # present, and the text is cut where the earliest present stop string begins
    want, end = text, 0
    for p in pieces:
        end += len(p)
        hits = [i for i in (text[:end].find(s) for s in stops) if i >= 0]
        if hits:
            want = text[:min(hits)]
            break
    assert "".join(out) == want
    assert stopped == bool(hits)


def test_eos_ends_generation(model):
    s = guanaco_rt.Session(model, n_ctx=64)
    r = s.generate(PROMPT, max_new_tokens=20, temperature=0, logit_bias={2: 1000.0})
    assert r.finish_reason == "eos" and r.tokens == [] and r.text == ""


def test_logprobs_and_callback(model):
    s = guanaco_rt.Session(model, n_ctx=64)
    got, n_past = [], []

    def cb(piece):
        got.append(piece)
        n_past.append(s.n_past)       # the session's view is current inside the callback
    r = s.generate(PROMPT, max_new_tokens=5, temperature=0, n_probs=3, callback=cb)
    assert "".join(got) == r.text
    assert n_past == sorted(n_past) and n_past[0] > len(model.tokenize(PROMPT)) - 1
    assert len(r.logprobs) == len(r.tokens)
    for tok, top in zip(r.tokens, r.logprobs):
        assert top[0][0] == tok and len(top) == 3
        assert top[0][1] >= top[1][1] >= top[2][1] and top[0][1] <= 0


def test_timings_are_reported(model):
    r = guanaco_rt.Session(model, n_ctx=64).generate(PROMPT, max_new_tokens=4, temperature=0)
    t = r.timings
    assert t.prompt_tokens == len(model.tokenize(PROMPT)) and t.prompt_ms > 0
    assert t.generated_tokens == len(r.tokens) and t.generate_tokens_per_s > 0


def test_astream_matches_generate(model):
    async def collect():
        s = guanaco_rt.Session(model, n_ctx=64, seed=5)
        return [p async for p in s.astream(PROMPT, max_new_tokens=15, temperature=0.9)]
    pieces = asyncio.run(collect())
    r = guanaco_rt.Session(model, n_ctx=64, seed=5).generate(PROMPT, max_new_tokens=15, temperature=0.9)
    assert "".join(pieces) == r.text


# ---- prefix reuse and chat ---------------------------------------------------------------
def test_prefix_reuse_gives_fresh_logits(model):
    s = guanaco_rt.Session(model, n_ctx=64)
    s.generate(PROMPT, max_new_tokens=3, temperature=0)
    longer = PROMPT + " and the dog"
    r = s.generate(longer, max_new_tokens=1, temperature=0, n_probs=5)
    n_common = len(model.tokenize(PROMPT))
    assert r.timings.reused_tokens >= n_common - 1
    assert r.timings.prompt_tokens == len(model.tokenize(longer)) - r.timings.reused_tokens
    ids = model.tokenize(longer)
    # the reused cache holds the same bits as a fresh evaluation (kernels are batch-invariant)
    np.testing.assert_array_equal(s._state.logits(), fresh_logits(model, ids))
    fresh = guanaco_rt.Session(model, n_ctx=64).generate(longer, max_new_tokens=1, temperature=0, n_probs=5)
    assert r.tokens == fresh.tokens and r.logprobs == fresh.logprobs


def test_guanaco_template():
    c = Conversation()
    p = c.prompt("Introduce yourself")
    assert p.startswith("A chat between a curious human")
    assert p.endswith("### Human: Introduce yourself\n### Assistant:")
    c.add("Introduce yourself", "I am Guanaco.")
    p2 = c.prompt("Thanks")
    assert "### Assistant: I am Guanaco.\n### Human: Thanks\n### Assistant:" in p2
    assert format_turn("x") == "### Human: x\n### Assistant:"


def test_chat_multi_turn_reuses_the_cache(model):
    s = guanaco_rt.Session(model, n_ctx=512, system="Be brief.")
    r1 = s.chat("hello there", max_new_tokens=8, temperature=0)
    n_after_first = len(model.tokenize(s.conversation.prompt("x")))  # includes turn 1
    s.chat("and then", max_new_tokens=8, temperature=0)
    t = s.last_result.timings
    assert t.reused_tokens > len(model.tokenize("Be brief.\n### Human: hello there\n### Assistant:")) - 2
    assert t.prompt_tokens < n_after_first
    assert s.conversation.turns[0] == ("hello there", r1)
    assert len(s.conversation.turns) == 2


def test_chat_stops_at_human_turn(model):
    # bias the model towards "#" so it soon writes a "### Human:" turn
    hash_id = next(i for i, p in enumerate(model.tokenizer.pieces) if p[0] == "#")
    s = guanaco_rt.Session(model, n_ctx=512, system="")
    s.chat("hi", max_new_tokens=30, temperature=0, logit_bias={hash_id: 50.0})
    assert s.last_result.finish_reason in ("length", "eos", "stop")
    assert "### Human:" not in s.conversation.turns[-1][1]


# ---- context policies ------------------------------------------------------------------
def test_context_full_error_policy(model):
    s = guanaco_rt.Session(model, n_ctx=16, context_policy="error")
    with pytest.raises(guanaco_rt.ContextFullError):
        s.generate(PROMPT, max_new_tokens=40, temperature=0)
    assert s.n_past <= 16
    s.generate(PROMPT, max_new_tokens=2, temperature=0)    # still usable


def test_context_shift_policy_keeps_generating(model):
    s = guanaco_rt.Session(model, n_ctx=16, context_policy="shift", n_keep=1)
    r = s.generate(PROMPT, max_new_tokens=40, temperature=0)
    assert r.finish_reason in ("length", "eos") and s.n_past <= 16
    if r.finish_reason == "length":
        assert len(r.tokens) == 40


def test_long_generation_through_many_shifts(one_layer):
    # far past n_ctx and past the decode loop's first output buffer (1024 tokens); one
    # layer, so the shifted cache must still equal a fresh evaluation of the kept tokens
    model = one_layer
    s = guanaco_rt.Session(model, n_ctx=64, context_policy="shift", n_keep=1)
    r = s.generate(PROMPT, max_new_tokens=2500, temperature=0, n_probs=1, logit_bias={2: float("-inf")})
    assert r.finish_reason == "length" and len(r.tokens) == len(r.logprobs) == 2500
    assert all(top[0][0] == t for t, top in zip(r.tokens, r.logprobs))    # greedy: the top token
    assert s.n_past <= 64 and s.tokens[0] == 1 and s.tokens[-1] == r.tokens[-2]
    np.testing.assert_allclose(s._state.logits(), fresh_logits(model, s.tokens), rtol=0,
                               atol=0.02 * np.abs(s._state.logits()).max())


@pytest.mark.parametrize("kv_f16", [False, True])
def test_shifted_cache_matches_fresh_evaluation(one_layer, kv_f16):
    model = one_layer
    ids = model.tokenize("one two three four five six seven eight nine ten eleven")[:16]
    s = guanaco_rt.Session(model, n_ctx=len(ids), context_policy="shift", n_keep=1, kv_f16=kv_f16)
    s.eval(ids)
    # what the decode loop does when the cache is full: keep n_keep, drop half the rest
    n_discard = (len(ids) - 1) // 2
    s._state.shift(1, n_discard)
    kept = ids[:1] + ids[1 + n_discard:]
    assert s.tokens == kept
    assert kept[0] == 1 and len(kept) < len(ids) and kept[1:] == ids[-(len(kept) - 1):]
    fresh = guanaco_rt.Session(model, n_ctx=len(ids), kv_f16=kv_f16)
    fresh.eval(kept)
    for a, b in zip(s._state.export_kv(), fresh._state.export_kv()):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)     # (n_layer, n_past, n_embd_kv)
        np.testing.assert_allclose(a, b, rtol=0, atol=(2e-3 if kv_f16 else 1e-5) * np.abs(b).max())
    nxt = s.eval([42])
    ref = fresh.eval([42])
    # one f16 ulp in a key moves later 8-bit activation roundings: a few % at most
    assert np.abs(nxt - ref).max() / np.abs(ref).max() < (0.05 if kv_f16 else 0.02)
    assert (nxt * ref).sum() / np.linalg.norm(nxt) / np.linalg.norm(ref) > 0.999


def test_chat_shift_drops_whole_turns(model):
    s = guanaco_rt.Session(model, n_ctx=160, context_policy="shift", system="S.")
    for i in range(8):
        s.chat(f"message number {i} about cats", max_new_tokens=8, temperature=0)
        assert s.n_past <= 160
    assert s._chat_first_turn > 0
    assert len(s.conversation.turns) == 8


# ---- state ------------------------------------------------------------------------------
def _continue(s):
    return s.generate(s.tokens + [42], max_new_tokens=10, temperature=0.9, top_k=20).tokens


def test_save_load_gives_identical_continuation(model):
    s = guanaco_rt.Session(model, n_ctx=128, seed=11)
    s.generate(PROMPT, max_new_tokens=6, temperature=0.9)
    blob = s.save_state()
    want = _continue(s)
    s2 = guanaco_rt.Session(model, n_ctx=128, seed=999)
    s2.load_state(blob)
    assert _continue(s2) == want
    # the blob holds only the used part of the cache
    hp = model.hparams
    assert len(blob) < 2 * hp.n_layer * (s2.n_past + 20) * hp.n_embd * 4 + 4 * hp.n_vocab + 4096


def test_fork_shares_prefix_and_continues_identically(model):
    s = guanaco_rt.Session(model, n_ctx=128, seed=4)
    s.generate(PROMPT, max_new_tokens=6, temperature=0.9)
    f = s.fork()
    assert f.tokens == s.tokens
    assert _continue(f) == _continue(s)


def test_state_from_another_model_or_corrupt_is_refused(model, root):
    other = guanaco_rt.Model(tiny_model(root, "q4_K_M", n_vocab=600, seed=2))
    s = guanaco_rt.Session(model, n_ctx=64)
    s.eval(model.tokenize(PROMPT))
    blob = s.save_state()
    with pytest.raises(guanaco_rt.StateError, match="different model"):
        guanaco_rt.Session(other, n_ctx=64).load_state(blob)
    with pytest.raises(guanaco_rt.StateError):
        guanaco_rt.Session(model, n_ctx=64).load_state(blob[:-1])
    with pytest.raises(guanaco_rt.StateError):
        guanaco_rt.Session(model, n_ctx=64).load_state(b"nope" + blob[4:])
    with pytest.raises(guanaco_rt.StateError, match="n_ctx"):
        guanaco_rt.Session(model, n_ctx=4).load_state(blob)
    bad = bytearray(blob)
    bad[48:52] = b"!!!!"
    with pytest.raises(guanaco_rt.StateError):
        guanaco_rt.Session(model, n_ctx=64).load_state(bytes(bad))


def test_kv_f16_state_roundtrip(model):
    s = guanaco_rt.Session(model, n_ctx=64, kv_f16=True, seed=1)
    s.generate(PROMPT, max_new_tokens=4, temperature=0)
    blob = s.save_state()
    want = _continue(s)
    s2 = guanaco_rt.Session(model, n_ctx=64, kv_f16=True)
    s2.load_state(blob)
    assert _continue(s2) == want


# ---- threads and cancellation ------------------------------------------------------------
def test_sessions_in_threads_match_sequential(model):
    prompts = [f"{PROMPT} {i}" for i in range(4)]
    seq = [guanaco_rt.Session(model, n_ctx=64, seed=i).generate(p, max_new_tokens=12, temperature=0.8).tokens
           for i, p in enumerate(prompts)]
    out = [None] * 4

    def run(i):
        out[i] = guanaco_rt.Session(model, n_ctx=64, seed=i, n_threads=1).generate(
            prompts[i], max_new_tokens=12, temperature=0.8).tokens
    ths = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    [t.start() for t in ths]
    [t.join() for t in ths]
    assert out == seq


def test_one_session_two_threads_is_busy(big_model):
    s = guanaco_rt.Session(big_model, n_ctx=1024, n_threads=1)
    ids = [1] + [5 + i % 900 for i in range(600)]
    errors = []
    th = threading.Thread(target=lambda: s.eval(ids))
    th.start()
    time.sleep(0.05)
    try:
        s.eval([1])
    except guanaco_rt.SessionBusyError as e:
        errors.append(e)
    th.join()
    assert errors, "the second thread got in"
    assert s.n_past == len(ids)


def test_python_threads_keep_running_during_generation(big_model):
    s = guanaco_rt.Session(big_model, n_ctx=1024, n_threads=1)
    ids = [1] + [5 + i % 900 for i in range(300)]
    count, stop = [0], threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1
    th = threading.Thread(target=spin)
    th.start()
    t0 = time.perf_counter()
    r = s.generate(ids, max_new_tokens=8, temperature=0.8)
    dt = time.perf_counter() - t0
    assert r.timings.prompt_tokens == len(ids)
    stop.set()
    th.join()
    assert dt > 0.2
    assert count[0] > 10000 * dt   # a pure-Python loop got the GIL throughout


def test_decode_loop_runs_in_c_whatever_the_length(model):
    """generate() without a callback enters C once for the whole decode loop: the Python
    calls it makes (counted by a profiler hook) do not grow with the tokens generated, so
    sampling, text and stop checks hold no GIL per token."""
    def python_calls(n):
        s = guanaco_rt.Session(model, n_ctx=128, seed=1)
        calls = [0]

        def prof(frame, event, arg):
            # calls into or from the package's Python code (not GC callbacks, plugins, ...)
            if event in ("call", "c_call") and PKG_DIR in frame.f_code.co_filename:
                calls[0] += 1
        gc.disable()
        sys.setprofile(prof)
        try:
            r = s.generate(PROMPT, max_new_tokens=n, temperature=0.9, top_k=0, top_p=0.9, min_p=0.01,
                           typical_p=0.95, repetition_penalty=1.2, frequency_penalty=0.1, n_probs=2,
                           stop=["zzzz"], logit_bias={2: float("-inf")})
        finally:
            sys.setprofile(None)
            gc.enable()
        assert len(r.tokens) == n and r.finish_reason == "length"
        return calls[0]
    assert python_calls(60) == python_calls(3) > 0


def test_cancel_long_prompt_returns_promptly_and_session_continues(big_model):
    s = guanaco_rt.Session(big_model, n_ctx=2048, n_batch=64)
    ids = [1] + [5 + i % 900 for i in range(1500)]
    r, latency = cancel_midway(s, lambda: s.generate(ids, max_new_tokens=5, temperature=0), 0.3)
    assert r.finish_reason == "cancelled"
    assert latency < 1.0
    assert s.n_past % 64 == 0 and s.n_past < len(ids)   # complete batches only
    # the session continues correctly: the same as a fresh one
    short = ids[:100]
    a = s.generate(short, max_new_tokens=4, temperature=0, n_probs=3)
    b = guanaco_rt.Session(big_model, n_ctx=2048, n_batch=64).generate(short, max_new_tokens=4, temperature=0,
                                                                       n_probs=3)
    assert a.tokens == b.tokens and a.logprobs == b.logprobs


def test_cancel_during_decoding_keeps_a_consistent_cache(big_model):
    # generate() without a callback is one call into C: cancel() must still reach it
    s = guanaco_rt.Session(big_model, n_ctx=2048, seed=5)
    prompt = [1, 17, 42, 99]
    r, latency = cancel_midway(
        s, lambda: s.generate(prompt, max_new_tokens=2000, temperature=1.0, logit_bias={2: float("-inf")}), 0.4)
    assert r.finish_reason == "cancelled" and 0 < len(r.tokens) < 2000 and latency < 0.5
    # the cache holds the prompt and the generated tokens that were evaluated, nothing else
    assert s.tokens[:4] == prompt and s.tokens[4:] == r.tokens[:s.n_past - 4]
    assert s.n_past - 4 in (len(r.tokens), len(r.tokens) - 1)   # the last one may be unevaluated
    ref = fresh_logits(big_model, s.tokens)
    if s._state.logits() is not None:
        np.testing.assert_array_equal(s._state.logits(), ref)
    nxt = s.eval([42])
    np.testing.assert_array_equal(nxt, guanaco_rt.Session(big_model, n_ctx=2048).eval(s.tokens))


# ---- sampler -----------------------------------------------------------------------------
def test_repetition_penalty_semantics():
    s = Sampler(0)
    logits = np.array([2.0, -2.0, 1.0, 0.5], np.float32)
    p = SamplingParams(repetition_penalty=2.0, repeat_last_n=2)
    x = penalize(s, logits, [0, 3, 1], p)            # only the last 2: ids 3 and 1
    np.testing.assert_allclose(x, [2.0, -4.0, 1.0, 0.25])
    p = SamplingParams(repetition_penalty=1.0, frequency_penalty=0.5, presence_penalty=1.0, repeat_last_n=10)
    x = penalize(s, logits, [2, 2, 0], p)
    np.testing.assert_allclose(x, [2.0 - 1.5, -2.0, 1.0 - 2.0, 0.5])


@given(seed=st.integers(0, 1000), data=st.data())
@settings(max_examples=40)
def test_sampler_filters(seed, data):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(50).astype(np.float32) * 3
    order = np.argsort(-logits, kind="stable")
    s = Sampler(seed)
    k = data.draw(st.integers(1, 10))
    t, _ = sample(s, logits, [], SamplingParams(temperature=1.0, top_k=k, top_p=1.0, repetition_penalty=1.0))
    assert t in order[:k]
    t, _ = sample(s, logits, [], SamplingParams(temperature=1.0, top_k=1, repetition_penalty=1.0))
    assert t == order[0]
    t, _ = sample(s, logits, [], SamplingParams(temperature=1.0, top_k=0, top_p=1e-6, repetition_penalty=1.0))
    assert t == order[0]
    t, _ = sample(s, logits, [], SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.9999,
                                               repetition_penalty=1.0))
    assert t == order[0]
    banned = int(order[0])
    t, _ = sample(s, logits, [], SamplingParams(temperature=0.0, logit_bias={banned: float("-inf")}))
    assert t == order[1]


PARAMS = st.builds(
    SamplingParams,
    temperature=st.sampled_from([0.0, 0.3, 0.8, 1.0, 1.7]),
    top_k=st.sampled_from([0, 1, 3, 10, 40, 100]),
    top_p=st.sampled_from([0.05, 0.5, 0.9, 0.95, 1.0]),
    min_p=st.sampled_from([0.0, 0.01, 0.1, 0.5]),
    typical_p=st.sampled_from([0.2, 0.7, 0.95, 1.0]),
    repetition_penalty=st.sampled_from([1.0, 1.1, 1.5, 0.8]),
    repeat_last_n=st.sampled_from([0, 1, 4, 64]),
    frequency_penalty=st.sampled_from([0.0, 0.2]),
    presence_penalty=st.sampled_from([0.0, 0.5]),
    logit_bias=st.dictionaries(st.integers(0, 2999), st.sampled_from([-1.5, 2.0, float("-inf")]), max_size=4),
    n_probs=st.sampled_from([0, 1, 5]),
)


@given(p=PARAMS, seed=st.integers(0, 2**32), n=st.sampled_from([1, 2, 7, 60, 300, 3000]), ties=st.booleans(),
       hist=st.lists(st.integers(0, 2999), max_size=12))
@settings(max_examples=300)
# two penalized logits one ulp apart (-3.5000000000000004, -3.5) whose log-probabilities round
# equal: the top-n order is the logits' (a new user's fresh clone found it)
@example(p=SamplingParams(temperature=0.0, top_k=0, top_p=0.05, min_p=0.0, typical_p=0.2, repetition_penalty=0.8,
                          repeat_last_n=4, frequency_penalty=0.2, presence_penalty=0.5,
                          logit_bias={0: -1.5, 6: -1.5, 4: -1.5}, n_probs=5),
         seed=1297529, n=7, ties=True, hist=[0, 3, 3, 3])
def test_sampler_equals_numpy_reference(p, seed, n, ties, hist):
    """The C chain (penalties, filters, draw, top log-probs) == the NumPy chain in
    tests/reference.py, fed the same logits, history and RNG stream."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(n).astype(np.float32) * 4
    if ties:
        logits = np.round(logits)                     # many equal logits: the tie order matters
    hist = [h % n for h in hist]
    p.logit_bias = {t % n: v for t, v in p.logit_bias.items()}
    x = sample_penalize(logits, hist, p)
    np.testing.assert_allclose(penalize(Sampler(0), logits, hist, p), x, rtol=1e-15, atol=0)
    if not np.isfinite(x).any():
        # every token banned: nothing to sample; the chain says so with -1 (the decode loop
        # then ends with finish_reason "no_candidates")
        assert sample(Sampler(seed), logits, hist, p)[0] == -1
        return
    s = Sampler(seed)
    want_tok, want_top, cand, probs = sample_chain(logits, hist, p, np.random.Generator(np.random.PCG64(seed)))
    tok, top = sample(s, logits, hist, p)
    if cand is not None:
        # the draw compares one uniform with the cdf: only an exact edge could differ by rounding
        u = np.random.Generator(np.random.PCG64(seed)).random()
        cdf = np.cumsum(probs) / np.cumsum(probs)[-1]
        if np.abs(cdf - u).min() < 1e-12:
            return
    assert tok == want_tok
    if p.n_probs:
        assert [i for i, _ in top] == [i for i, _ in want_top]
        np.testing.assert_allclose([v for _, v in top], [v for _, v in want_top], rtol=1e-12, atol=1e-12)
    else:
        assert top is None
    # one double drawn per sampled (non-greedy, non-degenerate) token, as Generator.choice does
    ref = np.random.Generator(np.random.PCG64(seed))
    if cand is not None:
        ref.random()
    assert s.state == ref.bit_generator.state


def test_decode_loop_objects_check_their_inputs(model):
    tok = model.tokenizer
    blob, offs, normal = tok.byte_table
    with pytest.raises(ValueError, match="vocab table"):
        TextStage((blob[:10], offs, normal))                 # offsets run past the blob
    with pytest.raises(ValueError, match="outside"):
        TextStage(tok.byte_table).push_token(model.n_vocab)
    s = guanaco_rt.Session(model, n_ctx=16)
    core = s.sampler.core(SamplingParams(), model.n_vocab)
    text = TextStage(tok.byte_table)
    with pytest.raises(ValueError, match="no logits to sample from"):
        Decoder(s._state, core, text, 4, 2, False, 1)       # nothing evaluated yet
    s.eval([1, 5])
    with pytest.raises(ValueError, match="n_keep"):
        Decoder(s._state, core, text, 4, 2, False, -1)
    with pytest.raises(ValueError, match="disagree on n_vocab"):
        Decoder(s._state, s.sampler.core(SamplingParams(), 7), text, 4, 2, False, 1)


def test_sampler_refuses_bad_logit_bias():
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={3: float("inf")})
    with pytest.raises(ValueError, match="logit_bias token id 700"):
        sample(Sampler(0), np.zeros(600, np.float32), [], SamplingParams(logit_bias={700: 1.0}))


# ---- a state machine over the Session's operations ----------------------------------------
class SessionMachine(RuleBasedStateMachine):
    """Random sequences of eval / generate / save+load / fork / reset: the session's
    logits always equal a fresh evaluation of its tokens, and n_past stays in range."""

    model = None

    def __init__(self):
        super().__init__()
        self.s = guanaco_rt.Session(self.model, n_ctx=48, seed=0, context_policy="shift")

    @rule(ids=st.lists(st.integers(3, 599), min_size=1, max_size=6))
    def eval(self, ids):
        if self.s.n_past + len(ids) <= self.s.n_ctx:
            self.s.eval(ids)
        else:
            with pytest.raises(guanaco_rt.ContextFullError):
                self.s.eval(ids)

    @rule(n=st.integers(1, 6), temp=st.sampled_from([0.0, 0.8]))
    def generate(self, n, temp):
        prompt = self.s.tokens[:] if self.s.tokens and self.s.tokens[0] == 1 else [1]
        self.s.generate(prompt, max_new_tokens=n, temperature=temp)

    @rule()
    def save_load(self):
        blob = self.s.save_state()
        s2 = guanaco_rt.Session(self.model, n_ctx=48, context_policy="shift")
        s2.load_state(blob)
        self.s = s2

    @rule()
    def fork(self):
        self.s = self.s.fork()

    @rule()
    def reset(self):
        self.s.reset()

    @invariant()
    def in_range(self):
        assert 0 <= self.s.n_past <= self.s.n_ctx

    @precondition(lambda self: self.s.n_past > 0 and self.s._state.logits() is not None)
    @invariant()
    def logits_match_fresh(self):
        # one layer: after a context shift the cache differs from a fresh evaluation by
        # rounding only (and rounding can flip an 8-bit activation step: ~1%)
        ref = fresh_logits(self.model, self.s.tokens)
        err = np.abs(self.s._state.logits() - ref).max() / np.abs(ref).max()
        assert err < 0.03


def test_session_state_machine(one_layer):
    SessionMachine.model = one_layer
    SessionMachine.TestCase.settings = settings(max_examples=15, stateful_step_count=12, deadline=None)
    SessionMachine.TestCase().runTest()
