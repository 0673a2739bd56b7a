"""The i-quants and ternary types (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, TQ1_0, TQ2_0)
end to end: a tiny random-weight GGUF file of each opens, and its logits match the NumPy forward on
gguf-dequantized weights, on every ISA unit this CPU runs. (Their kernels' values are tested in
test_kernels.py and test_isa.py, which cover every weight type of ggml_types; their lattices in
test_iq_grids.py.)"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import guanaco_rt
from guanaco_rt import ggml_types as T
from guanaco_rt._kernels.dispatch import available_isas

from helpers import tiny_gguf
from reference import ReferenceModel
from strategies import blocks, vectors

IQ_TYPES = [T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M, T.TQ1_0, T.TQ2_0]
TOKENS = [1, 5, 60, 7, 250, 9, 10, 11, 42, 99, 3, 17]
by_name = pytest.mark.parametrize("ttype", IQ_TYPES, ids=lambda t: T.GGML_TYPES[t].name)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("iq-models")


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@by_name
def test_tiny_model_matches_the_reference(root, ttype):
    # every matrix and the (tied) embeddings in the type: the engine's lookup dequantizes, its
    # matmuls run the q8_K dot products
    m = guanaco_rt.Model(tiny_gguf(root, ttype))
    assert {t.type for t in m.tensors.values() if len(t.shape) > 1} == {ttype}
    ours = guanaco_rt.Session(m, n_ctx=32).eval(TOKENS, all_logits=True)
    qref = ReferenceModel(m, quantize_acts=True).forward(TOKENS)      # the engine's arithmetic
    ref = ReferenceModel(m).forward(TOKENS)                           # float activations
    scale = np.abs(ref).max()
    e = np.abs(ours - qref).max(axis=1) / scale
    assert e[0] < 3e-6 and np.median(e) < 1e-3, e
    assert np.abs(ours - ref).max() / scale < 0.08
    assert cosine(ours, ref).min() > 0.998


@by_name
def test_every_unit_of_this_cpu_runs_the_file(root, ttype):
    path = tiny_gguf(root, ttype)
    units = [u for u in available_isas() if u != "generic"]
    with guanaco_rt.Session(guanaco_rt.Model(path, isa="generic"), n_ctx=32, n_threads=2) as s:
        base = s.eval(TOKENS, all_logits=True)
    for isa in units:
        with guanaco_rt.Session(guanaco_rt.Model(path, isa=isa), n_ctx=32, n_threads=2) as s:
            out = s.eval(TOKENS, all_logits=True)
        # the vector units take these types' dot products from generic; attention and the
        # activation quantizer are their own: a last-bit difference may move a later q8 rounding
        assert np.abs(out - base).max() <= 0.02 * np.abs(base).max(), isa
        assert cosine(out, base).min() > 0.9999, isa


X86_IQ_TYPES = [T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M, T.TQ1_0, T.TQ2_0]  # isa/x86_iq.h


def own_vec_dot_units(ttype):
    from guanaco_rt._kernels.dispatch import kernel_set
    return [u for u in available_isas() if u != "generic" and kernel_set(u).sources.get((ttype, "vec_dot")) == u]


@pytest.mark.parametrize("ttype", X86_IQ_TYPES, ids=lambda t: T.GGML_TYPES[t].name)
@given(data=st.data())
@settings(max_examples=30, deadline=None)
def test_x86_one_row_kernels_give_the_generic_bits(ttype, data):
    # exact integer sums, then the generic unit's float steps in its order: the same bits, also
    # where the activation holds -128 (q8_K can; a negated q8 byte could not)
    from guanaco_rt._kernels import _quants as Q
    from guanaco_rt._kernels import _twins as E
    from guanaco_rt._kernels.dispatch import kernel_set
    units = own_vec_dot_units(ttype)
    if not units:
        pytest.skip("no x86 unit of this CPU has its own kernel for the type")
    raw, n = data.draw(blocks(ttype))
    x = data.draw(vectors(n))
    if data.draw(st.booleans()):
        x[data.draw(st.integers(0, n - 1))] = 4 * float(np.abs(x).max()) + 1.0   # -> q8 = -128
    act = Q.quantize(T.Q8_K, x)
    w = np.frombuffer(raw, np.uint8)
    want = E.vec_dot(kernel_set("generic"), ttype, w, act, n)
    for u in units:
        assert E.vec_dot(kernel_set(u), ttype, w, act, n) == want, u


@pytest.mark.parametrize("ttype", X86_IQ_TYPES, ids=lambda t: T.GGML_TYPES[t].name)
def test_every_x86_unit_has_its_own_one_row_kernel(ttype):
    # TQ1_0 came from generic until it had a kernel of its own (x86_iq.h)
    from guanaco_rt._kernels.dispatch import kernel_set
    units = [u for u in available_isas() if u in ("avx2", "avx_vnni", "vnni256", "avx512")]
    if not units:
        pytest.skip("this CPU runs no x86 unit")
    for u in units:
        assert kernel_set(u).sources.get((ttype, "vec_dot")) == u, u


@pytest.mark.parametrize("ttype", X86_IQ_TYPES, ids=lambda t: T.GGML_TYPES[t].name)
def test_x86_one_row_kernels_with_minus_128_in_every_block(ttype):
    # each q8_K block's largest value quantizes to -128 (here several per block, at both ends of
    # a 32-weight group and inside one): the kernels multiply it unnegated
    from guanaco_rt._kernels import _quants as Q
    from guanaco_rt._kernels import _twins as E
    from guanaco_rt._kernels.dispatch import kernel_set
    from guanaco_rt.writer import random_tensor_bytes
    units = own_vec_dot_units(ttype)
    if not units:
        pytest.skip("no x86 unit of this CPU has its own kernel for the type")
    rng = np.random.default_rng(int(ttype))
    n = 8 * 256
    for _ in range(4):
        w = np.frombuffer(random_tensor_bytes(ttype, (n,), rng), np.uint8)
        x = rng.standard_normal(n).astype(np.float32)
        for b in range(0, n, 256):
            for j in (0, 31, 77, 160 + rng.integers(0, 96)):
                x[b + j] = 8.0
        act = Q.quantize(T.Q8_K, x)
        qs = np.frombuffer(act, np.uint8).reshape(n // 256, -1)[:, 4:260].view(np.int8)     # block_q8_K.qs
        assert (qs == -128).sum() >= 4 * n // 256
        want = E.vec_dot(kernel_set("generic"), ttype, w, act, n)
        for u in units:
            assert E.vec_dot(kernel_set(u), ttype, w, act, n) == want, u


@pytest.mark.parametrize("ttype", X86_IQ_TYPES, ids=lambda t: T.GGML_TYPES[t].name)
def test_x86_one_row_kernels_over_rows_longer_than_an_index_chunk(ttype):
    # IQ1_S and IQ1_M work out the lattice indices of 16 blocks ahead of their lookups (x86_iq.h's
    # IQ_CHUNK): a row of 37 blocks crosses two chunk boundaries and ends in a partial chunk
    from guanaco_rt._kernels import _quants as Q
    from guanaco_rt._kernels import _twins as E
    from guanaco_rt._kernels.dispatch import kernel_set
    from guanaco_rt.writer import random_tensor_bytes
    units = own_vec_dot_units(ttype)
    if not units:
        pytest.skip("no x86 unit of this CPU has its own kernel for the type")
    rng = np.random.default_rng(100 + int(ttype))
    n = 37 * 256
    w = np.frombuffer(random_tensor_bytes(ttype, (n,), rng), np.uint8)
    act = Q.quantize(T.Q8_K, rng.standard_normal(n).astype(np.float32))
    want = E.vec_dot(kernel_set("generic"), ttype, w, act, n)
    for u in units:
        assert E.vec_dot(kernel_set(u), ttype, w, act, n) == want, u
