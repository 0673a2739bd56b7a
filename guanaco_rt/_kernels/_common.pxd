# cython: language_level=3
# Scalar helpers every kernel module inlines: half floats and rounding. Each module
# that uses fp16_to_fp32 calls fill_fp16_table() once at import.
from libc.stdint cimport uint16_t, uint32_t, uint8_t, int8_t
from libc.string cimport memcpy
from libc.math cimport ldexpf, INFINITY, NAN

cdef extern from "_platform.h" nogil:
    float gr_fp16_table[65536]     # this module's fp16 -> fp32 table
    int gr_openmp_enabled()
    int gr_omp_max_threads()
    int gr_omp_release()
    int gr_cpu_has_avx2()
    unsigned long long gr_cpu_features()
    const char* GR_CPU_FEATURE_NAMES

cdef inline float fp16_compute(uint16_t h) noexcept nogil:
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

cdef inline void fill_fp16_table() noexcept nogil:
    cdef int i
    for i in range(65536):
        gr_fp16_table[i] = fp16_compute(<uint16_t>i)

cdef inline float fp16_to_fp32(uint16_t h) noexcept nogil:
    return gr_fp16_table[h]

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

# ---- k-quant scale unpacking (layouts at block_q3_K and block_q4_K) ----
cdef inline void unpack_q3_K_scales(const uint8_t* s, int8_t* out) noexcept nogil:
    # 16 six-bit scales, returned already offset by -32 (see block_q3_K)
    cdef int j
    for j in range(16):
        out[j] = <int8_t>((((s[j % 8] >> (4 * (j // 8))) & 0xF) | (((s[8 + j % 4] >> (2 * (j // 4))) & 3) << 4)) - 32)

cdef inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) noexcept nogil:
    if j < 4:
        d[0] = q[j] & 63
        m[0] = q[j + 4] & 63
    else:
        d[0] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)
        m[0] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4)
