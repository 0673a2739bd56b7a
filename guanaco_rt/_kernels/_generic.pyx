# cython: language_level=3
"""The generic ISA unit: portable C dot products and attention loops -- the readable
spec every other unit must agree with, and the fallback for what a unit leaves out.

Dot products of one weight row with one quantized activation row: integer sums per
block, then one float multiply per block, as ggml's scalar branch. s[0] = <x, y>
over n elements.
"""
from libc.stdint cimport uint8_t, int8_t, uint16_t, uint32_t, int64_t
from cpython.pycapsule cimport PyCapsule_New

from guanaco_rt._kernels.ggml_blocks cimport *
from guanaco_rt._kernels._common cimport fp16_to_fp32, fill_fp16_table, load_u32, unpack_q3_K_scales, get_scale_min_k4
from guanaco_rt._kernels._isa cimport isa_kernels_t, ISA_CAPSULE

ISA = "generic"


cdef void vec_dot_f32_generic(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const float* x = <const float*>vx
    cdef const float* y = <const float*>vy
    cdef double acc = 0.0
    cdef int i
    for i in range(n):
        acc += x[i] * y[i]
    s[0] = <float>acc

cdef void vec_dot_f16_generic(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const uint16_t* x = <const uint16_t*>vx
    cdef const float* y = <const float*>vy
    cdef double acc = 0.0
    cdef int i
    for i in range(n):
        acc += fp16_to_fp32(x[i]) * y[i]
    s[0] = <float>acc

cdef void vec_dot_q4_0_q8_1_generic(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q4_0* x = <const block_q4_0*>vx
    cdef const block_q8_1* y = <const block_q8_1*>vy
    cdef float sumf = 0.0
    cdef int i, j, sumi
    for i in range(n // QK8_1):
        sumi = 0
        for j in range(16):
            sumi += ((x[i].qs[j] & 0x0F) - 8) * y[i].qs[j] + ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + 16]
        sumf += sumi * fp16_to_fp32(x[i].d) * y[i].d
    s[0] = sumf

cdef void vec_dot_q4_1_q8_1_generic(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q4_1* x = <const block_q4_1*>vx
    cdef const block_q8_1* y = <const block_q8_1*>vy
    cdef float sumf = 0.0
    cdef int i, j, sumi
    for i in range(n // QK8_1):
        sumi = 0
        for j in range(16):
            sumi += (x[i].qs[j] & 0x0F) * y[i].qs[j] + (x[i].qs[j] >> 4) * y[i].qs[j + 16]
        sumf += fp16_to_fp32(x[i].d) * y[i].d * sumi + fp16_to_fp32(x[i].m) * y[i].s
    s[0] = sumf

cdef void vec_dot_q5_0_q8_1_generic(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q5_0* x = <const block_q5_0*>vx
    cdef const block_q8_1* y = <const block_q8_1*>vy
    cdef float sumf = 0.0
    cdef int i, j, sumi, x0, x1
    cdef uint32_t qh
    for i in range(n // QK8_1):
        qh = load_u32(x[i].qh)
        sumi = 0
        for j in range(16):
            x0 = <int>((x[i].qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10)) - 16
            x1 = <int>((x[i].qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - 16
            sumi += x0 * y[i].qs[j] + x1 * y[i].qs[j + 16]
        sumf += sumi * fp16_to_fp32(x[i].d) * y[i].d
    s[0] = sumf

cdef void vec_dot_q5_1_q8_1_generic(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q5_1* x = <const block_q5_1*>vx
    cdef const block_q8_1* y = <const block_q8_1*>vy
    cdef float sumf = 0.0
    cdef int i, j, sumi, x0, x1
    cdef uint32_t qh
    for i in range(n // QK8_1):
        qh = load_u32(x[i].qh)
        sumi = 0
        for j in range(16):
            x0 = <int>((x[i].qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10))
            x1 = <int>((x[i].qs[j] >> 4) | ((qh >> (j + 12)) & 0x10))
            sumi += x0 * y[i].qs[j] + x1 * y[i].qs[j + 16]
        sumf += fp16_to_fp32(x[i].d) * y[i].d * sumi + fp16_to_fp32(x[i].m) * y[i].s
    s[0] = sumf

cdef void vec_dot_q8_0_q8_1_generic(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q8_0* x = <const block_q8_0*>vx
    cdef const block_q8_1* y = <const block_q8_1*>vy
    cdef float sumf = 0.0
    cdef int i, j, sumi
    for i in range(n // QK8_1):
        sumi = 0
        for j in range(32):
            sumi += x[i].qs[j] * y[i].qs[j]
        sumf += sumi * fp16_to_fp32(x[i].d) * y[i].d
    s[0] = sumf

cdef void vec_dot_q2_K_q8_K_generic(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q2_K* x = <const block_q2_K*>vx
    cdef const block_q8_K* y = <const block_q8_K*>vy
    cdef float sumf = 0.0
    cdef int i, _k, _j, l, shift, is_, isum, isuml, summs
    cdef const uint8_t* q2
    cdef const int8_t* q8
    cdef const uint8_t* sc
    for i in range(n // QK_K):
        q2 = <const uint8_t*>&x[i].qs[0]
        q8 = <const int8_t*>&y[i].qs[0]
        sc = <const uint8_t*>&x[i].scales[0]
        summs = 0
        for j in range(16):
            summs += y[i].bsums[j] * (sc[j] >> 4)
        isum = 0
        is_ = 0
        for _k in range(2):
            shift = 0
            for _j in range(4):
                isuml = 0
                for l in range(16):
                    isuml += q8[l] * ((q2[l] >> shift) & 3)
                isum += (sc[is_] & 0xF) * isuml
                is_ += 1
                isuml = 0
                for l in range(16, 32):
                    isuml += q8[l] * ((q2[l] >> shift) & 3)
                isum += (sc[is_] & 0xF) * isuml
                is_ += 1
                shift += 2
                q8 += 32
            q2 += 32
        sumf += y[i].d * fp16_to_fp32(x[i].d) * isum - y[i].d * fp16_to_fp32(x[i].dmin) * summs
    s[0] = sumf

cdef void vec_dot_q3_K_q8_K_generic(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q3_K* x = <const block_q3_K*>vx
    cdef const block_q8_K* y = <const block_q8_K*>vy
    cdef float sumf = 0.0
    cdef int i, k, j, l, shift, isum, sub
    cdef uint8_t m
    cdef int8_t sc[16]
    cdef int8_t aux8[256]
    cdef const uint8_t* q3
    for i in range(n // QK_K):
        q3 = <const uint8_t*>&x[i].qs[0]
        m = 1
        for k in range(2):
            shift = 0
            for j in range(4):
                for l in range(32):
                    aux8[128*k + 32*j + l] = <int8_t>(((q3[l] >> shift) & 3) - (0 if (x[i].hmask[l] & m) else 4))
                shift += 2
                m <<= 1
            q3 += 32
        unpack_q3_K_scales(x[i].scales, sc)
        isum = 0
        for j in range(16):
            sub = 0
            for l in range(16):
                sub += y[i].qs[16*j + l] * aux8[16*j + l]
            isum += sc[j] * sub
        sumf += fp16_to_fp32(x[i].d) * y[i].d * isum
    s[0] = sumf

cdef void vec_dot_q4_K_q8_K_generic(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q4_K* x = <const block_q4_K*>vx
    cdef const block_q8_K* y = <const block_q8_K*>vy
    cdef float sumf = 0.0
    cdef int i, j, l, isum, sub1, sub2, summs
    cdef uint8_t sc[8]
    cdef uint8_t mn[8]
    cdef const uint8_t* q4
    cdef const int8_t* q8
    for i in range(n // QK_K):
        for j in range(8):
            get_scale_min_k4(j, x[i].scales, &sc[j], &mn[j])
        summs = 0
        for j in range(8):
            summs += (y[i].bsums[2*j] + y[i].bsums[2*j + 1]) * mn[j]
        q4 = <const uint8_t*>&x[i].qs[0]
        q8 = <const int8_t*>&y[i].qs[0]
        isum = 0
        for j in range(4):
            sub1 = 0
            sub2 = 0
            for l in range(32):
                sub1 += (q4[l] & 0xF) * q8[l]
                sub2 += (q4[l] >> 4) * q8[l + 32]
            isum += sc[2*j] * sub1 + sc[2*j + 1] * sub2
            q4 += 32
            q8 += 64
        sumf += fp16_to_fp32(x[i].d) * y[i].d * isum - fp16_to_fp32(x[i].dmin) * y[i].d * summs
    s[0] = sumf

cdef void vec_dot_q5_K_q8_K_generic(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q5_K* x = <const block_q5_K*>vx
    cdef const block_q8_K* y = <const block_q8_K*>vy
    cdef float sumf = 0.0
    cdef int i, j, l, isum, sub1, sub2, summs
    cdef uint8_t sc[8]
    cdef uint8_t mn[8]
    cdef uint8_t u1, u2
    cdef const uint8_t* ql
    cdef const uint8_t* qh
    cdef const int8_t* q8
    for i in range(n // QK_K):
        for j in range(8):
            get_scale_min_k4(j, x[i].scales, &sc[j], &mn[j])
        summs = 0
        for j in range(8):
            summs += (y[i].bsums[2*j] + y[i].bsums[2*j + 1]) * mn[j]
        ql = <const uint8_t*>&x[i].qs[0]
        qh = <const uint8_t*>&x[i].qh[0]
        q8 = <const int8_t*>&y[i].qs[0]
        isum = 0
        u1 = 1
        u2 = 2
        for j in range(4):
            sub1 = 0
            sub2 = 0
            for l in range(32):
                sub1 += ((ql[l] & 0xF) + (16 if (qh[l] & u1) else 0)) * q8[l]
                sub2 += ((ql[l] >> 4) + (16 if (qh[l] & u2) else 0)) * q8[l + 32]
            isum += sc[2*j] * sub1 + sc[2*j + 1] * sub2
            ql += 32
            q8 += 64
            u1 <<= 2
            u2 <<= 2
        sumf += fp16_to_fp32(x[i].d) * y[i].d * isum - fp16_to_fp32(x[i].dmin) * y[i].d * summs
    s[0] = sumf

cdef void vec_dot_q6_K_q8_K_generic(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q6_K* x = <const block_q6_K*>vx
    cdef const block_q8_K* y = <const block_q8_K*>vy
    cdef float sumf = 0.0
    cdef int i, k, j, l, isum, sub
    cdef int8_t aux8[256]
    cdef const uint8_t* ql
    cdef const uint8_t* qh
    for i in range(n // QK_K):
        ql = <const uint8_t*>&x[i].ql[0]
        qh = <const uint8_t*>&x[i].qh[0]
        for k in range(2):
            for l in range(32):
                aux8[128*k + l] = <int8_t>(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32)
                aux8[128*k + l + 32] = <int8_t>(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32)
                aux8[128*k + l + 64] = <int8_t>(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32)
                aux8[128*k + l + 96] = <int8_t>(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32)
            ql += 64
            qh += 32
        isum = 0
        for j in range(16):
            sub = 0
            for l in range(16):
                sub += y[i].qs[16*j + l] * aux8[16*j + l]
            isum += x[i].scales[j] * sub
        sumf += fp16_to_fp32(x[i].d) * y[i].d * isum
    s[0] = sumf


# ---- attention inner loops over one head: q . k for every position, then sum a * v ----

cdef void kv_scores(float* a, const float* q, const void* kv, int64_t off, int64_t stride, int n_pos, int n,
                    float scale, int f16) noexcept nogil:
    cdef float acc
    cdef int i, p
    cdef const float* kf
    cdef const uint16_t* kh
    for p in range(n_pos):
        acc = 0.0
        if f16:
            kh = (<const uint16_t*>kv) + off + p * stride
            for i in range(n):
                acc += q[i] * fp16_to_fp32(kh[i])
        else:
            kf = (<const float*>kv) + off + p * stride
            for i in range(n):
                acc += q[i] * kf[i]
        a[p] = acc * scale

cdef void kv_mix(float* out, const float* a, const void* kv, int64_t off, int64_t stride, int n_pos, int n,
                 int f16) noexcept nogil:
    cdef int i, p
    cdef const float* vf
    cdef const uint16_t* vh
    for i in range(n):
        out[i] = 0.0
    for p in range(n_pos):
        if f16:
            vh = (<const uint16_t*>kv) + off + p * stride
            for i in range(n):
                out[i] += a[p] * fp16_to_fp32(vh[i])
        else:
            vf = (<const float*>kv) + off + p * stride
            for i in range(n):
                out[i] += a[p] * vf[i]


# ---- the table ------------------------------------------------------------------------
cdef isa_kernels_t TABLE
TABLE.name = b"generic"
TABLE.types[GGML_TYPE_F32].vec_dot = vec_dot_f32_generic
TABLE.types[GGML_TYPE_F16].vec_dot = vec_dot_f16_generic
TABLE.types[GGML_TYPE_Q4_0].vec_dot = vec_dot_q4_0_q8_1_generic
TABLE.types[GGML_TYPE_Q4_1].vec_dot = vec_dot_q4_1_q8_1_generic
TABLE.types[GGML_TYPE_Q5_0].vec_dot = vec_dot_q5_0_q8_1_generic
TABLE.types[GGML_TYPE_Q5_1].vec_dot = vec_dot_q5_1_q8_1_generic
TABLE.types[GGML_TYPE_Q8_0].vec_dot = vec_dot_q8_0_q8_1_generic
TABLE.types[GGML_TYPE_Q2_K].vec_dot = vec_dot_q2_K_q8_K_generic
TABLE.types[GGML_TYPE_Q3_K].vec_dot = vec_dot_q3_K_q8_K_generic
TABLE.types[GGML_TYPE_Q4_K].vec_dot = vec_dot_q4_K_q8_K_generic
TABLE.types[GGML_TYPE_Q5_K].vec_dot = vec_dot_q5_K_q8_K_generic
TABLE.types[GGML_TYPE_Q6_K].vec_dot = vec_dot_q6_K_q8_K_generic
TABLE.kv_scores = kv_scores
TABLE.kv_mix = kv_mix
fill_fp16_table()


def kernel_table():
    """This unit's kernel table, as a capsule for guanaco_rt._kernels._engine.KernelSet."""
    return PyCapsule_New(&TABLE, ISA_CAPSULE, NULL)
