"""Pick the kernels once, on first use, from cpuid.

The units are listed in isa_list.py (worst first, each with the CPU features it needs and
its fallback unit); each fills one table of kernels, and the engine runs with a KernelSet:
one unit's table, its gaps filled along its fallback chain (avx512 -> avx2 -> generic).

Unaided, the choice is the last default unit of the list that was built and that this CPU
runs. A unit the CPU runs but that fails to load is an error (GuanacoError at the first
Model, and in show_config), never a silent step down: ``GUANACO_RT_ISA=<unit>`` forces a
unit, the way out; forcing one the CPU lacks raises instead of dying later with "Illegal
instruction".
"""
import importlib
import importlib.util
import logging
import os
import platform

from ..errors import GuanacoError
from . import _engine
from .isa_list import UNITS, module_of

log = logging.getLogger("guanaco_rt")

ISAS = tuple(u["name"] for u in UNITS)
_BY_NAME = {u["name"]: u for u in UNITS}
_SETS: dict[str, _engine.KernelSet] = {}
_MODULES: dict[str, object] = {}


def _import(name):
    # the unit's module; an ImportError is kept and raised again on every later ask
    if name not in _MODULES:
        try:
            _MODULES[name] = importlib.import_module(f"{__package__}.{module_of(_BY_NAME[name])}")
        except ImportError as e:
            _MODULES[name] = e
    mod = _MODULES[name]
    if isinstance(mod, ImportError):
        raise mod
    return mod


def built(name):
    """Whether this installation holds the unit's module (setup.py skips what the compiler refuses)."""
    return importlib.util.find_spec(f"{__package__}.{module_of(_BY_NAME[name])}") is not None


def missing_features(name):
    """The CPU features the unit needs and this CPU lacks (cpuid + xgetbv), sorted."""
    return sorted(set(_BY_NAME[name]["features"]) - _engine.cpu_features())


def unit_status(name):
    """One unit's state here: 'ok', 'not for <machine>', 'not built', 'cpu lacks <features>', or
    'failed to load: <error>'."""
    arch = _BY_NAME[name]["arch"]
    if arch and platform.machine().lower() not in arch:
        return f"not for {platform.machine()} (a unit for {', '.join(arch)} only)"
    if not built(name):
        return "not built"
    lacks = missing_features(name)
    if lacks:
        return "cpu lacks " + " ".join(lacks)
    try:
        _import(name)
    except ImportError as e:
        return f"failed to load: {e}"
    return "ok"


def available_isas():
    """Units built into this installation that this CPU runs and that load, worst first
    (test-only units included: forcing one, or a test, may use it)."""
    return [u["name"] for u in UNITS if unit_status(u["name"]) == "ok"]


def chain(name):
    """The unit and its fallbacks, in the order they fill a KernelSet."""
    out = [name]
    while _BY_NAME[out[-1]]["fallback"] is not None:
        out.append(_BY_NAME[out[-1]]["fallback"])
    return out


def kernel_set(isa, source="GUANACO_RT_ISA"):
    """The KernelSet of one ISA unit (built once; the name in any case). GuanacoError if this CPU
    cannot run it or no unit has that name; ``source`` names where the name came from."""
    isa = isa.strip().lower()
    if isa not in _SETS:
        if isa not in _BY_NAME:
            raise GuanacoError(f"{source}={isa!r} is not one of {ISAS}")
        links = []
        for name in chain(isa):
            status = unit_status(name)
            if status != "ok":
                runs = [u for u in available_isas() if _BY_NAME[u]["default"]]
                what = f"the {name} kernel unit" + (f" (in {isa}'s chain)" if name != isa else "")
                raise GuanacoError(f"{source}={isa!r}: {what} cannot run here: {status} (this machine runs {runs})")
            links.append((name, _import(name).kernel_table()))
        _SETS[isa] = _engine.KernelSet(isa, links)
    return _SETS[isa]


def choose():
    """(unit, why): the unit models use unless told otherwise. GUANACO_RT_ISA if set, else the
    best default unit this CPU runs. GuanacoError for a forced unit that cannot run, or when
    the best unit the CPU runs was built but fails to load."""
    forced = os.environ.get("GUANACO_RT_ISA", "").strip().lower()
    if forced:
        kernel_set(forced)
        return forced, "forced by GUANACO_RT_ISA"
    skipped = []
    for u in reversed(UNITS):
        if not u["default"]:
            continue
        status = unit_status(u["name"])
        if status.startswith("failed to load"):
            raise GuanacoError(f"the {u['name']} kernel unit {status} (this CPU runs it: set GUANACO_RT_ISA to "
                               f"one of {[x for x in chain(u['name'])[1:]]} to run without it)")
        if status == "ok":
            why = "the best unit this CPU runs"
            return u["name"], why + (f" ({'; '.join(skipped)})" if skipped else "")
        if not status.startswith("not for "):        # another machine type's units: no news
            skipped.append(f"{u['name']}: {status}")
    raise GuanacoError("no kernel unit runs here: " + "; ".join(skipped))


def default_kernels():
    """The KernelSet models use unless told otherwise (choose()). Chosen on first use, so a
    bad GUANACO_RT_ISA is a GuanacoError there (e.g. when a Model is built), not an import failure."""
    isa, why = choose()
    ks = kernel_set(isa)
    log.debug("guanaco_rt kernels: %s (%s)", ks.isa, why)
    return ks


def config_units():
    """{unit: its state here (unit_status)} for every unit of isa_list.py"""
    return {u["name"]: unit_status(u["name"]) for u in UNITS}


def config():
    """What show_config reports about the kernels: every unit of isa_list.py with its state,
    the one chosen and why, or (isa None) the error that prevents a choice. A bad
    GUANACO_RT_ISA raises GuanacoError, as it does at the first Model."""
    out = {"units": config_units(), "available_isas": available_isas()}
    try:
        out["isa"], out["isa_why"] = choose()
        out["kernel_chain"] = list(kernel_set(out["isa"]).chain)
    except GuanacoError as e:
        if os.environ.get("GUANACO_RT_ISA", "").strip():
            raise
        out["isa"], out["isa_why"], out["kernel_chain"] = None, str(e), []
    return out
