"""Build of guanaco_rt's Cython kernels.

One extension per ISA, each from the same kernel sources with its own flags
(generic: none; avx2: -mavx2 -mfma -mf16c), chosen at import by cpuid. OpenMP
is probed with a test compile; -ffp-contract=off keeps the compiler from fusing
a*b+c into FMAs behind our back, so the scalar code rounds the same in every ISA
module (explicit FMA intrinsics are unaffected). Without OpenMP the build warns
loudly and the kernels run on one thread. Never -march=native.

GUANACO_RT_DEBUG=1 turns Cython's bounds and wraparound checks back on.
"""
import os
import platform
import shutil
import sys
import tempfile
import textwrap

from setuptools import Extension, setup

try:
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler
except ImportError:  # pragma: no cover - very old setuptools
    from distutils.ccompiler import new_compiler
    from distutils.sysconfig import customize_compiler

from Cython.Build import cythonize
import numpy

HERE = os.path.dirname(os.path.abspath(__file__))
KDIR = os.path.join("guanaco_rt", "_kernels")
DEBUG = os.environ.get("GUANACO_RT_DEBUG", "") not in ("", "0")


def _try_compile(code, cflags, ldflags):
    cc = new_compiler()
    customize_compiler(cc)
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        objs = cc.compile([src], output_dir=tmp, extra_postargs=cflags)
        cc.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=ldflags)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def openmp_flags():
    if os.environ.get("GUANACO_RT_NO_OPENMP"):
        return [], []
    code = textwrap.dedent("""
        #include <omp.h>
        int main(void) { int n = 0;
        #pragma omp parallel reduction(+:n)
          n += 1;
          return n > 0 ? 0 : 1; }
    """)
    for cflags, ldflags in ((["-fopenmp"], ["-fopenmp"]), (["-Xpreprocessor", "-fopenmp"], ["-lomp"])):
        if _try_compile(code, cflags, ldflags):
            return cflags, ldflags
    sys.stderr.write("\n" + "*" * 78 + "\n"
                     "WARNING: guanaco_rt: the compiler does not support OpenMP.\n"
                     "The kernels will be built single-threaded and run on ONE core.\n"
                     "Install a compiler with OpenMP (gcc, or clang with libomp) and rebuild.\n"
                     + "*" * 78 + "\n\n")
    return [], []


def is_x86_64():
    return platform.machine().lower() in ("x86_64", "amd64")


def extensions():
    omp_c, omp_l = openmp_flags()
    base = ["-O3", "-fno-strict-aliasing", "-ffp-contract=off", "-Wno-unused-function", "-Wno-unused-variable",
            "-Wno-maybe-uninitialized"]
    isas = [("_generic", [])]
    if is_x86_64() and _try_compile("int main(void){return 0;}", ["-mavx2", "-mfma", "-mf16c"], []):
        isas.append(("_avx2", ["-mavx2", "-mfma", "-mf16c"]))
    exts = []
    for name, flags in isas:
        exts.append(Extension(
            f"guanaco_rt._kernels.{name}",
            [os.path.join(KDIR, name + ".pyx")],
            include_dirs=[KDIR, numpy.get_include()],   # numpy/random/bitgen.h: the sampler's RNG
            extra_compile_args=base + flags + omp_c,
            extra_link_args=omp_l,
        ))
    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": not DEBUG,
        "nonecheck": DEBUG,
        "embedsignature": True,
    }
    return cythonize(exts, compiler_directives=directives, include_path=[HERE, KDIR])


setup(ext_modules=extensions())
