"""Cython kernels: the runtime (_quants, _engine, _sampling, _decode), compiled once,
and one unit per ISA (listed in isa_list.py); see dispatch.py for the choice."""
try:
    from . import _engine  # noqa: F401
except ImportError as e:  # the usual cause: importing from a source checkout that was never built
    raise ImportError(
        "guanaco_rt's compiled kernels are missing (" + str(e) + "). Install the package "
        "(pip install .) and import it from outside the source tree, or build it in place "
        "first: python setup.py build_ext --inplace") from e
