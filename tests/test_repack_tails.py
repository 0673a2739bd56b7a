"""Interleaved matrices whose row count is not a multiple of 8, and a tied output: every
matrix (8 rows or more) of a type the kernels have 8-row kernels for is interleaved, its
last ne1 % 8 rows left as the file has them after the groups and run on the one-row
kernels; a tied output's token embeddings are interleaved with it, and the token lookup
reads each row back in the file's order. The layout agrees with the NumPy spec
(ggml_types.interleave_r8) and undoes; products agree with the exact reference and give the
same bits for any token count and thread count; a Model still shows the file's bytes."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import guanaco_rt
from guanaco_rt import ggml_types as T
from guanaco_rt._kernels import _quants as Q
from guanaco_rt._kernels import _twins as E
from guanaco_rt._kernels.dispatch import available_isas, kernel_set

from helpers import tiny_gguf, tiny_model
from reference import ReferenceModel
from strategies import blocks, vectors

R8_ISAS = [isa for isa in available_isas() if isa != "generic"]
pytestmark = pytest.mark.skipif(not R8_ISAS, reason="no unit with 8-row kernels runs on this CPU")
R8 = pytest.mark.parametrize("ttype", T.R8_TYPES, ids=lambda t: T.GGML_TYPES[t].name)
# (unit, type) for every unit with 8-row kernels this CPU runs and every type it has them for
UNIT_TYPES = [(isa, t) for isa in R8_ISAS for t in T.R8_TYPES if kernel_set(isa).interleaves(t)]
BY_UNIT_TYPE = pytest.mark.parametrize("isa,ttype", UNIT_TYPES or [("none", T.Q4_0)],
                                       ids=lambda v: T.GGML_TYPES[v].name if isinstance(v, int) else v)
TOKENS = [1, 5, 60, 7, 250, 9, 10, 3, 295, 42, 17]


def QK(ttype):
    return T.GGML_TYPES[ttype].blck_size


def weights(data, ttype, ne0, ne1):
    raw = b"".join(data.draw(blocks(ttype, n_blocks=ne0 // QK(ttype)))[0] for _ in range(ne1))
    return np.frombuffer(raw, np.uint8)


def exact(ttype, w, x, ne0, ne1):
    """dequantized weights times the dequantized 8-bit activations, in float64, and its bound
    (as test_repack's)"""
    wf = Q.dequantize(ttype, w, ne0 * ne1).astype(np.float64).reshape(ne1, ne0)
    vt = T.GGML_TYPES[ttype].vec_dot_type
    af = np.stack([Q.dequantize(vt, Q.quantize(vt, r), ne0).astype(np.float64) for r in x])
    # q4_0 / q5_0 weights are d q - 8d / - 16d: the kernels sum the two terms apart, so a block
    # whose every q is the offset is 0 exactly yet leaves their rounding (d 8 sum(y) twice)
    mag = np.abs(wf)
    off = {2: 8.0, 6: 16.0}.get(ttype, 0.0)
    if off:
        size = T.GGML_TYPES[ttype].row_bytes(32)
        d = np.frombuffer(np.ascontiguousarray(w).tobytes(), np.uint8).reshape(-1, size)[:, :2].copy().view(np.float16)
        mag = mag + off * np.repeat(np.abs(d.astype(np.float64)).reshape(ne1, -1), 32, axis=1)
    return af @ wf.T, 4e-6 * (np.abs(af) @ mag.T) + 1e-30


@R8
@given(data=st.data(), nb=st.integers(1, 4), groups=st.integers(1, 3), tail=st.integers(1, 7), nth=st.integers(1, 3))
@settings(max_examples=30)
def test_a_tail_stays_as_the_file_has_it_after_the_interleaved_groups(ttype, data, nb, groups, tail, nth):
    ne0, ne1 = QK(ttype) * nb, 8 * groups + tail
    nb1 = T.GGML_TYPES[ttype].row_bytes(ne0)
    w = weights(data, ttype, ne0, ne1)
    packed = E.repack_twin(ttype, w, ne0, ne1, nth)
    assert packed.tobytes() == T.interleave_r8(w.tobytes(), ttype, ne0, ne1)
    assert T.deinterleave_r8(packed.tobytes(), ttype, ne0, ne1) == w.tobytes()
    # the groups take exactly the bytes of their rows, laid out as a whole-group matrix's
    assert packed[:8 * groups * nb1].tobytes() == T.interleave_r8(w[:8 * groups * nb1].tobytes(), ttype, ne0,
                                                                  8 * groups)
    assert np.array_equal(packed[8 * groups * nb1:], w[8 * groups * nb1:])


@R8
@given(data=st.data(), nb=st.integers(1, 3), groups=st.integers(1, 3), tail=st.integers(0, 7))
@settings(max_examples=30)
def test_the_token_lookup_reads_interleaved_rows_as_the_files_rows(ttype, data, nb, groups, tail):
    # a tied output's embeddings are interleaved: each looked-up row, gathered back into the
    # file's order, dequantizes to the very bits of the file's row
    ne0, ne1 = QK(ttype) * nb, 8 * groups + tail
    w = weights(data, ttype, ne0, ne1)
    rows = np.array(data.draw(st.lists(st.integers(0, ne1 - 1), min_size=1, max_size=12)) + [ne1 - 1], np.int32)
    ours = E.embedding_twin(ttype, w, ne0, ne1, rows, interleave=True)
    files = Q.dequantize(ttype, w, ne0 * ne1).reshape(ne1, ne0)[rows]
    assert np.array_equal(ours.view(np.uint32), files.view(np.uint32))
    assert np.array_equal(ours.view(np.uint32), E.embedding_twin(ttype, w, ne0, ne1, rows).view(np.uint32))


@BY_UNIT_TYPE
@given(data=st.data(), nb=st.integers(1, 5), groups=st.integers(1, 3), tail=st.integers(1, 7),
       n_tok=st.integers(1, 9))
@settings(max_examples=25)
def test_matrices_with_a_tail_interleave_and_match_the_exact_reference(isa, ttype, data, nb, groups, tail, n_tok):
    if isa == "none":
        pytest.skip("no unit with 8-row kernels runs on this CPU")
    K = kernel_set(isa)
    ne0, ne1, g8 = QK(ttype) * nb, 8 * groups + tail, 8 * groups
    nb1 = T.GGML_TYPES[ttype].row_bytes(ne0)
    w = weights(data, ttype, ne0, ne1)
    x = np.stack([data.draw(vectors(ne0)) for _ in range(n_tok)]).astype(np.float32)
    out = E.matmul_twin(K, ttype, w, ne0, ne1, x, interleave=True)
    ref, bound = exact(ttype, w, x, ne0, ne1)
    assert (np.abs(out - ref) <= bound).all()
    # the groups ran on the 8-row kernels (the bits of the whole groups alone), the tail on
    # the one-row kernels (the bits of the file layout)
    assert np.array_equal(out[:, :g8], E.matmul_twin(K, ttype, w[:g8 * nb1], ne0, g8, x, interleave=True))
    assert np.array_equal(out[:, g8:], E.matmul_twin(K, ttype, w, ne0, ne1, x)[:, g8:])


@BY_UNIT_TYPE
@given(data=st.data(), nb=st.integers(1, 3), groups=st.integers(1, 6), tail=st.integers(1, 7),
       n_tok=st.integers(2, 9), nth=st.integers(2, 3), split=st.integers(1, 8))
@settings(max_examples=20)
def test_matrices_with_a_tail_give_the_same_bits_for_any_token_count_and_thread_count(isa, ttype, data, nb, groups,
                                                                                      tail, n_tok, nth, split):
    if isa == "none":
        pytest.skip("no unit with 8-row kernels runs on this CPU")
    K = kernel_set(isa)
    ne0, ne1 = max(QK(ttype), 256) * nb, 8 * groups + tail      # wide enough for a team of threads
    w = weights(data, ttype, ne0, ne1)
    x = np.stack([data.draw(vectors(ne0)) for _ in range(n_tok)]).astype(np.float32)
    batch = E.matmul_twin(K, ttype, w, ne0, ne1, x, interleave=True)
    one_by_one = np.concatenate([E.matmul_twin(K, ttype, w, ne0, ne1, x[t:t + 1], interleave=True)
                                 for t in range(n_tok)])
    in_pieces = np.concatenate([E.matmul_twin(K, ttype, w, ne0, ne1, x[t:t + split], nth, interleave=True)
                                for t in range(0, n_tok, split)])
    assert np.array_equal(batch, one_by_one)
    assert np.array_equal(batch, in_pieces)
    assert np.array_equal(batch, E.matmul_twin(K, ttype, w, ne0, ne1, x, n_threads=nth, interleave=True))


def test_fewer_than_8_rows_do_not_interleave():
    with pytest.raises(ValueError, match="not an interleavable"):
        E.repack_twin(T.Q4_0, np.zeros(7 * 18, np.uint8), 32, 7)
    with pytest.raises(ValueError, match="rows < 8"):
        E.matmul_twin(kernel_set(R8_ISAS[0]), T.Q4_0, np.zeros(7 * 18, np.uint8), 32, 7,
                      np.zeros((1, 32), np.float32), interleave=True)


def matrices(m):
    return {n: t for n, t in m.tensors.items() if t.n_rows > 1}


def file_bytes(path, t):
    with open(path, "rb") as f:
        f.seek(t.offset)
        return f.read(t.nbytes)


@pytest.mark.parametrize("isa", R8_ISAS or ["none"])
def test_an_untied_output_with_a_tail_interleaves_and_its_embeddings_stay(tmp_path_factory, isa):
    path = tiny_model(tmp_path_factory.mktemp("tails"), "q4_0")                     # n_vocab 300 = 8 * 37 + 4
    m = guanaco_rt.Model(path, isa=isa)
    assert m.n_vocab % 8 == 4 and m.tensors["output.weight"].type == T.Q4_0
    assert m.repacked_bytes == sum(t.nbytes for n, t in matrices(m).items() if n != "tok_embeddings.weight")
    inmem = guanaco_rt.Model(path, isa=isa, mmap=False)
    for name, t in m.tensors.items():
        assert inmem.tensor_data(name).tobytes() == file_bytes(path, t), name
    a = guanaco_rt.Session(m, n_ctx=32, n_threads=1).eval(TOKENS, all_logits=True)
    assert np.array_equal(a, guanaco_rt.Session(inmem, n_ctx=32, n_threads=2, n_batch=4).eval(TOKENS,
                                                                                            all_logits=True))


TIED = {   # (layers' type, embeddings' type, n_vocab)
    "q8_0-300": (T.Q8_0, T.Q8_0, 300),        # the demo model's types; 300 = 8 * 37 + 4
    "q4_0-296": (T.Q4_0, T.Q4_0, 296),        # no tail
    "q4_K-q6_K-303": (T.Q4_K, T.Q6_K, 303),   # a tail of 7
    "q4_1-q4_1-297": (T.Q4_1, T.Q4_1, 297),   # a tail of 1
}


@pytest.mark.parametrize("isa", R8_ISAS or ["none"])
@pytest.mark.parametrize("case", sorted(TIED))
def test_a_tied_output_interleaves_the_token_embeddings(tmp_path_factory, isa, case):
    if isa == "none":
        pytest.skip("no unit with 8-row kernels runs on this CPU")
    wtype, etype, n_vocab = TIED[case]
    if not kernel_set(isa).interleaves(etype):
        pytest.skip(f"{isa} has no 8-row kernels for {T.GGML_TYPES[etype].name}")
    path = tiny_gguf(tmp_path_factory.mktemp("tied"), wtype, etype, n_vocab=n_vocab)
    m = guanaco_rt.Model(path, isa=isa)
    assert "output.weight" not in m.tensors and m.n_vocab == n_vocab
    # every matrix, the token embeddings included (once: they are the output too)
    assert m.repacked_bytes == sum(t.nbytes for t in matrices(m).values())
    inmem = guanaco_rt.Model(path, isa=isa, mmap=False)
    assert inmem.repacked_bytes == m.repacked_bytes
    emb = m.tensors["tok_embeddings.weight"]
    assert inmem.tensor_data("tok_embeddings.weight").tobytes() == file_bytes(path, emb)
    assert m.tensor_data("tok_embeddings.weight").tobytes() == file_bytes(path, emb)
    assert inmem.fingerprint == m.fingerprint
    # the looked-up rows are the file's rows, dequantized (the last one in the tail, if any)
    rows = np.array(TOKENS + [n_vocab - 1], np.int32)
    looked_up = E.embedding_twin(etype, np.frombuffer(file_bytes(path, emb), np.uint8), emb.shape[0], n_vocab, rows,
                                 interleave=True)
    files = Q.dequantize(etype, np.frombuffer(file_bytes(path, emb), np.uint8), emb.shape[0] * n_vocab)
    assert np.array_equal(looked_up, files.reshape(n_vocab, -1)[rows])
    # the same bits with or without mmap, on any thread count and batch size
    ids = TOKENS + [n_vocab - 1, n_vocab - 2]
    ours = guanaco_rt.Session(m, n_ctx=32, n_threads=1).eval(ids, all_logits=True)
    assert np.array_equal(ours, guanaco_rt.Session(inmem, n_ctx=32, n_threads=2).eval(ids, all_logits=True))
    assert np.array_equal(ours, guanaco_rt.Session(m, n_ctx=32, n_threads=2, n_batch=3).eval(ids, all_logits=True))
    # other kernels (the generic unit, nothing interleaved), within the kernels' bounds: the
    # engine's arithmetic in float64, and the generic unit's logits
    generic = guanaco_rt.Model(path, isa="generic")
    assert generic.repacked_bytes == 0
    theirs = guanaco_rt.Session(generic, n_ctx=32).eval(ids, all_logits=True)
    qref = ReferenceModel(m, quantize_acts=True).forward(ids)
    scale = np.abs(qref).max()
    assert np.median(np.abs(ours - qref).max(axis=1) / scale) < 1e-3
    assert np.median(np.abs(ours - theirs).max(axis=1) / scale) < 1e-3
