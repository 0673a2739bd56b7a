# cython: language_level=3
"""The block-format table of the runtime: per ggml type its block size, byte size,
the activation format its dot product pairs with (ggml's vec_dot_type), its
dequantizer and (for activation formats) its quantizer -- the generic, readable
spec, compiled once. Every ISA unit's dot products agree with these formats.
"""
from libc.stdint cimport uint8_t, int8_t, uint16_t, int16_t, uint32_t, int64_t
from libc.string cimport memcpy, memset
from libc.math cimport fabsf, roundf

import numpy as np

from guanaco_rt._kernels.ggml_blocks cimport *
from guanaco_rt._kernels._common cimport (fp16_to_fp32, fill_fp16_table, nearest_int, load_u32, unpack_q3_K_scales,
                                          get_scale_min_k4)


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

# ---- dequantize: x (k/blck blocks) -> y (k,) -----------------------------------
cdef void dequantize_row_f32(const void* vx, float* y, int64_t k) noexcept nogil:
    memcpy(y, vx, k * 4)

cdef void dequantize_row_f16(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const uint16_t* x = <const uint16_t*>vx
    cdef int64_t i
    for i in range(k):
        y[i] = fp16_to_fp32(x[i])

cdef void dequantize_row_q4_0(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_q4_0* x = <const block_q4_0*>vx
    cdef int64_t i
    cdef int j
    cdef float d
    for i in range(k // QK4_0):
        d = fp16_to_fp32(x[i].d)
        for j in range(16):
            y[i*32 + j] = ((x[i].qs[j] & 0x0F) - 8) * d
            y[i*32 + j + 16] = ((x[i].qs[j] >> 4) - 8) * d

cdef void dequantize_row_q4_1(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_q4_1* x = <const block_q4_1*>vx
    cdef int64_t i
    cdef int j
    cdef float d, m
    for i in range(k // QK4_1):
        d = fp16_to_fp32(x[i].d)
        m = fp16_to_fp32(x[i].m)
        for j in range(16):
            y[i*32 + j] = (x[i].qs[j] & 0x0F) * d + m
            y[i*32 + j + 16] = (x[i].qs[j] >> 4) * d + m

cdef void dequantize_row_q5_0(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_q5_0* x = <const block_q5_0*>vx
    cdef int64_t i
    cdef int j
    cdef uint32_t qh
    cdef float d
    for i in range(k // QK5_0):
        d = fp16_to_fp32(x[i].d)
        qh = load_u32(x[i].qh)
        for j in range(16):
            y[i*32 + j] = (<int>((x[i].qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10)) - 16) * d
            y[i*32 + j + 16] = (<int>((x[i].qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - 16) * d

cdef void dequantize_row_q5_1(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_q5_1* x = <const block_q5_1*>vx
    cdef int64_t i
    cdef int j
    cdef uint32_t qh
    cdef float d, m
    for i in range(k // QK5_1):
        d = fp16_to_fp32(x[i].d)
        m = fp16_to_fp32(x[i].m)
        qh = load_u32(x[i].qh)
        for j in range(16):
            y[i*32 + j] = <int>((x[i].qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10)) * d + m
            y[i*32 + j + 16] = <int>((x[i].qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) * d + m

cdef void dequantize_row_q8_0(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_q8_0* x = <const block_q8_0*>vx
    cdef int64_t i
    cdef int j
    cdef float d
    for i in range(k // QK8_0):
        d = fp16_to_fp32(x[i].d)
        for j in range(32):
            y[i*32 + j] = x[i].qs[j] * d

cdef void dequantize_row_q8_1(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_q8_1* x = <const block_q8_1*>vx
    cdef int64_t i
    cdef int j
    for i in range(k // QK8_1):
        for j in range(32):
            y[i*32 + j] = x[i].qs[j] * x[i].d

cdef void dequantize_row_q8_K(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_q8_K* x = <const block_q8_K*>vx
    cdef int64_t i
    cdef int j
    for i in range(k // QK_K):
        for j in range(QK_K):
            y[i*QK_K + j] = x[i].qs[j] * x[i].d

cdef void dequantize_row_q2_K(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_q2_K* x = <const block_q2_K*>vx
    cdef int64_t i
    cdef int _n, _j, l, shift, is_
    cdef float d, dmin, dl, ml
    cdef const uint8_t* q
    cdef uint8_t sc
    for i in range(k // QK_K):
        d = fp16_to_fp32(x[i].d)
        dmin = fp16_to_fp32(x[i].dmin)
        q = <const uint8_t*>&x[i].qs[0]
        is_ = 0
        for _n in range(2):
            shift = 0
            for _j in range(4):
                sc = x[i].scales[is_]
                is_ += 1
                dl = d * (sc & 0xF)
                ml = dmin * (sc >> 4)
                for l in range(16):
                    y[l] = dl * ((q[l] >> shift) & 3) - ml
                sc = x[i].scales[is_]
                is_ += 1
                dl = d * (sc & 0xF)
                ml = dmin * (sc >> 4)
                for l in range(16):
                    y[l + 16] = dl * ((q[l + 16] >> shift) & 3) - ml
                shift += 2
                y += 32
            q += 32

cdef void dequantize_row_q3_K(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_q3_K* x = <const block_q3_K*>vx
    cdef int64_t i
    cdef int _n, _j, l, shift, is_
    cdef uint8_t m
    cdef float d_all, dl
    cdef const uint8_t* q
    cdef const uint8_t* hm
    cdef int8_t sc[16]
    for i in range(k // QK_K):
        d_all = fp16_to_fp32(x[i].d)
        unpack_q3_K_scales(x[i].scales, sc)
        q = <const uint8_t*>&x[i].qs[0]
        hm = <const uint8_t*>&x[i].hmask[0]
        m = 1
        is_ = 0
        for _n in range(2):
            shift = 0
            for _j in range(4):
                dl = d_all * sc[is_]
                is_ += 1
                for l in range(16):
                    y[l] = dl * (((q[l] >> shift) & 3) - (0 if (hm[l] & m) else 4))
                dl = d_all * sc[is_]
                is_ += 1
                for l in range(16):
                    y[l + 16] = dl * (((q[l + 16] >> shift) & 3) - (0 if (hm[l + 16] & m) else 4))
                shift += 2
                m <<= 1
                y += 32
            q += 32

cdef void dequantize_row_q4_K(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_q4_K* x = <const block_q4_K*>vx
    cdef int64_t i
    cdef int _j, l, is_
    cdef uint8_t sc, m
    cdef float d, dmin, d1, m1, d2, m2
    cdef const uint8_t* q
    for i in range(k // QK_K):
        d = fp16_to_fp32(x[i].d)
        dmin = fp16_to_fp32(x[i].dmin)
        q = <const uint8_t*>&x[i].qs[0]
        is_ = 0
        for _j in range(4):
            get_scale_min_k4(is_, x[i].scales, &sc, &m)
            d1 = d * sc
            m1 = dmin * m
            get_scale_min_k4(is_ + 1, x[i].scales, &sc, &m)
            d2 = d * sc
            m2 = dmin * m
            for l in range(32):
                y[l] = d1 * (q[l] & 0xF) - m1
            for l in range(32):
                y[l + 32] = d2 * (q[l] >> 4) - m2
            y += 64
            q += 32
            is_ += 2

cdef void dequantize_row_q5_K(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_q5_K* x = <const block_q5_K*>vx
    cdef int64_t i
    cdef int _j, l, is_
    cdef uint8_t sc, m, u1, u2
    cdef float d, dmin, d1, m1, d2, m2
    cdef const uint8_t* ql
    cdef const uint8_t* qh
    for i in range(k // QK_K):
        d = fp16_to_fp32(x[i].d)
        dmin = fp16_to_fp32(x[i].dmin)
        ql = <const uint8_t*>&x[i].qs[0]
        qh = <const uint8_t*>&x[i].qh[0]
        is_ = 0
        u1 = 1
        u2 = 2
        for _j in range(4):
            get_scale_min_k4(is_, x[i].scales, &sc, &m)
            d1 = d * sc
            m1 = dmin * m
            get_scale_min_k4(is_ + 1, x[i].scales, &sc, &m)
            d2 = d * sc
            m2 = dmin * m
            for l in range(32):
                y[l] = d1 * ((ql[l] & 0xF) + (16 if (qh[l] & u1) else 0)) - m1
            for l in range(32):
                y[l + 32] = d2 * ((ql[l] >> 4) + (16 if (qh[l] & u2) else 0)) - m2
            y += 64
            ql += 32
            is_ += 2
            u1 <<= 2
            u2 <<= 2

cdef void dequantize_row_q6_K(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_q6_K* x = <const block_q6_K*>vx
    cdef int64_t i
    cdef int _n, l, is_
    cdef float d
    cdef const uint8_t* ql
    cdef const uint8_t* qh
    cdef const int8_t* sc
    for i in range(k // QK_K):
        d = fp16_to_fp32(x[i].d)
        ql = <const uint8_t*>&x[i].ql[0]
        qh = <const uint8_t*>&x[i].qh[0]
        sc = <const int8_t*>&x[i].scales[0]
        for _n in range(2):
            for l in range(32):
                is_ = l // 16
                y[l] = d * sc[is_] * (((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32)
                y[l + 32] = d * sc[is_ + 2] * (((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32)
                y[l + 64] = d * sc[is_ + 4] * (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32)
                y[l + 96] = d * sc[is_ + 6] * (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32)
            y += 128
            ql += 64
            qh += 32
            sc += 8

cdef void dequantize_row_iq4_nl(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_iq4_nl* x = <const block_iq4_nl*>vx
    cdef int64_t i
    cdef int j
    cdef float d
    for i in range(k // QK4_NL):
        d = fp16_to_fp32(x[i].d)
        for j in range(16):
            y[i*32 + j] = d * kvalues_iq4nl[x[i].qs[j] & 0x0F]
            y[i*32 + j + 16] = d * kvalues_iq4nl[x[i].qs[j] >> 4]

cdef void dequantize_row_iq4_xs(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_iq4_xs* x = <const block_iq4_xs*>vx
    cdef int64_t i
    cdef int ib, j, ls
    cdef float dl
    for i in range(k // QK_K):
        for ib in range(8):
            ls = ((x[i].scales_l[ib // 2] >> (4 * (ib % 2))) & 0x0F) | (((x[i].scales_h >> (2 * ib)) & 3) << 4)
            dl = fp16_to_fp32(x[i].d) * (ls - 32)
            for j in range(16):
                y[j] = dl * kvalues_iq4nl[x[i].qs[16*ib + j] & 0x0F]
                y[j + 16] = dl * kvalues_iq4nl[x[i].qs[16*ib + j] >> 4]
            y += 32

cdef void dequantize_row_bf16(const void* vx, float* y, int64_t k) noexcept nogil:
    # bf16 -> f32 is exact: the 16 bits are the float's top half
    cdef const uint16_t* x = <const uint16_t*>vx
    cdef int64_t i
    cdef uint32_t bits
    for i in range(k):
        bits = (<uint32_t>x[i]) << 16
        memcpy(&y[i], &bits, 4)
# ---- i-quants and ternary types (issue 23): their dequantizers, in a file of their own
include "_quants_iq.pxi"

# ---- quantize activations: x (k,) -> y ----------------------------------------
cdef void quantize_row_f32(const float* x, void* vy, int64_t k) noexcept nogil:
    memcpy(vy, x, k * 4)

cdef void quantize_row_q8_1(const float* x, void* vy, int64_t k) noexcept nogil:
    # d = amax/127 (f32); q = roundf(x / d) (half away from zero), in [-127, 127];
    # s = d * sum(q) for the weights' offset term
    cdef block_q8_1* y = <block_q8_1*>vy
    cdef int64_t i
    cdef int j, s
    cdef float amax, d, id_
    for i in range(k // QK8_1):
        amax = 0.0
        for j in range(32):
            amax = max(amax, fabsf(x[i*32 + j]))
        d = amax / <float>127.0
        id_ = <float>1.0 / d if d != 0.0 else <float>0.0
        y[i].d = d
        s = 0
        for j in range(32):
            y[i].qs[j] = <int8_t>roundf(x[i*32 + j] * id_)
            s += y[i].qs[j]
        y[i].s = d * s

cdef void quantize_row_q8_K(const float* x, void* vy, int64_t k) noexcept nogil:
    # the scale maps the signed extreme to -128, so qs may hold -128 (see block_q8_K)
    cdef block_q8_K* y = <block_q8_K*>vy
    cdef int64_t i
    cdef int j, l, v, s
    cdef float amax, mx, ax, iscale
    for i in range(k // QK_K):
        amax = 0.0
        mx = 0.0
        for j in range(QK_K):
            ax = fabsf(x[j])
            if ax > amax:
                amax = ax
                mx = x[j]
        if amax == 0.0:
            y[i].d = 0.0
            memset(y[i].qs, 0, QK_K)
            memset(y[i].bsums, 0, 32)
            x += QK_K
            continue
        iscale = <float>-128.0 / mx
        for j in range(QK_K):
            v = nearest_int(iscale * x[j])
            y[i].qs[j] = <int8_t>min(127, v)
        for j in range(16):
            s = 0
            for l in range(16):
                s += y[i].qs[16*j + l]
            y[i].bsums[j] = <int16_t>s
        y[i].d = <float>1.0 / iscale
        x += QK_K

# ---- the table, one row per type ----------------------------------------------------------
cdef type_traits_t TRAITS[GGML_TYPE_COUNT]
TRAITS[GGML_TYPE_F32] = type_traits_t(blck_size=1, type_size=4, vec_dot_type=GGML_TYPE_F32,
                                      to_float=dequantize_row_f32, from_float=quantize_row_f32)
TRAITS[GGML_TYPE_F16] = type_traits_t(blck_size=1, type_size=2, vec_dot_type=GGML_TYPE_F32,
                                      to_float=dequantize_row_f16, from_float=NULL)
# every 32-block type pairs with q8_1 (f32 activation scale); ggml pairs q4_0, q5_0 and q8_0
# with q8_0 (f16 scale): the same integer sums, one rounding less, a cheaper scale
TRAITS[GGML_TYPE_Q4_0] = type_traits_t(blck_size=QK4_0, type_size=sizeof(block_q4_0), vec_dot_type=GGML_TYPE_Q8_1,
                                       to_float=dequantize_row_q4_0, from_float=NULL)
TRAITS[GGML_TYPE_Q4_1] = type_traits_t(blck_size=QK4_1, type_size=sizeof(block_q4_1), vec_dot_type=GGML_TYPE_Q8_1,
                                       to_float=dequantize_row_q4_1, from_float=NULL)
TRAITS[GGML_TYPE_Q5_0] = type_traits_t(blck_size=QK5_0, type_size=sizeof(block_q5_0), vec_dot_type=GGML_TYPE_Q8_1,
                                       to_float=dequantize_row_q5_0, from_float=NULL)
TRAITS[GGML_TYPE_Q5_1] = type_traits_t(blck_size=QK5_1, type_size=sizeof(block_q5_1), vec_dot_type=GGML_TYPE_Q8_1,
                                       to_float=dequantize_row_q5_1, from_float=NULL)
TRAITS[GGML_TYPE_Q8_0] = type_traits_t(blck_size=QK8_0, type_size=sizeof(block_q8_0), vec_dot_type=GGML_TYPE_Q8_1,
                                       to_float=dequantize_row_q8_0, from_float=NULL)
TRAITS[GGML_TYPE_Q8_1] = type_traits_t(blck_size=QK8_1, type_size=sizeof(block_q8_1), vec_dot_type=GGML_TYPE_Q8_1,
                                       to_float=dequantize_row_q8_1, from_float=quantize_row_q8_1)
TRAITS[GGML_TYPE_Q2_K] = type_traits_t(blck_size=QK_K, type_size=sizeof(block_q2_K), vec_dot_type=GGML_TYPE_Q8_K,
                                       to_float=dequantize_row_q2_K, from_float=NULL)
TRAITS[GGML_TYPE_Q3_K] = type_traits_t(blck_size=QK_K, type_size=sizeof(block_q3_K), vec_dot_type=GGML_TYPE_Q8_K,
                                       to_float=dequantize_row_q3_K, from_float=NULL)
TRAITS[GGML_TYPE_Q4_K] = type_traits_t(blck_size=QK_K, type_size=sizeof(block_q4_K), vec_dot_type=GGML_TYPE_Q8_K,
                                       to_float=dequantize_row_q4_K, from_float=NULL)
TRAITS[GGML_TYPE_Q5_K] = type_traits_t(blck_size=QK_K, type_size=sizeof(block_q5_K), vec_dot_type=GGML_TYPE_Q8_K,
                                       to_float=dequantize_row_q5_K, from_float=NULL)
TRAITS[GGML_TYPE_Q6_K] = type_traits_t(blck_size=QK_K, type_size=sizeof(block_q6_K), vec_dot_type=GGML_TYPE_Q8_K,
                                       to_float=dequantize_row_q6_K, from_float=NULL)
TRAITS[GGML_TYPE_Q8_K] = type_traits_t(blck_size=QK_K, type_size=sizeof(block_q8_K), vec_dot_type=GGML_TYPE_Q8_K,
                                       to_float=dequantize_row_q8_K, from_float=quantize_row_q8_K)
TRAITS[GGML_TYPE_IQ4_NL] = type_traits_t(blck_size=QK4_NL, type_size=sizeof(block_iq4_nl), vec_dot_type=GGML_TYPE_Q8_1,
                                         to_float=dequantize_row_iq4_nl, from_float=NULL)
TRAITS[GGML_TYPE_IQ4_XS] = type_traits_t(blck_size=QK_K, type_size=sizeof(block_iq4_xs), vec_dot_type=GGML_TYPE_Q8_K,
                                         to_float=dequantize_row_iq4_xs, from_float=NULL)
TRAITS[GGML_TYPE_BF16] = type_traits_t(blck_size=1, type_size=2, vec_dot_type=GGML_TYPE_F32,
                                       to_float=dequantize_row_bf16, from_float=NULL)
# ---- i-quants and ternary types (issue 23): every one pairs with q8_K, as in ggml
TRAITS[GGML_TYPE_IQ2_XXS] = type_traits_t(blck_size=QK_K, type_size=sizeof(block_iq2_xxs), vec_dot_type=GGML_TYPE_Q8_K,
                                          to_float=dequantize_row_iq2_xxs, from_float=NULL)
TRAITS[GGML_TYPE_IQ2_XS] = type_traits_t(blck_size=QK_K, type_size=sizeof(block_iq2_xs), vec_dot_type=GGML_TYPE_Q8_K,
                                         to_float=dequantize_row_iq2_xs, from_float=NULL)
TRAITS[GGML_TYPE_IQ2_S] = type_traits_t(blck_size=QK_K, type_size=sizeof(block_iq2_s), vec_dot_type=GGML_TYPE_Q8_K,
                                        to_float=dequantize_row_iq2_s, from_float=NULL)
TRAITS[GGML_TYPE_IQ3_XXS] = type_traits_t(blck_size=QK_K, type_size=sizeof(block_iq3_xxs), vec_dot_type=GGML_TYPE_Q8_K,
                                          to_float=dequantize_row_iq3_xxs, from_float=NULL)
TRAITS[GGML_TYPE_IQ3_S] = type_traits_t(blck_size=QK_K, type_size=sizeof(block_iq3_s), vec_dot_type=GGML_TYPE_Q8_K,
                                        to_float=dequantize_row_iq3_s, from_float=NULL)
TRAITS[GGML_TYPE_IQ1_S] = type_traits_t(blck_size=QK_K, type_size=sizeof(block_iq1_s), vec_dot_type=GGML_TYPE_Q8_K,
                                        to_float=dequantize_row_iq1_s, from_float=NULL)
TRAITS[GGML_TYPE_IQ1_M] = type_traits_t(blck_size=QK_K, type_size=sizeof(block_iq1_m), vec_dot_type=GGML_TYPE_Q8_K,
                                        to_float=dequantize_row_iq1_m, from_float=NULL)
TRAITS[GGML_TYPE_TQ1_0] = type_traits_t(blck_size=QK_K, type_size=sizeof(block_tq1_0), vec_dot_type=GGML_TYPE_Q8_K,
                                        to_float=dequantize_row_tq1_0, from_float=NULL)
TRAITS[GGML_TYPE_TQ2_0] = type_traits_t(blck_size=QK_K, type_size=sizeof(block_tq2_0), vec_dot_type=GGML_TYPE_Q8_K,
                                        to_float=dequantize_row_tq2_0, from_float=NULL)
fill_fp16_table()


cdef const type_traits_t* type_traits(int t) noexcept nogil:
    if 0 <= t < GGML_TYPE_COUNT and TRAITS[t].type_size:
        return &TRAITS[t]
    return NULL


cdef int64_t row_size(const type_traits_t* tt, int64_t n) noexcept nogil:
    return n // tt.blck_size * tt.type_size


# ---- thin Python twins, for tests and tools ------------------------------------------
cdef const type_traits_t* checked_traits(int t) except NULL:
    cdef const type_traits_t* tt = type_traits(t)
    if tt == NULL:
        raise ValueError(f"unknown ggml type {t}")
    return tt


cdef check_len(const type_traits_t* tt, int64_t n, int64_t nbytes):
    if n % tt.blck_size:
        raise ValueError(f"{n} elements is not a multiple of the block size {tt.blck_size}")
    if nbytes < row_size(tt, n):
        raise ValueError(f"{nbytes} bytes < {row_size(tt, n)} needed for {n} elements")


def block_layouts():
    """{type name: (sizeof, {field: offset})} as this build's C compiler lays the blocks out"""
    cdef block_q4_0 b40
    cdef block_q4_1 b41
    cdef block_q5_0 b50
    cdef block_q5_1 b51
    cdef block_q8_0 b80
    cdef block_q8_1 b81
    cdef block_q2_K b2k
    cdef block_q3_K b3k
    cdef block_q4_K b4k
    cdef block_q5_K b5k
    cdef block_q6_K b6k
    cdef block_q8_K b8k
    cdef block_iq4_nl bnl
    cdef block_iq4_xs bxs
    cdef block_iq2_xxs i2xxs
    cdef block_iq2_xs i2xs
    cdef block_iq2_s i2s
    cdef block_iq3_xxs i3xxs
    cdef block_iq3_s i3s
    cdef block_iq1_s i1s
    cdef block_iq1_m i1m
    cdef block_tq1_0 t1
    cdef block_tq2_0 t2
    return {
        "Q4_0": (sizeof(b40), {"d": <size_t>&b40.d - <size_t>&b40, "qs": <size_t>&b40.qs - <size_t>&b40}),
        "Q4_1": (sizeof(b41), {"d": <size_t>&b41.d - <size_t>&b41, "m": <size_t>&b41.m - <size_t>&b41,
                               "qs": <size_t>&b41.qs - <size_t>&b41}),
        "Q5_0": (sizeof(b50), {"d": <size_t>&b50.d - <size_t>&b50, "qh": <size_t>&b50.qh - <size_t>&b50,
                               "qs": <size_t>&b50.qs - <size_t>&b50}),
        "Q5_1": (sizeof(b51), {"d": <size_t>&b51.d - <size_t>&b51, "m": <size_t>&b51.m - <size_t>&b51,
                               "qh": <size_t>&b51.qh - <size_t>&b51, "qs": <size_t>&b51.qs - <size_t>&b51}),
        "Q8_0": (sizeof(b80), {"d": <size_t>&b80.d - <size_t>&b80, "qs": <size_t>&b80.qs - <size_t>&b80}),
        "Q8_1": (sizeof(b81), {"d": <size_t>&b81.d - <size_t>&b81, "s": <size_t>&b81.s - <size_t>&b81,
                               "qs": <size_t>&b81.qs - <size_t>&b81}),
        "Q2_K": (sizeof(b2k), {"scales": <size_t>&b2k.scales - <size_t>&b2k, "qs": <size_t>&b2k.qs - <size_t>&b2k,
                               "d": <size_t>&b2k.d - <size_t>&b2k, "dmin": <size_t>&b2k.dmin - <size_t>&b2k}),
        "Q3_K": (sizeof(b3k), {"hmask": <size_t>&b3k.hmask - <size_t>&b3k, "qs": <size_t>&b3k.qs - <size_t>&b3k,
                               "scales": <size_t>&b3k.scales - <size_t>&b3k, "d": <size_t>&b3k.d - <size_t>&b3k}),
        "Q4_K": (sizeof(b4k), {"d": <size_t>&b4k.d - <size_t>&b4k, "dmin": <size_t>&b4k.dmin - <size_t>&b4k,
                               "scales": <size_t>&b4k.scales - <size_t>&b4k, "qs": <size_t>&b4k.qs - <size_t>&b4k}),
        "Q5_K": (sizeof(b5k), {"d": <size_t>&b5k.d - <size_t>&b5k, "dmin": <size_t>&b5k.dmin - <size_t>&b5k,
                               "scales": <size_t>&b5k.scales - <size_t>&b5k, "qh": <size_t>&b5k.qh - <size_t>&b5k,
                               "qs": <size_t>&b5k.qs - <size_t>&b5k}),
        "Q6_K": (sizeof(b6k), {"ql": <size_t>&b6k.ql - <size_t>&b6k, "qh": <size_t>&b6k.qh - <size_t>&b6k,
                               "scales": <size_t>&b6k.scales - <size_t>&b6k, "d": <size_t>&b6k.d - <size_t>&b6k}),
        "Q8_K": (sizeof(b8k), {"d": <size_t>&b8k.d - <size_t>&b8k, "qs": <size_t>&b8k.qs - <size_t>&b8k,
                               "bsums": <size_t>&b8k.bsums - <size_t>&b8k}),
        "IQ4_NL": (sizeof(bnl), {"d": <size_t>&bnl.d - <size_t>&bnl, "qs": <size_t>&bnl.qs - <size_t>&bnl}),
        "IQ4_XS": (sizeof(bxs), {"d": <size_t>&bxs.d - <size_t>&bxs,
                                 "scales_h": <size_t>&bxs.scales_h - <size_t>&bxs,
                                 "scales_l": <size_t>&bxs.scales_l - <size_t>&bxs,
                                 "qs": <size_t>&bxs.qs - <size_t>&bxs}),
        # ---- i-quants and ternary types (issue 23)
        "IQ2_XXS": (sizeof(i2xxs), {"d": <size_t>&i2xxs.d - <size_t>&i2xxs, "qs": <size_t>&i2xxs.qs - <size_t>&i2xxs}),
        "IQ2_XS": (sizeof(i2xs), {"d": <size_t>&i2xs.d - <size_t>&i2xs, "qs": <size_t>&i2xs.qs - <size_t>&i2xs,
                                  "scales": <size_t>&i2xs.scales - <size_t>&i2xs}),
        "IQ2_S": (sizeof(i2s), {"d": <size_t>&i2s.d - <size_t>&i2s, "qs": <size_t>&i2s.qs - <size_t>&i2s,
                                "qh": <size_t>&i2s.qh - <size_t>&i2s, "scales": <size_t>&i2s.scales - <size_t>&i2s}),
        "IQ3_XXS": (sizeof(i3xxs), {"d": <size_t>&i3xxs.d - <size_t>&i3xxs, "qs": <size_t>&i3xxs.qs - <size_t>&i3xxs}),
        "IQ3_S": (sizeof(i3s), {"d": <size_t>&i3s.d - <size_t>&i3s, "qs": <size_t>&i3s.qs - <size_t>&i3s,
                                "qh": <size_t>&i3s.qh - <size_t>&i3s, "signs": <size_t>&i3s.signs - <size_t>&i3s,
                                "scales": <size_t>&i3s.scales - <size_t>&i3s}),
        "IQ1_S": (sizeof(i1s), {"d": <size_t>&i1s.d - <size_t>&i1s, "qs": <size_t>&i1s.qs - <size_t>&i1s,
                                "qh": <size_t>&i1s.qh - <size_t>&i1s}),
        "IQ1_M": (sizeof(i1m), {"qs": <size_t>&i1m.qs - <size_t>&i1m, "qh": <size_t>&i1m.qh - <size_t>&i1m,
                                "scales": <size_t>&i1m.scales - <size_t>&i1m}),
        "TQ1_0": (sizeof(t1), {"qs": <size_t>&t1.qs - <size_t>&t1, "qh": <size_t>&t1.qh - <size_t>&t1,
                               "d": <size_t>&t1.d - <size_t>&t1}),
        "TQ2_0": (sizeof(t2), {"qs": <size_t>&t2.qs - <size_t>&t2, "d": <size_t>&t2.d - <size_t>&t2}),
    }


def vec_dot_type(int t):
    return checked_traits(t).vec_dot_type


def dequantize(int t, const uint8_t[::1] data, int64_t n):
    """n weights of type t -> float32 (n,)"""
    cdef const type_traits_t* tt = checked_traits(t)
    check_len(tt, n, data.shape[0])
    out = np.empty(n, dtype=np.float32)
    cdef float[::1] o = out
    if n:
        with nogil:
            tt.to_float(&data[0], &o[0], n)
    return out


def quantize(int t, const float[::1] x):
    """float32 (n,) -> bytes of activation type t (F32, Q8_1, Q8_K)"""
    cdef const type_traits_t* tt = checked_traits(t)
    if tt.from_float == NULL:
        raise ValueError(f"type {t} is not an activation format")
    cdef int64_t n = x.shape[0]
    check_len(tt, n, row_size(tt, n))
    out = np.zeros(row_size(tt, n), dtype=np.uint8)
    cdef uint8_t[::1] o = out
    if n:
        with nogil:
            tt.from_float(&x[0], &o[0], n)
    return out


def fp16_from_f32(const float[::1] x):
    out = np.empty(x.shape[0], dtype=np.uint16)
    cdef uint16_t[::1] o = out
    cdef int64_t i
    for i in range(x.shape[0]):
        o[i] = fp32_to_fp16(x[i])
    return out
