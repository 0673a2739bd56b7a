# cython: language_level=3
# The kernel table an ISA unit fills, declared in isa_table.h (each function type's
# contract is documented there). Units hand their table over as a PyCapsule named
# ISA_CAPSULE (never an integer address).
from libc.stdint cimport int64_t

cdef extern from "isa_table.h" nogil:
    ctypedef void (*gr_from_float_fn)(const float* x, void* y, int64_t k) noexcept nogil
    ctypedef void (*vec_dot_fn)(int n, float* s, const void* x, const void* y) noexcept nogil
    ctypedef void (*vec_dot_x4_fn)(int n, float* s, int64_t s_stride, const void* x, const void* y,
                                   int64_t y_stride) noexcept nogil
    ctypedef void (*dot_r8_fn)(int n, float* s, int64_t s_stride, const void* x, const void* y,
                               int64_t y_stride) noexcept nogil
    ctypedef void (*kv_scores_fn)(float* a, const float* q, const void* kv, int64_t off, int64_t stride,
                                  int n_pos, int n, float scale, int f16) noexcept nogil
    ctypedef void (*kv_mix_fn)(float* out, const float* a, const void* kv, int64_t off, int64_t stride,
                               int n_pos, int n, int f16) noexcept nogil

    ctypedef struct type_kernels_t:
        vec_dot_fn vec_dot
        vec_dot_x4_fn vec_dot_x4
        dot_r8_fn dot_r8
        dot_r8_fn dot_r8_x4
        gr_from_float_fn quantize

    ctypedef struct isa_kernels_t:
        const char* name
        type_kernels_t types[36]     # GGML_TYPE_COUNT (isa_table.h sizes it)
        kv_scores_fn kv_scores
        kv_mix_fn kv_mix

    const char* ISA_CAPSULE "GR_ISA_CAPSULE"
