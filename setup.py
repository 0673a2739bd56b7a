"""Build of guanaco_rt's Cython kernels.

The runtime (_quants: block formats; _ops: a layer's elementwise ops and attention;
_engine: matmuls, the forward pass and State; _sampling;
_decode; _bpe: the byte-level BPE merge loop; _twins: Python-callable twins of the kernels,
for tests; _mapguard: the SIGBUS guard of the model's mapping) is compiled once,
with no ISA flags. Each ISA unit holds only its dot products and attention loops and
fills one kernel table; the runtime picks a table by cpuid. The units, their sources and
flags are listed once, in guanaco_rt/_kernels/isa_list.py, which this file and
_kernels/dispatch.py both read: adding an ISA is one source and one line there. A C unit
(isa/<name>.c) is compiled with a copy of the shim _isa_unit.pyx into the module
_isa_<name>, with the unit's flags; a unit whose flags the compiler refuses is left out
(show_config lists what was built). Never -march=native.

-ffp-contract=off keeps the compiler from fusing a*b+c into FMAs behind our back:
the scalar parts of a unit built with -mfma must round as the generic spec does
(explicit FMA intrinsics are unaffected). OpenMP is probed with a test compile;
without it the build warns loudly and the kernels run on one thread.

Cython runs, and the compiler is probed, only when extensions are built (not for
an sdist). GUANACO_RT_DEBUG=1 turns Cython's bounds and wraparound checks back on.
"""
import glob
import os
import platform
import shutil
import sys
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler
except ImportError:  # pragma: no cover - very old setuptools
    from distutils.ccompiler import new_compiler
    from distutils.sysconfig import customize_compiler

HERE = os.path.dirname(os.path.abspath(__file__))
KDIR = os.path.join("guanaco_rt", "_kernels")
DEBUG = os.environ.get("GUANACO_RT_DEBUG", "") not in ("", "0")
RUNTIME = ["_quants", "_governor", "_ops", "_lora", "_engine", "_sampling", "_decode", "_twins", "_mapguard", "_bpe",
           "_quantize"]


def _isa_list():
    # loaded by path: importing guanaco_rt would need the extensions this file builds
    spec = {}
    with open(os.path.join(HERE, KDIR, "isa_list.py")) as f:
        exec(compile(f.read(), "isa_list.py", "exec"), spec)
    return spec["UNITS"], spec["module_of"]


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


def isa_units():
    """(module name, sources, flags) of every ISA unit this compiler can build for this machine type."""
    units, module_of = _isa_list()
    machine = platform.machine().lower()
    out = []
    shims = os.path.join("build", "isa_units")
    for u in units:
        flags = list(u["flags"])
        if u["arch"] and machine not in u["arch"]:
            continue
        if flags and not _try_compile("int main(void){return 0;}", flags, []):
            sys.stderr.write(f"guanaco_rt: the compiler refuses {' '.join(flags)}: the {u['name']} unit is not built\n")
            continue
        mod = module_of(u)
        if u["source"].endswith(".pyx"):
            out.append((mod, [os.path.join(KDIR, u["source"])], flags))
            continue
        # a C unit: its own copy of the shim (Cython names a module's init after its file)
        os.makedirs(shims, exist_ok=True)
        shim = os.path.join(shims, mod + ".pyx")
        with open(os.path.join(KDIR, "_isa_unit.pyx")) as f:
            text = f.read()
        if not os.path.exists(shim) or open(shim).read() != text:
            with open(shim, "w") as f:
                f.write(text)
        # and its own object of the source: two units may build one source (with other flags)
        src = os.path.join(shims, mod + "_unit.c")
        text = f'#include "{u["source"]}"\n'
        if not os.path.exists(src) or open(src).read() != text:
            with open(src, "w") as f:
                f.write(text)
        out.append((mod, [shim, src], flags + [f"-DGR_UNIT_TABLE=gr_isa_{u['name']}"]))
    return out


def extensions():
    """The Extensions, cythonized: called only when they are about to be built."""
    import numpy
    from Cython.Build import cythonize

    omp_c, omp_l = openmp_flags()
    base = ["-O3", "-fno-strict-aliasing", "-ffp-contract=off"]
    # _quantize at -O2: at -O3 GCC unrolls its 16-weight fitting loops whole and spills (Q2_K, Q6_K
    # measured 10-20% slower than at -O2, side by side with ggml's own)
    mods = [(name, [os.path.join(KDIR, name + ".pyx")], ["-O2"] if name == "_quantize" else []) for name in RUNTIME]
    mods += isa_units()
    # a C unit's source reaches its module through an #include: rebuild when it (or a header) changes
    depends = sorted(glob.glob(os.path.join(KDIR, "*.h")) + glob.glob(os.path.join(KDIR, "isa", "*.[ch]")))
    exts = [Extension(f"guanaco_rt._kernels.{name}", sources,
                      include_dirs=[KDIR, numpy.get_include()],   # numpy/random/bitgen.h: the sampler's RNG
                      extra_compile_args=base + flags + omp_c, extra_link_args=omp_l, depends=depends)
            for name, sources, flags in mods]
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


class BuildExt(build_ext):
    def finalize_options(self):
        self.distribution.ext_modules = extensions()
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1   # the units compile independently

    def build_extension(self, ext):
        super().build_extension(ext)
        self._unit_stub(ext.name, os.path.dirname(self.get_ext_fullpath(ext.name)))

    def copy_extensions_to_source(self):
        super().copy_extensions_to_source()     # an in-place build: the stubs go beside the modules too
        for ext in self.extensions:
            self._unit_stub(ext.name, KDIR)

    def _unit_stub(self, name, folder):
        # a C unit's module is made from the shared shim: it gets the shim's typing stub under
        # its own name
        mod = name.rsplit(".", 1)[-1]
        if mod.startswith("_isa_") and mod != "_isa_unit":
            self.copy_file(os.path.join(KDIR, "_isa_unit.pyi"), os.path.join(folder, mod + ".pyi"))


setup(ext_modules=[Extension("guanaco_rt._kernels._engine", [])],   # placeholder: BuildExt replaces it
      cmdclass={"build_ext": BuildExt})
