# Shared by every ISA module: half-float conversion, rounding helpers and the
# type-traits table (ggml's idea: per weight type its dequantizer, its vec_dot
# and the activation format the vec_dot pairs with).
from libc.stdint cimport uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, int64_t
from libc.string cimport memcpy, memset, memmove
from libc.math cimport fabsf, sqrtf, expf, roundf, ldexpf, INFINITY, NAN, powf, cosf, sinf, pow, cos, sin
from libc.stdlib cimport malloc, free
from cython.parallel cimport prange, parallel
cimport cython

from guanaco_rt._kernels.ggml_blocks cimport *

ctypedef void (*to_float_fn)(const void* x, float* y, int64_t k) noexcept nogil    # k weights -> y (k,)
ctypedef void (*from_float_fn)(const float* x, void* y, int64_t k) noexcept nogil  # x (k,) -> k quantized
ctypedef void (*vec_dot_fn)(int n, float* s, const void* x, const void* y) noexcept nogil  # s = <x, y>, n elements

# s[t * s_stride] = <x, y + t * y_stride bytes> for t = 0..3: one weight row, 4 activation rows
ctypedef void (*vec_dot_x4_fn)(int n, float* s, int64_t s_stride, const void* x, const void* y,
                               int64_t y_stride) noexcept nogil

cdef to_float_fn TO_FLOAT[GGML_TYPE_COUNT]
cdef vec_dot_x4_fn VEC_DOT_X4[GGML_TYPE_COUNT]   # NULL: use VEC_DOT per row
cdef from_float_fn FROM_FLOAT[GGML_TYPE_COUNT]
cdef vec_dot_fn VEC_DOT[GGML_TYPE_COUNT]
cdef int VEC_DOT_TYPE[GGML_TYPE_COUNT]
cdef int BLCK_SIZE[GGML_TYPE_COUNT]
cdef int TYPE_SIZE[GGML_TYPE_COUNT]

cdef inline int64_t row_size(int t, int64_t n) noexcept nogil:
    return n // BLCK_SIZE[t] * TYPE_SIZE[t]

# ---- half floats -----------------------------------------------------------
# fp16 -> fp32 through a 256 KiB table filled at import, as ggml does.
cdef float FP16_TABLE[65536]

cdef float _fp16_compute(uint16_t h) noexcept nogil:
    cdef int sign = (h >> 15) & 1
    cdef int e = (h >> 10) & 0x1f
    cdef int mant = h & 0x3ff
    cdef float v
    if e == 0:
        v = ldexpf(<float>mant, -24)
    elif e == 31:
        v = INFINITY if mant == 0 else NAN
    else:
        v = ldexpf(<float>(mant + 1024), e - 25)
    return -v if sign else v

cdef void _fill_fp16_table() noexcept nogil:
    cdef int i
    for i in range(65536):
        FP16_TABLE[i] = _fp16_compute(<uint16_t>i)

cdef inline float fp16_to_fp32(uint16_t h) noexcept nogil:
    return FP16_TABLE[h]

cdef uint16_t fp32_to_fp16(float f) noexcept nogil:
    # round to nearest even, like numpy's float16 cast and F16C's vcvtps2ph
    cdef uint32_t x, f_exp, f_sig
    cdef uint16_t h_sgn, h_exp, h_sig
    memcpy(&x, &f, 4)
    h_sgn = <uint16_t>((x & 0x80000000u) >> 16)
    f_exp = x & 0x7f800000u
    if f_exp >= 0x47800000u:
        if f_exp == 0x7f800000u and (x & 0x007fffffu):
            return <uint16_t>(h_sgn | 0x7e00u)
        return <uint16_t>(h_sgn | 0x7c00u)
    if f_exp <= 0x38000000u:
        if f_exp < 0x33000000u:
            return h_sgn
        f_exp >>= 23
        f_sig = 0x00800000u + (x & 0x007fffffu)
        f_sig >>= (113 - f_exp)
        if (f_sig & 0x00003fffu) != 0x00001000u or (x & 0x000007ffu):
            f_sig += 0x00001000u
        h_sig = <uint16_t>(f_sig >> 13)
        return <uint16_t>(h_sgn + h_sig)
    h_exp = <uint16_t>((f_exp - 0x38000000u) >> 13)
    f_sig = x & 0x007fffffu
    if (f_sig & 0x00003fffu) != 0x00001000u:
        f_sig += 0x00001000u
    h_sig = <uint16_t>(f_sig >> 13)
    return <uint16_t>(h_sgn + h_exp + h_sig)

cdef inline int nearest_int(float fval) noexcept nogil:
    # round half to even for |fval| < 2^22, as ggml's nearest_int
    cdef float val = fval + 12582912.0
    cdef int i
    memcpy(&i, &val, 4)
    return (i & 0x007fffff) - 0x00400000

cdef inline uint32_t load_u32(const uint8_t* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v
