"""Value tests of every kernel against tests/reference.py and gguf.quants, for each ISA."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from guanaco_rt import ggml_types as T
from guanaco_rt._kernels import _quants as Q
from guanaco_rt._kernels import _twins as E

import reference as R
from strategies import ALL_WEIGHT_TYPES, QUANT_WEIGHT_TYPES, blocks, vectors

ACT_TYPES = [T.F32, T.Q8_1, T.Q8_K]


def test_block_layouts_match_python_table():
    # the C structs (ggml_blocks.h) and the Python dtypes (ggml_types) describe the same bytes
    layouts = Q.block_layouts()
    assert set(layouts) == {t.name for t in T.GGML_TYPES.values() if t.blck_size > 1}
    for name, (size, offsets) in layouts.items():
        t = T.TYPE_BY_NAME[name]
        assert size == t.type_size, name
        assert offsets == {f: t.offset(f) for f, _, _ in t.fields}, name


def test_vec_dot_types_match_python_table():
    for t in ALL_WEIGHT_TYPES:
        assert Q.vec_dot_type(t) == T.GGML_TYPES[t].vec_dot_type


@pytest.mark.parametrize("ttype", ALL_WEIGHT_TYPES, ids=lambda t: T.GGML_TYPES[t].name)
@given(data=st.data())
def test_dequantize_matches_gguf(ttype, data):
    raw, n = data.draw(blocks(ttype, any_finite_scale=True))
    ours = Q.dequantize(ttype, np.frombuffer(raw, np.uint8), n)
    ref = R.dequantize(ttype, raw, n)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("vt", [T.Q8_1, T.Q8_K], ids=lambda t: T.GGML_TYPES[t].name)
@given(data=st.data())
def test_quantize_activation_matches_reference_exactly(vt, data):
    nb = data.draw(st.integers(1, 4))
    x = data.draw(vectors(nb * T.GGML_TYPES[vt].blck_size))
    ours = Q.quantize(vt, x).tobytes()
    assert ours == R.pack_activation(vt, x)
    # and dequantizing it gives the reference round trip
    back = Q.dequantize(vt, np.frombuffer(ours, np.uint8), x.size)
    np.testing.assert_allclose(back, R.activation_roundtrip(vt, x), rtol=1e-6, atol=0)


def test_q8_K_can_hold_minus_128_and_q8_1_cannot():
    x = np.zeros(256, np.float32)
    x[3], x[4] = 2.0, -1.0          # the signed extreme is positive -> it maps to -128
    q = Q.quantize(T.Q8_K, x)
    qs = q[4:4 + 256].view(np.int8)
    assert qs[3] == -128
    x0 = np.full(32, -5.0, np.float32)
    q0 = Q.quantize(T.Q8_1, x0)[T.GGML_TYPES[T.Q8_1].offset("qs"):].view(np.int8)
    assert q0.min() == -127


def _term_bound(ttype, raw):
    """A bound on one weight's separately rounded terms (d*sc*q and m or dmin*m), per unit of
    activation, scaled so that 1e-6 of it, under the tests' 2e-6 relative tolerance, is about
    nine float32 roundings (2^-24 each) of the largest such term: where the weights are near zero
        the kernel's terms cancel, and |w * a| says nothing about their roundings. (It was 64*64,
    below one rounding: hypothesis found a Q5_1 matrix whose column came out -2^-25, not 0.)"""
    t = T.GGML_TYPES[ttype]
    if not t.scale_fields:
        return 0.0
    blocks_ = np.frombuffer(bytes(raw), t.dtype)
    biggest = max(float(np.abs(blocks_[f].astype(np.float64)).max()) for f in t.scale_fields)
    return biggest * 64 * 64 * 64        # 1e-6 * 2e-6 * 64**3 = 8.8 * 2**-24


def _exact_dot(ttype, raw, n, act_bytes):
    vt = T.GGML_TYPES[ttype].vec_dot_type
    w = R.dequantize(ttype, raw, n).astype(np.float64)
    if vt == T.F32:
        a = np.frombuffer(act_bytes, np.float32).astype(np.float64)
    else:
        a = R.dequantize_activation(vt, act_bytes, n)
    return float(np.dot(w, a)), float(np.abs(w * a).sum()) + 1e-6 * _term_bound(ttype, raw) * np.abs(a).sum()


@pytest.mark.parametrize("ttype", ALL_WEIGHT_TYPES, ids=lambda t: T.GGML_TYPES[t].name)
@given(data=st.data())
def test_vec_dot_matches_exact_arithmetic(K, ttype, data):
    raw, n = data.draw(blocks(ttype))
    x = data.draw(vectors(n))
    vt = T.GGML_TYPES[ttype].vec_dot_type
    act = Q.quantize(vt, x)
    ours = E.vec_dot(K, ttype, np.frombuffer(raw, np.uint8), act, n)
    exact, mag = _exact_dot(ttype, raw, n, act.tobytes())
    assert abs(ours - exact) <= 2e-6 * mag + 1e-30, (ours, exact, mag)


@pytest.mark.parametrize("ttype", QUANT_WEIGHT_TYPES + [T.F16, T.BF16, T.F32], ids=lambda t: T.GGML_TYPES[t].name)
@given(data=st.data())
def test_matmul_matches_reference(K, ttype, data):
    t = T.GGML_TYPES[ttype]
    ne0 = t.blck_size * data.draw(st.integers(1, 3)) if t.blck_size > 1 else 32 * data.draw(st.integers(1, 3))
    ne1 = data.draw(st.integers(1, 9))
    n_tok = data.draw(st.integers(1, 5))
    raw, _ = data.draw(blocks(ttype, n_blocks=ne0 * ne1 // t.blck_size))
    x = np.stack([data.draw(vectors(ne0, scale=1.0)) for _ in range(n_tok)])
    nth = data.draw(st.sampled_from([1, 2]))
    ours = E.matmul_twin(K, ttype, np.frombuffer(raw, np.uint8), ne0, ne1, x, nth)
    W = R.dequantize(ttype, raw, ne0 * ne1).astype(np.float64).reshape(ne1, ne0)
    xa = np.stack([R.activation_roundtrip(t.vec_dot_type, row) for row in x])
    ref = xa @ W.T
    mag = np.abs(xa) @ np.abs(W).T + 1e-6 * _term_bound(ttype, raw) * np.abs(xa).sum(axis=1, keepdims=True)
    assert np.all(np.abs(ours - ref) <= 2e-6 * mag + 1e-30)


@given(data=st.data())
def test_rmsnorm(data):
    n = data.draw(st.integers(1, 300))
    x = data.draw(vectors(n))
    w = data.draw(vectors(n, scale=1.0))
    eps = data.draw(st.sampled_from([1e-6, 1e-5]))
    np.testing.assert_allclose(E.rmsnorm_twin(x, w, eps), R.rmsnorm(x, w, eps), rtol=2e-5, atol=1e-6)


@given(data=st.data())
def test_rope_mode0(data):
    n_head = data.draw(st.integers(1, 4))
    hd = 2 * data.draw(st.integers(1, 16))
    n_rot = 2 * data.draw(st.integers(1, hd // 2))
    n_tok = data.draw(st.integers(1, 4))
    n_past = data.draw(st.integers(0, 3000))
    x = np.stack([data.draw(vectors(n_head * hd, scale=1.0)) for _ in range(n_tok)])
    ours = x.copy()
    E.rope_twin(ours, n_head, n_rot, n_past)
    ref = R.rope(x, n_head, n_rot, np.arange(n_past, n_past + n_tok))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    # dims past n_rot in each head are untouched
    keep = np.zeros(hd, bool)
    keep[n_rot:] = True
    np.testing.assert_array_equal(ours.reshape(n_tok, n_head, hd)[..., keep], x.reshape(n_tok, n_head, hd)[..., keep])


@given(data=st.data())
def test_softmax(data):
    x = data.draw(vectors(data.draw(st.integers(1, 200)), scale=data.draw(st.sampled_from([1.0, 50.0]))))
    ours = x.copy()
    E.softmax_twin(ours)
    np.testing.assert_allclose(ours, R.softmax(x), rtol=1e-5, atol=1e-7)


@given(data=st.data())
def test_silu_mul(data):
    n = data.draw(st.integers(1, 200))
    a, b = data.draw(vectors(n, scale=5.0)), data.draw(vectors(n))
    ours = a.copy()
    E.silu_mul_twin(ours, b)
    np.testing.assert_allclose(ours, R.silu(a) * b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16])
@given(data=st.data())
def test_attention_causal(K, kv_dtype, data):
    n_head = data.draw(st.integers(1, 4))
    # every path of the AVX2 loops: 64 lanes in registers, then 8 at a time, then a scalar tail
    hd = data.draw(st.sampled_from([2, 8, 12, 32, 64, 72, 128]))
    n_embd = n_head * hd
    n_past = data.draw(st.integers(0, 20))
    n_tok = data.draw(st.integers(1, 6))
    n_ctx = n_past + n_tok + data.draw(st.integers(0, 5))
    q = np.stack([data.draw(vectors(n_embd, scale=1.0)) for _ in range(n_tok)])
    kc = np.zeros((n_ctx, n_embd), kv_dtype)
    vc = np.zeros((n_ctx, n_embd), kv_dtype)
    for p in range(n_past + n_tok):
        kc[p] = data.draw(vectors(n_embd, scale=1.0))
        vc[p] = data.draw(vectors(n_embd, scale=1.0))
    # garbage beyond the causal window must not leak in
    kc[n_past + n_tok:] = 1e3
    vc[n_past + n_tok:] = 1e3
    nth = data.draw(st.sampled_from([1, 2]))
    ours = E.attention_twin(K, q, kc, vc, n_past, n_head, nth)
    ref = R.attention(q.astype(np.float64), kc.astype(np.float64), vc.astype(np.float64), n_head, n_past)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@given(x=st.lists(st.floats(-70000, 70000, width=32), min_size=1, max_size=64))
def test_fp16_conversion_matches_numpy(x):
    a = np.array(x, np.float32)
    with np.errstate(over="ignore"):        # values past 65504 become inf on both sides, on purpose
        want = a.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(Q.fp16_from_f32(a), want)


@pytest.mark.parametrize("ttype", QUANT_WEIGHT_TYPES, ids=lambda t: T.GGML_TYPES[t].name)
@given(data=st.data())
def test_matmul_batch_equals_rows_one_at_a_time(K, ttype, data):
    # the multi-row (x4) kernels must give the same bits as the one-row kernel
    t = T.GGML_TYPES[ttype]
    ne0, ne1 = t.blck_size * data.draw(st.integers(1, 3)), data.draw(st.integers(1, 5))
    n_tok = data.draw(st.integers(4, 9))
    raw, _ = data.draw(blocks(ttype, n_blocks=ne0 * ne1 // t.blck_size))
    w = np.frombuffer(raw, np.uint8)
    x = np.stack([data.draw(vectors(ne0, scale=1.0)) for _ in range(n_tok)])
    batch = E.matmul_twin(K, ttype, w, ne0, ne1, x, 1)
    single = np.concatenate([E.matmul_twin(K, ttype, w, ne0, ne1, x[i:i + 1], 1) for i in range(n_tok)])
    np.testing.assert_array_equal(batch, single)
