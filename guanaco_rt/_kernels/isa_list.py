"""The ISA units: one line each. setup.py (which loads this file by path, without importing
the package) builds them; dispatch.py picks one at run time. Data only: no imports.

Adding an ISA is one source and one line here. Each line:
  name      the unit's name (GUANACO_RT_ISA=name forces it; show_config reports it)
  source    its source, relative to guanaco_rt/_kernels: a Cython unit (.pyx, module _<name>)
            or a C unit (.c: defines ``const isa_kernels_t gr_isa_<name>``, isa_table.h; setup.py
            compiles it with the shim _isa_unit.pyx into the module _isa_<name>)
  flags     its compile flags (never -march=native)
  features  the CPU features it needs, as _engine.cpu_features() names them
  fallback  the unit whose kernels fill the gaps of its table (None: the end of the chain)
  arch      the platform.machine() values it builds on (empty: all)
  default   whether dispatch may choose it unaided (False: tests and GUANACO_RT_ISA only)
Units are listed worst first: dispatch picks the last default unit the CPU runs.
"""

X86 = ("x86_64", "amd64", "i386", "i686")
ARM64 = ("aarch64", "arm64")
_AVX2 = ("-mavx2", "-mfma", "-mf16c")
_AVX2_F = ("avx2", "fma", "f16c")
_AVX512 = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mavx512vbmi") + _AVX2
_AVX512_F = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni", "avx512vbmi") + _AVX2_F

UNITS = (
    dict(name="generic", source="isa/generic.c", flags=(), features=(), fallback=None, arch=(), default=True),
    # x86: isa/x86.c built four times, at 256 bits (three ways to the int8 dot products) and 512
    dict(name="avx2", source="isa/x86.c", flags=_AVX2 + ("-DGR_WIDTH=256",), features=_AVX2_F,
         fallback="generic", arch=X86, default=True),
    # the avx_vnni body on CPUs with AVX-512 VNNI but not AVX-VNNI (Zen 4, Xeons before Sapphire Rapids)
    dict(name="vnni256", source="isa/x86.c", flags=_AVX512 + ("-DGR_WIDTH=256",), features=_AVX512_F,
         fallback="generic", arch=X86, default=False),
    dict(name="avx_vnni", source="isa/x86.c", flags=_AVX2 + ("-mavxvnni", "-DGR_WIDTH=256"),
         features=_AVX2_F + ("avxvnni",), fallback="generic", arch=X86, default=True),
    dict(name="avx512", source="isa/x86.c", flags=_AVX512 + ("-DGR_WIDTH=512",), features=_AVX512_F,
         fallback="generic", arch=X86, default=True),
    # aarch64: isa/neon.c built three times; each names its table after the build (neon.c)
    dict(name="neon", source="isa/neon.c", flags=("-march=armv8-a",), features=("neon",), fallback="generic",
         arch=ARM64, default=True),
    dict(name="neon_dotprod", source="isa/neon.c", flags=("-march=armv8.2-a+dotprod",),
         features=("neon", "dotprod"), fallback="generic", arch=ARM64, default=True),
    dict(name="neon_i8mm", source="isa/neon.c", flags=("-march=armv8.2-a+dotprod+i8mm",),
         features=("neon", "dotprod", "i8mm"), fallback="generic", arch=ARM64, default=True),
)


def module_of(unit):
    """The extension module (in guanaco_rt._kernels) that holds a unit."""
    return "_" + unit["name"] if unit["source"].endswith(".pyx") else "_isa_" + unit["name"]
