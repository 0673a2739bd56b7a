"""The KV cache of the sliding-window layers (Gemma 3's local layers): each keeps rows for its
window, a margin for rewinds and a batch (State.kv_stats), the global layers every position.
Every path must give the logits of a full cache (Session(swa_full=True), which keeps every
position everywhere and masks, as before) bit for bit: prompts in any batch size, chunks that
straddle the window's edge, the decode loop, rewinds (prefix reuse, truncate, reset), context
shift, save/load/fork. A rewind or shift that needs positions the rows no longer hold refills:
the sequence is evaluated again, and the logits are still a full evaluation's.

The file: 7 layers (0-4 and 6 local, 5 global) with a window of 4, so that a context of 48
slides the local rows many times (11 rows each with n_batch <= 4)."""
import json
import struct
import tracemalloc

import numpy as np
import pytest
from test_gguf_families import write_family_gguf

import guanaco_rt
from guanaco_rt import ggml_types as T
from guanaco_rt.errors import StateError

from reference_families import FamilyReference

W = 4
N_CTX = 48
LAYERS = dict(n_layer=7, head_dim=64, n_swa=W)
IDS = [1] + np.random.default_rng(7).integers(3, 290, N_CTX - 1).tolist()


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """Q8_0 matrices: the 4-token and 8-row kernels run the prompts"""
    path = write_family_gguf(tmp_path_factory.mktemp("swa") / "g.gguf", "gemma3", wtype=T.Q8_0, **LAYERS)
    return guanaco_rt.Model(path, n_threads=2)


def pair(m, **kw):
    """(a session with sliding-window rows, one with a full cache), the same settings"""
    kw = {"n_ctx": N_CTX, **kw}
    return guanaco_rt.Session(m, **kw), guanaco_rt.Session(m, swa_full=True, **kw)


def stats(s):
    return s._state.kv_stats()


def fresh(m, tokens):
    return guanaco_rt.Session(m, n_ctx=N_CTX, swa_full=True).eval(tokens)


# ---- the rows ---------------------------------------------------------------------------------
def test_local_layers_keep_their_window_a_margin_and_a_batch(gemma):
    s, f = pair(gemma, n_batch=4)
    Ekv = s._state.n_embd_kv
    rows = 2 * W - 1 + W                       # the window behind a token, W for rewinds, a batch
    assert stats(s)["window"] == [W] * 5 + [0] + [W]
    assert stats(s)["rows"] == [rows] * 5 + [N_CTX] + [rows]
    assert stats(s)["bytes"] == 2 * (6 * rows + N_CTX) * Ekv * 4
    assert stats(f)["rows"] == [N_CTX] * 7 and stats(f)["bytes"] == 2 * 7 * N_CTX * Ekv * 4
    # no fewer rows than n_ctx when those would not save any
    assert stats(guanaco_rt.Session(gemma, n_ctx=2 * W - 1 + 16, n_batch=16))["rows"] == [2 * W - 1 + 16] * 7


