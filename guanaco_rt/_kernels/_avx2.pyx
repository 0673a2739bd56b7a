# cython: language_level=3
"""Kernels for x86-64 with AVX2 + FMA + F16C; compiled with those flags only.

Import only after cpuid says the CPU has them (guanaco_rt._kernels.dispatch).
"""
include "_common.pxi"
include "_quants.pxi"
include "_dots_generic.pxi"
include "_dots_avx2.pxi"
include "_attn_avx2.pxi"
include "_engine.pxi"
include "_sampling.pxi"
include "_decode.pxi"

ISA = "avx2"
_fill_fp16_table()
init_generic_traits()
init_avx2_traits()
init_avx2_x4_traits()
