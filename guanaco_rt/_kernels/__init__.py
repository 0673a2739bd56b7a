"""Cython kernels: the runtime (_quants, _engine, _sampling, _decode), compiled once,
and one unit per ISA (listed in isa_list.py); see dispatch.py for the choice."""
try:
    from . import _engine  # noqa: F401
except ImportError as e:  # the usual cause: importing from a source checkout that was never built
    import os as _os
    raise ImportError(
        f"guanaco_rt's compiled kernels are missing from {_os.path.dirname(_os.path.abspath(__file__))}: "
        "this is an unbuilt source tree (run from a checkout's root, its guanaco_rt/ folder comes before "
        "an installed package). Install the package (pip install .) and import it from another "
        "directory, or build it in place first: python setup.py build_ext --inplace "
        f"(the import error: {e})") from e
