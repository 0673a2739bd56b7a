"""Invariance: every ISA variant agrees with the generic kernels (exactly for
dequantize and quantize, within float summation order for dot products), and
forcing an ISA through GUANACO_RT_ISA works."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st

from guanaco_rt import ggml_types as T
from guanaco_rt._kernels import _generic
from guanaco_rt._kernels.dispatch import available_isas, load
from strategies import ALL_WEIGHT_TYPES, blocks, vectors

HERE = os.path.dirname(os.path.abspath(__file__))  # run children here: the installed package, not ./guanaco_rt
OTHER_ISAS = [isa for isa in available_isas() if isa != "generic"]
pytestmark = pytest.mark.skipif(not OTHER_ISAS, reason="no SIMD variant runs on this CPU")


@pytest.fixture(scope="module", params=OTHER_ISAS or ["none"])
def S(request):
    return load(request.param)


@pytest.mark.parametrize("ttype", ALL_WEIGHT_TYPES, ids=lambda t: T.GGML_TYPES[t].name)
@given(data=st.data())
def test_dequantize_exact(S, ttype, data):
    raw, n = data.draw(blocks(ttype, any_finite_scale=True))
    a = np.frombuffer(raw, np.uint8)
    np.testing.assert_array_equal(S.dequantize(ttype, a, n), _generic.dequantize(ttype, a, n))


@pytest.mark.parametrize("vt", [T.Q8_0, T.Q8_1, T.Q8_K], ids=lambda t: T.GGML_TYPES[t].name)
@given(data=st.data())
def test_quantize_exact(S, vt, data):
    x = data.draw(vectors(T.GGML_TYPES[vt].blck_size * data.draw(st.integers(1, 4))))
    assert S.quantize(vt, x).tobytes() == _generic.quantize(vt, x).tobytes()


@pytest.mark.parametrize("ttype", ALL_WEIGHT_TYPES, ids=lambda t: T.GGML_TYPES[t].name)
@given(data=st.data())
def test_vec_dot_agrees_with_generic(S, ttype, data):
    raw, n = data.draw(blocks(ttype))
    x = data.draw(vectors(n))
    vt = T.GGML_TYPES[ttype].vec_dot_type
    act = _generic.quantize(vt, x)
    w = np.frombuffer(raw, np.uint8)
    a, b = S.vec_dot(ttype, w, act, n), _generic.vec_dot(ttype, w, act, n)
    # both sum exact integer block products; only the float summation order differs
    wf = _generic.dequantize(ttype, w, n).astype(np.float64)
    af = _generic.dequantize(vt, act, n).astype(np.float64) if vt != T.F32 else x.astype(np.float64)
    assert abs(a - b) <= 4e-6 * np.abs(wf * af).sum() + 1e-30


@pytest.mark.parametrize("isa", ["generic"] + OTHER_ISAS)
def test_forcing_an_isa_through_the_environment(isa):
    code = "import guanaco_rt, json; print(json.dumps(guanaco_rt.show_config()))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "GUANACO_RT_ISA": isa},
                         capture_output=True, text=True, check=True, cwd=HERE).stdout
    assert f'"isa": "{isa}"' in out


def test_unknown_isa_is_refused():
    r = subprocess.run([sys.executable, "-c", "import guanaco_rt"], env={**os.environ, "GUANACO_RT_ISA": "avx9000"},
                       capture_output=True, text=True, cwd=HERE)
    assert r.returncode != 0 and "avx9000" in r.stderr


@given(seed=st.integers(0, 2**32), temp=st.sampled_from([0.0, 0.7, 1.3]), top_k=st.sampled_from([0, 5]),
       top_p=st.sampled_from([0.9, 1.0]), typical_p=st.sampled_from([0.8, 1.0]))
def test_sampler_is_identical_across_isas(S, seed, temp, top_k, top_p, typical_p):
    logits = np.random.default_rng(seed).standard_normal(300).astype(np.float32) * 3
    hist = np.arange(0, 300, 7, dtype=np.int32)
    out = []
    for mod in (_generic, S):
        bg = np.random.PCG64(seed)
        core = mod.SamplerCore(300, bg, temp, top_k, top_p, 0.02, typical_p, 1.1, 64, 0.1, 0.2, {5: -1.0}, 3)
        out.append((core.sample(logits, hist), bg.state))
    assert out[0] == out[1]