def test_a_long_context_allocates_the_local_layers_a_window_not_n_ctx(gemma):
    """Measured by what NumPy allocates (no API of the cache's own): at n_ctx 4096 the 6 local
    layers of 7 take 11 rows instead of 4096, about 1/7 of the full cache's bytes"""
    Ekv = gemma.hparams.n_head_kv * gemma.hparams.head_dim
    full = 2 * 7 * 4096 * Ekv * 4
    tracemalloc.start()
    try:
        s = guanaco_rt.Session(gemma, n_ctx=4096, n_batch=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.25 * full, f"{peak} bytes for a session, the full cache is {full}"
    s.eval(IDS[:40])
    np.testing.assert_array_equal(s.eval([5]), fresh(gemma, IDS[:40] + [5]))


# ---- every path gives the full cache's logits, bit for bit ------------------------------------------
@pytest.mark.parametrize("n_batch", [1, 3, 4, 8, 16])
def test_prompt_logits_are_the_full_caches(gemma, n_batch):
    s, f = pair(gemma, n_batch=n_batch)
    got = s.eval(IDS, all_logits=True)
    assert stats(s)["swa_first"] > N_CTX - 2 * W - n_batch      # the rows slid
    np.testing.assert_array_equal(got, f.eval(IDS, all_logits=True))


@pytest.mark.parametrize("kv_f16", [False, True])
def test_chunks_straddling_the_window_edge(gemma, kv_f16):
    s, f = pair(gemma, n_batch=8, kv_f16=kv_f16)
    at = 0
    for n in [5, 3, 8, 1, 4, 7, 2, 8, 6, 4]:
        chunk = IDS[at:at + n]
        np.testing.assert_array_equal(s.eval(chunk, all_logits=True), f.eval(chunk, all_logits=True))
        at += n
    assert at == N_CTX and stats(s)["refills"] == 0


def test_long_context_matches_the_float_reference(tmp_path):
    """F32 weights: a context 12x the window against the float64 NumPy forward (which masks
    with the window over the whole sequence)"""
    path = write_family_gguf(tmp_path / "f32.gguf", "gemma3", **LAYERS)
    m = guanaco_rt.Model(path, n_threads=1)
    s = guanaco_rt.Session(m, n_ctx=N_CTX, n_batch=5)
    ours = s.eval(IDS, all_logits=True)
    ref = FamilyReference(path).forward(IDS)
    assert stats(s)["rows"][0] < N_CTX and stats(s)["swa_first"] > 0
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-4


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_decode_loop(gemma, temperature):
    s, f = pair(gemma, n_batch=4, seed=3)
    a = s.generate(IDS[:6], max_new_tokens=40, temperature=temperature)
    b = f.generate(IDS[:6], max_new_tokens=40, temperature=temperature)
    assert a.tokens == b.tokens and len(a.tokens) > 30
    np.testing.assert_array_equal(s._state.logits(), f._state.logits())
    assert stats(s)["swa_first"] > 0


# ---- rewinds ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("back", [1, 2, 3, W, W + 1, 12, 30, 40])
def test_truncate_then_evaluate(gemma, back):
    """A rewind of up to W positions always finds the window in the rows; a longer one may not,
    and the next evaluation refills"""
    s, f = pair(gemma, n_batch=4)
    for x in (s, f):
        x.eval(IDS[:40])
        x._state.truncate(40 - back)
    tail = IDS[40:44]
    np.testing.assert_array_equal(s.eval(tail, all_logits=True), f.eval(tail, all_logits=True))
    if back <= W:
        assert stats(s)["refills"] == 0
    if 12 <= back < 40:                      # (none for back 40: nothing to evaluate again)
        assert stats(s)["refills"] == 1
    assert s.tokens == f.tokens == IDS[:40 - back] + tail


def test_prefix_reuse_of_generate(gemma):
    """generate() on a prompt that shares a prefix truncates to it (Session._prefill)"""
    s, f = pair(gemma, n_batch=4)
    for prompt in (IDS[:30], IDS[:28] + [9, 9], IDS[:10] + [7], IDS[:10] + [7, 8, 9], IDS[:45]):
        a = s.generate(prompt, max_new_tokens=2, temperature=0)
        b = f.generate(prompt, max_new_tokens=2, temperature=0)
        assert a.tokens == b.tokens and a.timings.reused_tokens == b.timings.reused_tokens
        np.testing.assert_array_equal(s._state.logits(), f._state.logits())
    assert stats(s)["refills"] >= 1          # IDS[:10] + [7] after 30 tokens


def test_reset(gemma):
    s = guanaco_rt.Session(gemma, n_ctx=N_CTX, n_batch=4)
    s.eval(IDS[:40])
    s.reset()
    np.testing.assert_array_equal(s.eval(IDS[:20]), fresh(gemma, IDS[:20]))
    assert stats(s)["refills"] == 0          # nothing to evaluate again


def test_a_cancelled_refill_leaves_a_consistent_prefix(gemma):
    s = guanaco_rt.Session(gemma, n_ctx=N_CTX, n_batch=4)
    s.eval(IDS[:40])
    s._state.truncate(20)
    s._state.cancel(True)
    assert s._state.prefill(np.array(IDS[20:22], np.int32)) == 0
    s._state.cancel(False)
    assert s.n_past < 20 and s.tokens == IDS[:s.n_past]
    np.testing.assert_array_equal(s.eval(IDS[s.n_past:30]), fresh(gemma, IDS[:30]))


# ---- context shift ----------------------------------------------------------------------------------
def test_context_shift_in_the_decode_loop(gemma):
    """n_keep 1: the next window is always in the rows, and the shifted keys are the full cache's"""
    s, f = pair(gemma, n_batch=4, context_policy="shift", seed=1)
    a = s.generate(IDS[:10], max_new_tokens=100, temperature=1.0)
    b = f.generate(IDS[:10], max_new_tokens=100, temperature=1.0)
    assert a.tokens == b.tokens and len(a.tokens) == 100
    np.testing.assert_array_equal(s._state.logits(), f._state.logits())
    assert stats(s)["refills"] == 0


@pytest.mark.parametrize("kv_f16", [False, True])
@pytest.mark.parametrize("n_past,n_keep,n_discard", [
    (40, 1, 10), (40, 1, 30), (40, 30, 6), (20, 15, 3), (44, 10, 30), (40, 20, 18), (40, 38, 1), (40, 35, 4)])
def test_shift(gemma, kv_f16, n_past, n_keep, n_discard):
    """The full cache's logits when the rows hold the next window after the shift; when it
    reaches kept positions the rows no longer hold, a refill: the logits of the shifted
    sequence evaluated afresh (a full cache would attend to keys shifted from another context)"""
    s, f = pair(gemma, n_batch=4, kv_f16=kv_f16)
    for x in (s, f):
        x.eval(IDS[:n_past])
        x._state.shift(n_keep, n_discard)
    assert s.tokens == f.tokens == IDS[:n_keep] + IDS[n_keep + n_discard:n_past]
    got = s.eval([IDS[n_past]])
    if stats(s)["refills"]:
        assert n_keep > s.n_past - W - 1     # the window reached the kept positions
        np.testing.assert_array_equal(got, guanaco_rt.Session(gemma, n_ctx=N_CTX, kv_f16=kv_f16).eval(s.tokens))
    else:
        np.testing.assert_array_equal(got, f.eval([IDS[n_past]]))


def test_a_refill_in_the_decode_loop(gemma):
    """A shift keeps the logits valid, so generate() samples its first token from them and the
    decode loop evaluates it: the refill then runs there (decode_one)"""
    s = guanaco_rt.Session(gemma, n_ctx=N_CTX, n_batch=4)
    before = s.eval(IDS[:40])
    s._state.shift(20, 18)
    r = s.generate(s.tokens, max_new_tokens=2, temperature=0)
    assert r.timings.prompt_tokens == 0 and r.tokens[0] == int(np.argmax(before))
    assert stats(s)["refills"] == 1 and s.tokens == IDS[:20] + IDS[38:40] + r.tokens[:1]
    np.testing.assert_array_equal(s._state.logits(), fresh(gemma, s.tokens))
    assert r.tokens[1] == int(np.argmax(s._state.logits()))


def test_the_shift_cases_both_happen(gemma):
    refilled = []
    for n_past, n_keep, n_discard in [(40, 1, 10), (40, 20, 18), (20, 15, 3), (40, 38, 1)]:
        s = guanaco_rt.Session(gemma, n_ctx=N_CTX, n_batch=4)
        s.eval(IDS[:n_past])
        s._state.shift(n_keep, n_discard)
        s.eval([3])
        refilled.append(stats(s)["refills"])
    assert refilled == [0, 1, 0, 0]


# ---- save / load / fork ------------------------------------------------------------------------------
def _continue(s):
    return s.generate(s.tokens + [42], max_new_tokens=6, temperature=0.9, top_k=20).tokens


def _with_meta(blob, edit, version=None):
    mlen = struct.unpack_from("<Q", blob, 40)[0]
    meta = edit(json.loads(blob[48:48 + mlen]))
    new = json.dumps(meta).encode()
    head = blob[:4] + (struct.pack("<I", version) if version else blob[4:8]) + blob[8:40]
    return head + struct.pack("<Q", len(new)) + new + blob[48 + mlen:]


@pytest.mark.parametrize("kv_f16", [False, True])
def test_save_load_and_fork_between_kinds_of_cache(gemma, kv_f16):
    s, f = pair(gemma, n_batch=4, seed=5, kv_f16=kv_f16)
    for x in (s, f):
        x.generate(IDS[:6], max_new_tokens=30, temperature=0.9)
    assert s.tokens == f.tokens
    blob_s, blob_f = s.save_state(), f.save_state()
    assert len(blob_s) < len(blob_f) * 0.5
    want = _continue(f.fork())
    # a blob of the version before kv_rows: every layer's n_past rows
    blob_v2 = _with_meta(blob_f, lambda m: {k: v for k, v in m.items() if k != "kv_rows"}, version=2)
    for blob in (blob_s, blob_f, blob_v2):
        for swa_full in (False, True):
            x = guanaco_rt.Session(gemma, n_ctx=N_CTX, n_batch=4, kv_f16=kv_f16, swa_full=swa_full)
            x.load_state(blob)
            assert _continue(x) == want
            assert stats(x)["refills"] == 0
    assert _continue(s.fork()) == want and _continue(s) == want


def test_save_after_a_deep_rewind_refills_after_load(gemma):
    s = guanaco_rt.Session(gemma, n_ctx=N_CTX, n_batch=4)
    s.eval(IDS[:40])
    s._state.truncate(12)                    # the local rows hold none of the 12 positions
    blob = s.save_state()
    x = guanaco_rt.Session(gemma, n_ctx=N_CTX, n_batch=4)
    x.load_state(blob)
    assert x.tokens == IDS[:12]
    np.testing.assert_array_equal(x.eval(IDS[12:15]), fresh(gemma, IDS[:15]))
    assert stats(x)["refills"] == 1


@pytest.mark.parametrize("edit,match", [
    (lambda m: {k: v for k, v in m.items() if k != "kv_rows"}, "kv_rows"),
    (lambda m: {**m, "kv_rows": "x"}, "kv_rows"),
    (lambda m: {**m, "kv_rows": m["kv_rows"][:-1]}, "kv_rows"),
    (lambda m: {**m, "kv_rows": [m["n_past"] + 1] * 7}, "kv_rows"),
    (lambda m: {**m, "kv_rows": [-1] + m["kv_rows"][1:]}, "kv_rows"),
    (lambda m: {**m, "kv_rows": [True] + m["kv_rows"][1:]}, "kv_rows"),
    (lambda m: {**m, "kv_rows": m["kv_rows"][:5] + [m["kv_rows"][0]] + m["kv_rows"][6:]}, "kv_rows"),
    (lambda m: {**m, "kv_rows": [m["kv_rows"][0] - 1] + m["kv_rows"][1:]}, "kv_rows"),
])
def test_malformed_kv_rows_are_a_state_error(gemma, edit, match):
    s = guanaco_rt.Session(gemma, n_ctx=N_CTX, n_batch=4)
    s.eval(IDS[:40])
    blob = s.save_state()
    assert json.loads(blob[48:48 + struct.unpack_from("<Q", blob, 40)[0]])["kv_rows"][5] == 40
    other = guanaco_rt.Session(gemma, n_ctx=N_CTX, n_batch=4)
    with pytest.raises(StateError, match=match):
        other.load_state(_with_meta(blob, edit))
    assert other.n_past == 0


# ---- the real file --------------------------------------------------------------------------------------
CAPITALS = {"Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "Egypt": "Cairo",
            "Canada": "Ottawa", "Russia": "Moscow", "Greece": "Athens", "Norway": "Oslo", "Peru": "Lima",
            "Kenya": "Nairobi", "Poland": "Warsaw", "Austria": "Vienna", "Portugal": "Lisbon", "Ireland": "Dublin"}


@pytest.fixture(scope="module")
def gemma3_270m():
    from guanaco_rt.demo import cache_dir

    import real_files
    try:
        return real_files.fetch(real_files.GEMMA3_270M, cache_dir())
    except RuntimeError as e:
        pytest.skip(f"the Gemma 3 270M file could not be fetched: {e}")


@pytest.mark.slow
def test_real_gemma3_270m_past_its_window(gemma3_270m):
    """Gemma 3 270M (a 512-token window: 1535 rows a local layer) on a 1693-token few-shot
    prompt: the local rows slide, and the answer and logits are the full cache's"""
    m = guanaco_rt.Model(gemma3_270m, n_threads=2)
    shots = "".join(f"Question: What is the capital of {c}?\nAnswer: {a}\n\n" for _ in range(8)
                    for c, a in CAPITALS.items())
    ids = m.tokenize(shots + "Question: What is the capital of France?\nAnswer:")
    s, f = (guanaco_rt.Session(m, n_ctx=2048, swa_full=full) for full in (False, True))
    a, b = (x.generate(ids, max_new_tokens=2, temperature=0) for x in (s, f))
    assert stats(s)["rows"][0] == 1535 and stats(s)["swa_first"] > 0 and stats(s)["refills"] == 0
    assert a.text.startswith(" Paris") and a.tokens == b.tokens
    np.testing.assert_array_equal(s._state.logits(), f._state.logits())
