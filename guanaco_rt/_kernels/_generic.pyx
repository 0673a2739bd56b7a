# cython: language_level=3
"""Generic (portable C) kernels: the readable spec and the fallback on any CPU."""
include "_common.pxi"
include "_quants.pxi"
include "_dots_generic.pxi"
include "_attn_generic.pxi"
include "_engine.pxi"
include "_sampling.pxi"
include "_decode.pxi"

ISA = "generic"
_fill_fp16_table()
init_generic_traits()
