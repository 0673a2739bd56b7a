"""Pick the kernels once, at import, from cpuid.

Each ISA unit (_generic, _avx2) fills one table of kernels; the engine runs with a
KernelSet: one unit's table, the generic unit's entries filling its gaps.
``GUANACO_RT_ISA=generic|avx2`` forces a unit; asking for one the CPU lacks raises
instead of dying later with "Illegal instruction".
"""
import logging
import os

from ..errors import GuanacoError
from . import _engine, _generic

log = logging.getLogger("guanaco_rt")

ISAS = ("generic", "avx2")
_SETS: dict[str, _engine.KernelSet] = {}


def available_isas():
    """ISAs that are both built into this wheel and supported by this CPU, best last."""
    out = ["generic"]
    if _engine.cpu_has_avx2():
        try:
            from . import _avx2  # noqa: F401
            out.append("avx2")
        except ImportError:
            pass
    return out


def kernel_set(isa):
    """The KernelSet of one ISA unit (built once)."""
    if isa not in _SETS:
        if isa == "generic":
            unit = _generic
        elif isa == "avx2":
            if not _engine.cpu_has_avx2():
                raise GuanacoError("GUANACO_RT_ISA=avx2, but this CPU lacks AVX2/FMA/F16C")
            from . import _avx2 as unit
        else:
            raise GuanacoError(f"GUANACO_RT_ISA={isa!r} is not one of {ISAS}")
        _SETS[isa] = _engine.KernelSet(isa, unit.kernel_table(), _generic.kernel_table())
    return _SETS[isa]


def default_kernels():
    """The KernelSet models use unless told otherwise: GUANACO_RT_ISA, else the best unit
    this CPU runs. Chosen on first use, so a bad GUANACO_RT_ISA is a GuanacoError there
    (e.g. when a Model is built), not an import failure."""
    forced = os.environ.get("GUANACO_RT_ISA", "").strip().lower()
    ks = kernel_set(forced or available_isas()[-1])
    log.debug("guanaco_rt kernels: %s", ks.isa)
    return ks
