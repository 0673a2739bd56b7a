"""The row-interleaved weights (ggml_blocks.h: block_q4_0x8 ... block_q6_Kx8). The engine's
interleaving agrees with the NumPy spec (ggml_types.interleave_r8); the 8-row kernels agree
with the exact-arithmetic reference and give every (row, token) the same bits whether the
tokens come 1 or 4 at a time and on any thread count; a Model interleaves what it says, the
same way with or without mmap, and still shows the file's bytes."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import guanaco_rt
from guanaco_rt import ggml_types as T
from guanaco_rt._kernels import _quants as Q
from guanaco_rt._kernels import _twins as E
from guanaco_rt._kernels.dispatch import available_isas, kernel_set

from helpers import tiny_model
from strategies import blocks, vectors

R8_ISAS = [isa for isa in available_isas() if isa != "generic"]
pytestmark = pytest.mark.skipif(not R8_ISAS, reason="no unit with 8-row kernels runs on this CPU")
R8 = pytest.mark.parametrize("ttype", T.R8_TYPES, ids=lambda t: T.GGML_TYPES[t].name)


@pytest.fixture(scope="module", params=R8_ISAS or ["none"])
def K(request):
    """every unit with 8-row kernels that this CPU runs"""
    return kernel_set(request.param)


def has_r8(K, ttype):
    """skip a (unit, type) the unit has no 8-row kernels for (the avx2 unit's q5_0, q5_1, q3_K)"""
    if K.sources.get((ttype, "dot_r8")) is None:
        pytest.skip(f"{K.isa} has no 8-row kernels for {T.GGML_TYPES[ttype].name}")


# the bytes of a block holding its quant bits, for types whose minimum or offset is a float term
MIN_PART = {T.Q4_0: (2, 18), T.Q4_1: (4, 20), T.Q5_0: (2, 22), T.Q5_1: (4, 24), T.Q2_K: (16, 80),
            T.Q4_K: (16, 144), T.Q5_K: (16, 176)}


def min_part(ttype, w, n):
    """the dequantized weights with their quant bits zeroed: the minimum's (or offset's) term alone"""
    if ttype not in MIN_PART:
        return np.zeros(n)
    lo, hi = MIN_PART[ttype]
    b = w.copy().reshape(-1, T.GGML_TYPES[ttype].type_size)
    b[:, lo:hi] = 0
    return Q.dequantize(ttype, b.reshape(-1), n).astype(np.float64)


def weights(data, ttype, ne0, ne1):
    raw = b"".join(data.draw(blocks(ttype, n_blocks=ne0 // QK(ttype)))[0] for _ in range(ne1))
    return np.frombuffer(raw, np.uint8)


def QK(ttype):
    return T.GGML_TYPES[ttype].blck_size


@R8
@given(data=st.data(), nb=st.integers(1, 5), groups=st.integers(1, 4), nth=st.integers(1, 3))
@settings(max_examples=30)
def test_interleaving_follows_the_spec_and_undoes(ttype, data, nb, groups, nth):
    ne0 = QK(ttype) * nb
    w = weights(data, ttype, ne0, 8 * groups)
    packed = E.repack_twin(ttype, w, ne0, 8 * groups, nth)
    assert packed.tobytes() == T.interleave_r8(w.tobytes(), ttype, ne0, 8 * groups)
    assert T.deinterleave_r8(packed.tobytes(), ttype, ne0, 8 * groups) == w.tobytes()


@R8
@given(data=st.data(), nb=st.integers(1, 6), groups=st.integers(1, 3), n_tok=st.integers(1, 9))
@settings(max_examples=40)
def test_8_row_kernels_match_the_exact_reference(K, ttype, data, nb, groups, n_tok):
    has_r8(K, ttype)
    ne0, ne1 = QK(ttype) * nb, 8 * groups
    w = weights(data, ttype, ne0, ne1)
    x = np.stack([data.draw(vectors(ne0)) for _ in range(n_tok)]).astype(np.float32)
    out = E.matmul_twin(K, ttype, w, ne0, ne1, x, interleave=True)
    # dequantized weights times the dequantized 8-bit activations, in float64
    wf = Q.dequantize(ttype, w, ne0 * ne1).astype(np.float64).reshape(ne1, ne0)
    vt = T.GGML_TYPES[ttype].vec_dot_type
    af = np.stack([Q.dequantize(vt, Q.quantize(vt, r), ne0).astype(np.float64) for r in x])
    exact = af @ wf.T
    # the minimum's term (q4_0's -8d, q4_1's m, q2_K/q4_K/q5_K's dmin * m, ...) goes through the
    # activations' float sums, a float step apart from the quants' term: a weight of 0 can be a sum
    # of two that cancel. Its size: the weights with their quant bits zeroed (MIN_PART)
    wm = np.abs(min_part(ttype, w, ne0 * ne1)).reshape(ne1, ne0)
    bound = 4e-6 * (np.abs(af) @ (np.abs(wf) + wm).T) + 1e-30
    assert (np.abs(out - exact) <= bound).all()


@R8
@given(data=st.data(), nb=st.integers(1, 4), groups=st.integers(1, 5), n_tok=st.integers(2, 11))
@settings(max_examples=25)
def test_8_row_kernels_give_the_same_bits_one_token_or_four_and_on_any_thread_count(K, ttype, data, nb, groups,
                                                                                     n_tok):
    has_r8(K, ttype)
    ne0, ne1 = QK(ttype) * nb, 8 * groups
    w = weights(data, ttype, ne0, ne1)
    x = np.stack([data.draw(vectors(ne0)) for _ in range(n_tok)]).astype(np.float32)
    batch = E.matmul_twin(K, ttype, w, ne0, ne1, x, interleave=True)
    one_by_one = np.concatenate([E.matmul_twin(K, ttype, w, ne0, ne1, x[t:t + 1], interleave=True)
                                 for t in range(n_tok)])
    assert np.array_equal(batch, one_by_one)
    assert np.array_equal(batch, E.matmul_twin(K, ttype, w, ne0, ne1, x, n_threads=3, interleave=True))


def test_only_types_with_8_row_kernels_interleave(K):
    w = np.zeros(8 * 64, np.uint8)
    with pytest.raises(ValueError, match="no 8-row kernels"):     # (F16: no unit interleaves it)
        E.matmul_twin(K, T.F16, w, 32, 8, np.zeros((1, 32), np.float32), interleave=True)
    with pytest.raises(ValueError, match="not an interleavable"):
        E.repack_twin(T.Q4_0, np.zeros(7 * 18, np.uint8), 32, 7)


@pytest.mark.parametrize("ftype", ["q4_0", "q4_1", "q8_0", "q2_K", "q4_K_S", "q5_K_M", "q6_K"])
def test_models_interleave_the_same_with_and_without_mmap(tmp_path_factory, ftype):
    path = tiny_model(tmp_path_factory.mktemp("r8"), ftype)
    tokens = [1, 5, 60, 7, 250, 9, 10]
    mapped = guanaco_rt.Model(path)
    inmem = guanaco_rt.Model(path, mmap=False)
    generic = guanaco_rt.Model(path, isa="generic")
    layers = [t for n, t in mapped.file.tensors.items()      # the output too (300 rows: a tail of 4)
              if n != "tok_embeddings.weight" and t.n_rows > 1 and t.type in T.R8_TYPES]
    expected = sum(t.nbytes for t in layers)
    assert expected
    assert mapped.repacked_bytes == inmem.repacked_bytes == expected
    assert generic.repacked_bytes == 0
    for name in mapped.file.tensors:
        assert np.array_equal(mapped.tensor_data(name), inmem.tensor_data(name)), name
    assert mapped.fingerprint == inmem.fingerprint == generic.fingerprint
    a = guanaco_rt.Session(mapped, n_ctx=32).eval(tokens, all_logits=True)
    b = guanaco_rt.Session(inmem, n_ctx=32).eval(tokens, all_logits=True)
    assert np.array_equal(a, b)
    # a state saved on one loads on the other
    s = guanaco_rt.Session(mapped, n_ctx=32)
    s.eval(tokens)
    t = guanaco_rt.Session(inmem, n_ctx=32)
    t.load_state(s.save_state())
    assert np.array_equal(s.eval([11]), t.eval([11]))
