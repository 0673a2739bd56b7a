"""Pick the kernel module once, at import, from cpuid.

``GUANACO_RT_ISA=generic|avx2`` forces a variant; asking for one the CPU lacks
raises instead of dying later with "Illegal instruction".
"""
import logging
import os

from . import _generic
from ..errors import GuanacoError

log = logging.getLogger("guanaco_rt")

ISAS = ("generic", "avx2")


def available_isas():
    """ISAs that are both built into this wheel and supported by this CPU, best last."""
    out = ["generic"]
    if _generic.cpu_has_avx2():
        try:
            from . import _avx2  # noqa: F401
            out.append("avx2")
        except ImportError:
            pass
    return out


def load(isa):
    if isa == "generic":
        return _generic
    if isa == "avx2":
        if not _generic.cpu_has_avx2():
            raise GuanacoError("GUANACO_RT_ISA=avx2, but this CPU lacks AVX2/FMA/F16C")
        from . import _avx2
        return _avx2
    raise GuanacoError(f"GUANACO_RT_ISA={isa!r} is not one of {ISAS}")


def _choose():
    forced = os.environ.get("GUANACO_RT_ISA", "").strip().lower()
    if forced:
        return load(forced)
    return load(available_isas()[-1])


kernels = _choose()
log.debug("guanaco_rt kernels: %s", kernels.ISA)
