# Block formats: dequantize (weights -> f32) and quantize (f32 activations -> the
# 8-bit formats the dot products pair with). The generic, readable spec; every ISA
# variant must agree with it exactly.

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
    cdef int n, j, l, shift, is_
    cdef float d, dmin, dl, ml
    cdef const uint8_t* q
    cdef uint8_t sc
    for i in range(k // QK_K):
        d = fp16_to_fp32(x[i].d)
        dmin = fp16_to_fp32(x[i].dmin)
        q = x[i].qs
        is_ = 0
        for n in range(2):
            shift = 0
            for j in range(4):
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

cdef inline void unpack_q3_K_scales(const uint8_t* s, int8_t* out) noexcept nogil:
    # 16 six-bit scales, returned already offset by -32 (see block_q3_K)
    cdef int j
    for j in range(16):
        out[j] = <int8_t>((((s[j % 8] >> (4 * (j // 8))) & 0xF) | (((s[8 + j % 4] >> (2 * (j // 4))) & 3) << 4)) - 32)

cdef void dequantize_row_q3_K(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_q3_K* x = <const block_q3_K*>vx
    cdef int64_t i
    cdef int n, j, l, shift, is_
    cdef uint8_t m
    cdef float d_all, dl
    cdef const uint8_t* q
    cdef const uint8_t* hm
    cdef int8_t sc[16]
    for i in range(k // QK_K):
        d_all = fp16_to_fp32(x[i].d)
        unpack_q3_K_scales(x[i].scales, sc)
        q = x[i].qs
        hm = x[i].hmask
        m = 1
        is_ = 0
        for n in range(2):
            shift = 0
            for j in range(4):
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

cdef inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) noexcept nogil:
    if j < 4:
        d[0] = q[j] & 63
        m[0] = q[j + 4] & 63
    else:
        d[0] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)
        m[0] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4)

cdef void dequantize_row_q4_K(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_q4_K* x = <const block_q4_K*>vx
    cdef int64_t i
    cdef int j, l, is_
    cdef uint8_t sc, m
    cdef float d, dmin, d1, m1, d2, m2
    cdef const uint8_t* q
    for i in range(k // QK_K):
        d = fp16_to_fp32(x[i].d)
        dmin = fp16_to_fp32(x[i].dmin)
        q = x[i].qs
        is_ = 0
        for j in range(4):
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
    cdef int j, l, is_
    cdef uint8_t sc, m, u1, u2
    cdef float d, dmin, d1, m1, d2, m2
    cdef const uint8_t* ql
    cdef const uint8_t* qh
    for i in range(k // QK_K):
        d = fp16_to_fp32(x[i].d)
        dmin = fp16_to_fp32(x[i].dmin)
        ql = x[i].qs
        qh = x[i].qh
        is_ = 0
        u1 = 1
        u2 = 2
        for j in range(4):
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
    cdef int n, l, is_
    cdef float d
    cdef const uint8_t* ql
    cdef const uint8_t* qh
    cdef const int8_t* sc
    for i in range(k // QK_K):
        d = fp16_to_fp32(x[i].d)
        ql = x[i].ql
        qh = x[i].qh
        sc = x[i].scales
        for n in range(2):
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

# ---- quantize activations: x (k,) -> y ----------------------------------------
cdef void quantize_row_f32(const float* x, void* vy, int64_t k) noexcept nogil:
    memcpy(vy, x, k * 4)

cdef void quantize_row_q8_0(const float* x, void* vy, int64_t k) noexcept nogil:
    # d = amax/127 stored as f16; q = roundf(x / d) (half away from zero), in [-127, 127]
    cdef block_q8_0* y = <block_q8_0*>vy
    cdef int64_t i
    cdef int j
    cdef float amax, d, id_
    for i in range(k // QK8_0):
        amax = 0.0
        for j in range(32):
            amax = max(amax, fabsf(x[i*32 + j]))
        d = amax / <float>127.0
        id_ = <float>1.0 / d if d != 0.0 else <float>0.0
        y[i].d = fp32_to_fp16(d)
        for j in range(32):
            y[i].qs[j] = <int8_t>roundf(x[i*32 + j] * id_)

cdef void quantize_row_q8_1(const float* x, void* vy, int64_t k) noexcept nogil:
    # as q8_0 with an f32 d, plus s = d * sum(q) for the weights' offset term
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
