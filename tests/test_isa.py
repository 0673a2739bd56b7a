"""Invariance: every ISA unit agrees with the generic unit (within float summation
order for one dot product; bit for bit for whole forward passes, since the order is
fixed per unit and thread count), the x86 units (one source, isa/x86.c, at several widths)
give the same bits, forcing an ISA through GUANACO_RT_ISA works, the list of units is
what setup.py and the dispatcher share, and a unit that fails to load is an error."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import guanaco_rt
from guanaco_rt import ggml_types as T
from guanaco_rt._kernels import _engine, dispatch
from guanaco_rt._kernels import _quants as Q
from guanaco_rt._kernels import _twins as E
from guanaco_rt._kernels.dispatch import available_isas, kernel_set
from guanaco_rt._kernels.isa_list import UNITS

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


def test_config_with_a_unit_this_machine_cannot_run_shows_the_units_and_why():
    # `guanaco-rt config` with a bad GUANACO_RT_ISA: rc 2, the error, and still every unit's state
    r = subprocess.run([sys.executable, "-m", "guanaco_rt", "config"], env={**os.environ, "GUANACO_RT_ISA": "avx9000"},
                       capture_output=True, text=True, cwd=HERE)
    assert r.returncode == 2 and "avx9000" in r.stderr
    out = json.loads(r.stdout)
    assert set(out["units"]) == {u["name"] for u in UNITS} and "avx9000" in out["error"]
    assert all(out["units"][u] == "ok" for u in available_isas())


def test_unknown_isa_is_refused():
    # a typed error where the kernels are first needed, not an import failure
    code = "import guanaco_rt\ntry:\n    guanaco_rt.show_config()\nexcept guanaco_rt.GuanacoError as e:\n    print(e)"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "GUANACO_RT_ISA": "avx9000"},
                       capture_output=True, text=True, cwd=HERE)
    assert r.returncode == 0 and "avx9000" in r.stdout


def test_a_model_says_its_unit_and_refuses_a_bad_isa_argument(tmp_path_factory):
    # Model(isa=...) names the argument, not the environment variable, any case; Model.isa says the unit
    path = tiny_model(tmp_path_factory.getbasetemp(), "q4_0")
    assert guanaco_rt.Model(path, isa="GENERIC").isa == "generic"
    assert guanaco_rt.Model(path).isa == dispatch.choose()[0]
    lacking = [u["name"] for u in UNITS if dispatch.unit_status(u["name"]) != "ok"]
    for bad in ["avx9000"] + lacking[:1]:
        with pytest.raises(guanaco_rt.errors.InvalidArgumentError) as e:
            guanaco_rt.Model(path, isa=bad)
        assert e.value.param == "isa" and f"isa={bad!r}" in str(e.value) and "GUANACO_RT_ISA" not in str(e.value)
        assert str(path) in str(e.value)


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
    if S.isa not in SAME_BITS_AS_GENERIC:
        assert not np.array_equal(a, b)     # really two different units


# ---- the C units (isa_list.py) and their fallback chains ------------------------------------------
# isa/x86.c's builds: exact integer sums, then the same float steps at every width: the same bits
X86_UNITS = ("avx2", "vnni256", "avx_vnni", "avx512")
# Units whose every quantized kernel does the generic unit's float steps in its order (neon.c)
SAME_BITS_AS_GENERIC = ("neon", "neon_dotprod", "neon_i8mm")


def own_r8_types(isa):
    """the weight types whose 8-row kernels this unit supplies itself (not its fallbacks)"""
    return [t for t in T.R8_TYPES if kernel_set(isa).sources.get((t, "dot_r8")) == isa]


def x86_r8_units():
    """(unit, type) of the x86 units this CPU runs but avx2 (the one they are compared with)"""
    return [(u, t) for u in X86_UNITS[1:] for t in T.R8_TYPES if u in available_isas() and t in own_r8_types(u)]


@pytest.mark.parametrize("isa", X86_UNITS)
def test_x86_units_interleave_every_weight_type(isa):
    # every weight type runs on the unit's own 8-row kernels (the x86 units have no one-row ones:
    # a matrix's < 8 tail rows take the generic unit's); the avx2 build runs on any AVX2 CPU, so
    # the width-generic bodies are tested there too
    if dispatch.unit_status(isa) != "ok":
        pytest.skip(f"ISA unit {isa}: {dispatch.unit_status(isa)}")
    assert set(own_r8_types(isa)) == set(T.R8_TYPES)
    assert all(kernel_set(isa).interleaves(t) for t in T.R8_TYPES)
    assert kernel_set(isa).chain == (isa, "generic")


@pytest.mark.parametrize("isa,ttype", x86_r8_units() or [("none", 0)],
                         ids=lambda v: T.GGML_TYPES[v].name if isinstance(v, int) else v)
@given(data=st.data(), nb=st.integers(1, 5), groups=st.integers(1, 3), n_tok=st.integers(1, 9),
       nth=st.integers(1, 2))
@settings(max_examples=25)
def test_x86_units_give_the_same_bits_at_every_width(isa, ttype, data, nb, groups, n_tok, nth):
    # integer sums (vpdpbusd, or maddubs + madd in the avx2 build) are exact; the float steps are one body's
    if isa == "none":
        pytest.skip("no second x86 unit runs on this CPU")
    qk = T.GGML_TYPES[ttype].blck_size
    ne0, ne1 = qk * nb, 8 * groups
    w = np.frombuffer(b"".join(data.draw(blocks(ttype, n_blocks=nb))[0] for _ in range(ne1)), np.uint8)
    x = np.stack([data.draw(vectors(ne0)) for _ in range(n_tok)]).astype(np.float32)
    ours = E.matmul_twin(kernel_set(isa), ttype, w, ne0, ne1, x, nth, interleave=True)
    assert np.array_equal(ours, E.matmul_twin(kernel_set("avx2"), ttype, w, ne0, ne1, x, 1, interleave=True))


@given(data=st.data())
@settings(max_examples=50)
def test_x86_bf16_rows_give_the_same_bits_at_every_width(data):
    # bf16 matrices stay one row a row (no interleave); the x86 vec_dot sums in 16 lanes at both widths
    units = [u for u in X86_UNITS if u in available_isas()]
    if len(units) < 2:
        pytest.skip("no second x86 unit runs on this CPU")
    raw, n = data.draw(blocks(T.BF16))
    x = data.draw(vectors(n))
    w = np.frombuffer(raw, np.uint8)
    got = {u: E.vec_dot(kernel_set(u), T.BF16, w, x.view(np.uint8), n) for u in units}
    assert all(kernel_set(u).sources[(T.BF16, "vec_dot")] == u for u in units)
    assert len(set(got.values())) == 1, got


def test_kernel_sets_take_each_pair_whole_from_the_first_unit_that_has_it():
    # the gaps of a unit's table are filled along its chain (e.g. neon_i8mm -> generic), a type's
    # (vec_dot, vec_dot_x4) and (dot_r8, dot_r8_x4) each from one unit
    for isa in available_isas():
        K = kernel_set(isa)
        assert K.chain == tuple(dispatch.chain(isa)) and K.chain[-1] == "generic"
        for t in ALL_WEIGHT_TYPES:
            for kind in ("vec_dot", "dot_r8"):
                own = [u for u in K.chain if kernel_set(u).sources.get((t, kind)) == u]
                assert K.sources.get((t, kind)) == (own[0] if own else None), (isa, t, kind)


def test_setup_and_the_dispatcher_read_one_list_of_units():
    names = [u["name"] for u in UNITS]
    assert dispatch.ISAS == tuple(names) and len(set(names)) == len(names)
    for u in UNITS:
        assert u["fallback"] is None or names.index(u["fallback"]) < names.index(u["name"]), u
        assert os.path.exists(os.path.join(os.path.dirname(dispatch.__file__), u["source"])), u
    with open(os.path.join(HERE, "..", "setup.py")) as f:
        assert "isa_list.py" in f.read()
    cfg = guanaco_rt.show_config()
    assert set(cfg["units"]) == set(names)
    assert cfg["isa"] in available_isas() and cfg["kernel_chain"] == dispatch.chain(cfg["isa"])
    for name, status in cfg["units"].items():
        assert (status == "ok") == (name in available_isas()), (name, status)


def test_cpu_features_come_from_cpuid_and_xgetbv():
    f = _engine.cpu_features()
    assert ({"avx2", "fma", "f16c"} <= f) == _engine.cpu_has_avx2()
    assert "avx512f" in f or not {"avx512bw", "avx512vl", "avx512vnni"} & f
    for u in UNITS:    # a unit the CPU lacks is named with what it lacks
        status = dispatch.unit_status(u["name"])
        assert status in ("ok", "not built") or status.startswith(("not for ", "cpu lacks ", "failed"))
        if status.startswith("cpu lacks "):
            assert set(status.split()[2:]) == set(u["features"]) - f


def test_a_unit_the_cpu_runs_that_fails_to_load_is_an_error_not_a_fallback(monkeypatch):
    best = [u["name"] for u in UNITS if u["default"] and dispatch.unit_status(u["name"]) == "ok"][-1]
    if best == "generic":
        pytest.skip("only the generic unit runs on this CPU")
    monkeypatch.delenv("GUANACO_RT_ISA", raising=False)
    monkeypatch.setitem(dispatch._MODULES, best, ImportError("undefined symbol: gr_missing"))
    monkeypatch.setattr(dispatch, "_SETS", {})
    cfg = guanaco_rt.show_config()
    assert cfg["units"][best] == "failed to load: undefined symbol: gr_missing"
    assert cfg["isa"] is None and best in cfg["isa_why"] and "GUANACO_RT_ISA" in cfg["isa_why"]
    assert best not in cfg["available_isas"]
    with pytest.raises(guanaco_rt.GuanacoError, match=f"{best} kernel unit failed to load"):
        dispatch.default_kernels()
    # forcing a unit that loads is the way out; forcing the broken one names it
    monkeypatch.setenv("GUANACO_RT_ISA", dispatch.chain(best)[1])
    assert dispatch.default_kernels().isa == dispatch.chain(best)[1]
    monkeypatch.setenv("GUANACO_RT_ISA", best)
    with pytest.raises(guanaco_rt.GuanacoError, match="gr_missing"):
        dispatch.default_kernels()


def test_guanaco_rt_config_lists_the_units_and_why():
    out = subprocess.run([sys.executable, "-m", "guanaco_rt", "config"], capture_output=True, text=True, check=True,
                         cwd=HERE, env={**os.environ, "GUANACO_RT_ISA": ""}).stdout
    cfg = json.loads(out)
    assert set(cfg["units"]) == {u["name"] for u in UNITS}
    assert cfg["isa"] == [u["name"] for u in UNITS if u["default"] and u["name"] in available_isas()][-1]
    assert cfg["isa_why"].startswith("the best unit this CPU runs")
