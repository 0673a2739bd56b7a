"""The C ISA units (guanaco_rt/_kernels/isa/*.c) against the Cython generic unit.

generic.c is a port of _generic.pyx with the same float operations in the same order: built
here into a test-only shared library (the host C compiler, -std=c11 -ffp-contract=off as the
package builds its units), every entry of its kernel table must give the same bits as the
same entry of _generic's table, reached through its capsule. The NEON unit runs under
qemu-aarch64 (tests/c/run_qemu.sh), marked ``emulation``: out of the default run."""
import ctypes as C
import os
import shutil
import subprocess
import sysconfig

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from guanaco_rt import ggml_types as T
from guanaco_rt._kernels import _generic
from guanaco_rt._kernels import _quants as Q

from strategies import ALL_WEIGHT_TYPES, blocks, vectors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "guanaco_rt", "_kernels")
CC = sysconfig.get_config_var("CC") or "cc"

# isa_table.h, as ctypes sees it
VEC_DOT = C.CFUNCTYPE(None, C.c_int, C.POINTER(C.c_float), C.c_void_p, C.c_void_p)
KV_SCORES = C.CFUNCTYPE(None, C.POINTER(C.c_float), C.POINTER(C.c_float), C.c_void_p, C.c_int64, C.c_int64, C.c_int,
                        C.c_int, C.c_float, C.c_int)
KV_MIX = C.CFUNCTYPE(None, C.POINTER(C.c_float), C.POINTER(C.c_float), C.c_void_p, C.c_int64, C.c_int64, C.c_int,
                     C.c_int, C.c_int)


class TypeKernels(C.Structure):
    _fields_ = [("vec_dot", VEC_DOT), ("vec_dot_x4", C.c_void_p), ("dot_r8", C.c_void_p), ("dot_r8_x4", C.c_void_p),
                ("quantize", C.c_void_p)]


class IsaKernels(C.Structure):
    _fields_ = [("name", C.c_char_p), ("types", TypeKernels * 16), ("kv_scores", KV_SCORES), ("kv_mix", KV_MIX)]


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    """(generic.c's table, _generic.pyx's table), both as IsaKernels"""
    if shutil.which(CC.split()[0]) is None:
        pytest.skip(f"no C compiler ({CC}) to build generic.c")
    lib = str(tmp_path_factory.mktemp("cunit") / "generic_c.so")
    subprocess.run(CC.split() + ["-std=c11", "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-I", KERNELS, "-o", lib,
                                 os.path.join(KERNELS, "isa", "generic.c")], check=True)
    dll = C.CDLL(lib)
    c_table = IsaKernels.in_dll(dll, "gr_isa_generic")
    get = C.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = C.c_void_p, [C.py_object, C.c_char_p]
    cap = _generic.kernel_table()
    cy_table = C.cast(get(cap, b"guanaco_rt.isa_kernels_t"), C.POINTER(IsaKernels)).contents
    return dll, c_table, cy_table, cap        # keep the library and capsule alive


def test_generic_c_fills_what_the_cython_unit_fills(units):
    _, c, cy, _ = units
    assert c.name == cy.name == b"generic"
    for t in range(16):
        for f in ("vec_dot", "vec_dot_x4", "dot_r8", "dot_r8_x4", "quantize"):
            assert bool(getattr(c.types[t], f)) == bool(getattr(cy.types[t], f)), (t, f)
    assert c.kv_scores and c.kv_mix


def run_dot(fn, n, w, act):
    s = C.c_float(np.nan)
    fn(n, C.byref(s), w.ctypes.data, act.ctypes.data)
    return np.float32(s.value)


@pytest.mark.parametrize("ttype", ALL_WEIGHT_TYPES, ids=lambda t: T.GGML_TYPES[t].name)
@given(data=st.data())
def test_generic_c_vec_dot_is_bit_identical(units, ttype, data):
    _, c, cy, _ = units
    raw, n = data.draw(blocks(ttype))
    x = data.draw(vectors(n))
    vt = T.GGML_TYPES[ttype].vec_dot_type
    act = np.ascontiguousarray(Q.quantize(vt, x)).view(np.uint8) if vt != T.F32 else x.astype(np.float32)
    w = np.frombuffer(raw, np.uint8).copy()
    a = run_dot(c.types[ttype].vec_dot, n, w, act)
    b = run_dot(cy.types[ttype].vec_dot, n, w, act)
    assert a.tobytes() == b.tobytes(), (a, b)


@pytest.mark.parametrize("f16", [0, 1], ids=["f32", "f16"])
@given(n_pos=st.integers(1, 40), n=st.integers(1, 140), seed=st.integers(0, 2**32 - 1))
def test_generic_c_attention_loops_are_bit_identical(units, f16, n_pos, n, seed):
    _, c, cy, _ = units
    rng = np.random.default_rng(seed)
    stride, off = n + int(rng.integers(0, 9)), int(rng.integers(0, 5))
    kv = (rng.standard_normal(off + n_pos * stride) * 3).astype(np.float16 if f16 else np.float32)
    q = rng.standard_normal(n).astype(np.float32)
    p = rng.random(n_pos).astype(np.float32)
    scale = np.float32(1 / np.sqrt(n))
    fptr = C.POINTER(C.c_float)
    outs = []
    for unit in (c, cy):
        a = np.full(n_pos, np.nan, np.float32)
        o = np.full(n, np.nan, np.float32)
        unit.kv_scores(a.ctypes.data_as(fptr), q.ctypes.data_as(fptr), kv.ctypes.data, off, stride, n_pos, n, scale,
                       f16)
        unit.kv_mix(o.ctypes.data_as(fptr), p.ctypes.data_as(fptr), kv.ctypes.data, off, stride, n_pos, n, f16)
        outs.append((a.tobytes(), o.tobytes()))
    assert outs[0] == outs[1]


@pytest.mark.emulation
def test_neon_unit_under_qemu():
    """tests/c/run_qemu.sh: the NEON unit (baseline and dotprod builds) against generic.c on
    random blocks, under qemu-aarch64 (natively on an aarch64 host)."""
    script = os.path.join(ROOT, "tests", "c", "run_qemu.sh")
    r = subprocess.run(["bash", script], capture_output=True, text=True, cwd=ROOT)
    if r.returncode == 77:
        pytest.skip(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "cross tools missing")
    print(r.stdout)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "FAIL" not in r.stdout and "PASSED" in r.stdout and "neon: all kernels agree" in r.stdout
