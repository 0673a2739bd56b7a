"""Weight quantization (guanaco_rt.quantize and _kernels._quantize) against llama.cpp's own ggml.

The oracle is the llama.cpp peer (a Python with llama-cpp-python: GUANACO_RT_PEER_PYTHON, else
/work/peer-llama/bin/python): tests/peer_ggml_quantize.py calls its ggml_quantize_chunk with no
importance matrix, which is what llama-quantize does. Tests that need it skip without it.
"""
import os
import struct
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from guanaco_rt import ggml_types as T
from guanaco_rt._kernels import _quantize as Q
from guanaco_rt.errors import InvalidArgumentError

HERE = os.path.dirname(os.path.abspath(__file__))
ROW_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12,
             "Q5_K": 13, "Q6_K": 14, "IQ4_NL": 20}


def peer_python():
    p = os.environ.get("GUANACO_RT_PEER_PYTHON") or "/work/peer-llama/bin/python"
    if not os.path.exists(p):
        return None
    ok = subprocess.run([p, "-c", "import llama_cpp"], capture_output=True).returncode == 0
    return p if ok else None


class PeerQuantizer:
    """One long-lived peer process answering quantize requests (tests/peer_ggml_quantize.py)."""

    def __init__(self, python):
        self.proc = subprocess.Popen([python, os.path.join(HERE, "peer_ggml_quantize.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def __call__(self, t, x):
        x = np.ascontiguousarray(x, np.float32)
        self.proc.stdin.write(struct.pack("<3q", t, *x.shape) + x.tobytes())
        self.proc.stdin.flush()
        n = struct.unpack("<q", self.proc.stdout.read(8))[0]
        return np.frombuffer(self.proc.stdout.read(n), np.uint8).reshape(x.shape[0], -1)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def peer():
    python = peer_python()
    if python is None:
        pytest.skip("no llama.cpp peer: set GUANACO_RT_PEER_PYTHON to a Python that has llama_cpp")
    q = PeerQuantizer(python)
    yield q
    q.close()


def _rows(kind, scale_exp, seed, nrows, n):
    """nrows x n float32 rows of one family: normal, heavy-tailed, all zero, constant, one spike,
    positive only, small integers; scaled by 10**scale_exp"""
    rng = np.random.default_rng(seed)
    shape = (nrows, n)
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "heavy":
        x = rng.standard_t(1.5, shape)
    elif kind == "zero":
        x = np.zeros(shape)
    elif kind == "constant":
        x = np.full(shape, rng.standard_normal())
    elif kind == "spike":
        x = rng.standard_normal(shape) * 1e-3
        x[:, rng.integers(0, n)] = rng.choice([-1.0, 1.0]) * 50
    elif kind == "positive":
        x = rng.random(shape)
    else:  # small integers: many exact ties between levels
        x = rng.integers(-8, 9, shape).astype(np.float64)
    return (x * 10.0 ** scale_exp).astype(np.float32)


KINDS = ["normal", "heavy", "zero", "constant", "spike", "positive", "integers"]


@pytest.mark.parametrize("name", list(ROW_TYPES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), scale_exp=st.integers(-30, 30), seed=st.integers(0, 2**32 - 1),
       nrows=st.integers(1, 6), nblocks=st.integers(1, 3))
def test_rows_match_ggml(peer, name, kind, scale_exp, seed, nrows, nblocks):
    t = ROW_TYPES[name]
    blck = Q.block_size(t)[0]
    x = _rows(kind, scale_exp, seed, nrows, blck * (nblocks if blck == 256 else 5 * nblocks))  # 32-wide: 160..480
    assert np.array_equal(Q.quantize_rows(t, x, 2), peer(t, x)), (name, kind, scale_exp, seed)


@pytest.mark.parametrize("name", list(ROW_TYPES))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=hnp.arrays(np.float32, (2, 256), elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=True)))
def test_arbitrary_floats_match_ggml(peer, name, x):
    """hypothesis' own floats: repeated values, subnormals, signed zeros, exact ties"""
    t = ROW_TYPES[name]
    assert np.array_equal(Q.quantize_rows(t, x, 1), peer(t, x)), name


@pytest.mark.parametrize("name", list(ROW_TYPES))
def test_rows_dequantize_close(name):
    """our bytes decode (by the runtime's own dequantizer) to within the type's step of the input:
    a check of the layout that needs no peer"""
    t = ROW_TYPES[name]
    x = np.random.default_rng(3).standard_normal((4, 512)).astype(np.float32)
    q = Q.quantize_rows(t, x, 1)
    from guanaco_rt._kernels import _quants
    y = _quants.dequantize(t, q.ravel(), x.size).reshape(x.shape)
    bits = {2: 4, 3: 4, 6: 5, 7: 5, 8: 8, 10: 2, 11: 3, 12: 4, 13: 5, 14: 6, 20: 4}[t]
    assert np.max(np.abs(y - x)) < 8.0 / 2 ** bits * 1.5


def test_rows_do_not_depend_on_threads():
    x = np.random.default_rng(4).standard_normal((37, 512)).astype(np.float32)
    for t in ROW_TYPES.values():
        a = Q.quantize_rows(t, x, 1)
        assert np.array_equal(a, Q.quantize_rows(t, x, 2))
        assert np.array_equal(a[5:6], Q.quantize_rows(t, x[5:6], 1))


def test_row_errors_are_typed():
    with pytest.raises(InvalidArgumentError, match="256"):
        Q.row_bytes(T.Q4_K, 576)
    with pytest.raises(InvalidArgumentError, match="type 1 "):
        Q.row_bytes(1, 64)
    with pytest.raises(InvalidArgumentError, match="2-D"):
        Q.quantize_rows(2, np.zeros(64, np.float32))
