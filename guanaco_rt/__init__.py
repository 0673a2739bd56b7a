"""guanaco_rt: run Guanaco / LLaMA models (ggjt v3 .ggmlv3.*.bin and GGUF files) inside Python apps."""
import logging

from .api import LLM
from .demo import demo_model_path
from .errors import (
    Cancelled,
    ChatTemplateError,
    ContextFullError,
    FormatError,
    GuanacoError,
    InvalidArgumentError,
    InvalidRequestError,
    ModelClosedError,
    ModelFileChangedError,
    SessionBusyError,
    StateError,
    UnsupportedVersionError,
)
from .metrics import PerplexityResult, perplexity
from .model import Model
from .quantizer import quantize
from .results import GenerationResult, Timings
from .sampling import SamplingParams
from .session import Session

__version__ = "0.1.0"   # the one version source: pyproject.toml reads it

# a library logs through "guanaco_rt" and never prints: without this handler, Python's
# last-resort handler would write its warnings to stderr
logging.getLogger("guanaco_rt").addHandler(logging.NullHandler())


def show_config() -> dict:
    """Which kernels run here: the ISA unit chosen and why, every unit's state (built, run by
    this CPU, loaded: a unit that fails to load shows its error here, and "isa" is then None),
    the CPU's features, OpenMP, default thread count. Returns a dict and prints nothing."""
    from ._kernels import _engine, dispatch
    from .model import default_threads
    return {"version": __version__, **dispatch.config(), "cpu_features": sorted(_engine.cpu_features()),
            "openmp": _engine.openmp_enabled(), "omp_max_threads": _engine.omp_max_threads(),
            "default_threads": default_threads()}


__all__ = ["Model", "Session", "SamplingParams", "GenerationResult", "Timings", "show_config", "__version__",
           "GuanacoError", "FormatError", "UnsupportedVersionError", "ContextFullError", "SessionBusyError",
           "StateError", "Cancelled", "ModelClosedError", "ModelFileChangedError", "perplexity", "PerplexityResult",
           "demo_model_path", "LLM", "InvalidRequestError", "ChatTemplateError", "InvalidArgumentError", "quantize"]
