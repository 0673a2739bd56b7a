"""Invariance: every ISA unit agrees with the generic unit (within float summation
order for one dot product; bit for bit for whole forward passes, since the order is
fixed per unit and thread count), and forcing an ISA through GUANACO_RT_ISA works."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import guanaco_rt
from guanaco_rt import ggml_types as T
from guanaco_rt._kernels import _quants as Q
from guanaco_rt._kernels import _twins as E
from guanaco_rt._kernels.dispatch import available_isas, kernel_set

from helpers import tiny_model
from strategies import ALL_WEIGHT_TYPES, blocks, vectors

HERE = os.path.dirname(os.path.abspath(__file__))  # run children here: the installed package, not ./guanaco_rt
OTHER_ISAS = [isa for isa in available_isas() if isa != "generic"]
pytestmark = pytest.mark.skipif(not OTHER_ISAS, reason="no SIMD variant runs on this CPU")


@pytest.fixture(scope="module", params=OTHER_ISAS or ["none"])
def S(request):
    return kernel_set(request.param)


@pytest.mark.parametrize("ttype", ALL_WEIGHT_TYPES, ids=lambda t: T.GGML_TYPES[t].name)
@given(data=st.data())
def test_vec_dot_agrees_with_generic(S, ttype, data):
    raw, n = data.draw(blocks(ttype))
    x = data.draw(vectors(n))
    vt = T.GGML_TYPES[ttype].vec_dot_type
    act = Q.quantize(vt, x)
    w = np.frombuffer(raw, np.uint8)
    a, b = E.vec_dot(S, ttype, w, act, n), E.vec_dot(kernel_set("generic"), ttype, w, act, n)
    # both sum exact integer block products; only the float summation order differs
    wf = Q.dequantize(ttype, w, n).astype(np.float64)
    af = Q.dequantize(vt, act, n).astype(np.float64) if vt != T.F32 else x.astype(np.float64)
    assert abs(a - b) <= 4e-6 * np.abs(wf * af).sum() + 1e-30


@st.composite
def activation_rows(draw, n):
    """rows of n floats, some built so that x / d lands exactly on k + 0.5 (rounding ties)"""
    rows = [draw(vectors(n)) for _ in range(draw(st.integers(1, 3)))]
    tie = np.zeros(n, np.float32)
    tie[::32] = 127.0                       # d = 1: every other value is its own x / d
    tie[1::32] = [draw(st.integers(-126, 125)) + 0.5 for _ in tie[1::32]]
    tie[2::32] = -2.5
    return np.stack(rows + [tie]).astype(np.float32)


@pytest.mark.parametrize("vt", [T.Q8_1, T.Q8_K], ids=lambda t: T.GGML_TYPES[t].name)
@given(data=st.data())
def test_activation_quantizer_writes_the_generic_bytes(S, vt, data):
    # a unit's quantizer must write exactly the block format's bytes (roundf ties away from zero)
    x = data.draw(activation_rows(T.GGML_TYPES[vt].blck_size * data.draw(st.integers(1, 3))))
    ours = E.quantize_twin(S, vt, x)
    assert ours.tobytes() == b"".join(Q.quantize(vt, row).tobytes() for row in x)


@pytest.mark.parametrize("isa", ["generic"] + OTHER_ISAS)
def test_forcing_an_isa_through_the_environment(isa):
    code = "import guanaco_rt, json; print(json.dumps(guanaco_rt.show_config()))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "GUANACO_RT_ISA": isa},
                         capture_output=True, text=True, check=True, cwd=HERE).stdout
    assert f'"isa": "{isa}"' in out


def test_unknown_isa_is_refused():
    # a typed error where the kernels are first needed, not an import failure
    code = "import guanaco_rt\ntry:\n    guanaco_rt.show_config()\nexcept guanaco_rt.GuanacoError as e:\n    print(e)"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "GUANACO_RT_ISA": "avx9000"},
                       capture_output=True, text=True, cwd=HERE)
    assert r.returncode == 0 and "avx9000" in r.stdout


@pytest.mark.parametrize("ftype", ["q4_0", "q4_K_M", "q6_K"])
def test_forward_agrees_across_isas_in_one_process(S, tmp_path_factory, ftype):
    # units are chosen per Model, so two ISAs run side by side without a subprocess
    path = tiny_model(tmp_path_factory.getbasetemp(), ftype)
    prompt = [1] + list(range(3, 40))
    out = {}
    for isa in ("generic", S.isa):
        with guanaco_rt.Session(guanaco_rt.Model(path, isa=isa), n_ctx=64, n_threads=2) as s:
            out[isa] = s.eval(prompt, all_logits=True)
    a, b = out["generic"], out[S.isa]
    # a last-bit difference in a dot product can move a later 8-bit activation rounding:
    # close, not equal (measured: 0.3% of the largest logit for q4_0)
    assert np.abs(a - b).max() <= 0.02 * np.abs(a).max()
    cos = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.9999
    assert not np.array_equal(a, b)     # really two different units
