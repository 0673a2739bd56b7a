# cython: language_level=3
from libc.stdint cimport uint16_t, int64_t

ctypedef void (*to_float_fn)(const void* x, float* y, int64_t k) noexcept nogil    # k weights -> y (k,)
ctypedef void (*from_float_fn)(const float* x, void* y, int64_t k) noexcept nogil  # x (k,) -> k quantized

cdef struct type_traits_t:
    int blck_size               # weights per block
    int type_size               # bytes per block
    int vec_dot_type            # the activation format its dot products pair with
    to_float_fn to_float        # dequantize
    from_float_fn from_float    # quantize; NULL unless an activation format

cdef const type_traits_t* type_traits(int t) noexcept nogil      # NULL for an unknown type
cdef int64_t row_size(const type_traits_t* tt, int64_t n) noexcept nogil
cdef uint16_t fp32_to_fp16(float f) noexcept nogil
