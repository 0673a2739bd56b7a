# The dequantizers of the i-quants and ternary types (issue 23), included by _quants.pyx (which
# holds their traits rows): IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, TQ1_0, TQ2_0.
# Layouts at ggml_blocks.h, lattices in iq_grids.h (generated from gguf-py: tools/gen_iq_grids.py).
# Every product below is exact in float32 (an f16 scale times a few-bit integer times a grid
# value), so these agree bit for bit with any implementation that computes in float32.
cdef extern from "iq_grids.h" nogil:
    const uint8_t gr_iq2xxs_grid[256][8]
    const uint8_t gr_iq2xs_grid[512][8]
    const uint8_t gr_iq2s_grid[1024][8]
    const uint8_t gr_iq3xxs_grid[256][4]
    const uint8_t gr_iq3s_grid[512][4]
    const int8_t gr_iq1s_grid[2048][8]
    const uint8_t gr_ksigns_iq2xs[128]


cdef inline float signed_by(float v, uint8_t signs, int j) noexcept nogil:
    return -v if (signs >> j) & 1 else v


cdef void dequantize_row_iq2_xxs(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_iq2_xxs* x = <const block_iq2_xxs*>vx
    cdef int64_t i
    cdef int g, l, j
    cdef uint32_t w0, w1
    cdef uint8_t signs
    cdef float d, db
    for i in range(k // QK_K):
        d = fp16_to_fp32(x[i].d)
        for g in range(8):
            w0 = x[i].qs[4*g] | (<uint32_t>x[i].qs[4*g + 1] << 16)
            w1 = x[i].qs[4*g + 2] | (<uint32_t>x[i].qs[4*g + 3] << 16)
            db = d * (<float>0.5 + <float>(w1 >> 28)) * <float>0.25
            for l in range(4):
                signs = gr_ksigns_iq2xs[(w1 >> (7*l)) & 127]
                for j in range(8):
                    y[j] = signed_by(db * gr_iq2xxs_grid[(w0 >> (8*l)) & 255][j], signs, j)
                y += 8

cdef void dequantize_row_iq2_xs(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_iq2_xs* x = <const block_iq2_xs*>vx
    cdef int64_t i
    cdef int g, l, j
    cdef uint16_t q
    cdef uint8_t signs
    cdef float d, db
    for i in range(k // QK_K):
        d = fp16_to_fp32(x[i].d)
        for g in range(8):
            for l in range(4):
                db = d * (<float>0.5 + <float>((x[i].scales[g] >> (4 * (l // 2))) & 15)) * <float>0.25
                q = x[i].qs[4*g + l]
                signs = gr_ksigns_iq2xs[q >> 9]
                for j in range(8):
                    y[j] = signed_by(db * gr_iq2xs_grid[q & 511][j], signs, j)
                y += 8

cdef void dequantize_row_iq2_s(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_iq2_s* x = <const block_iq2_s*>vx
    cdef int64_t i
    cdef int g, l, j, kk
    cdef float d, db
    for i in range(k // QK_K):
        d = fp16_to_fp32(x[i].d)
        for g in range(8):
            for l in range(4):
                kk = 4*g + l
                db = d * (<float>0.5 + <float>((x[i].scales[g] >> (4 * (l // 2))) & 15)) * <float>0.25
                for j in range(8):
                    y[j] = signed_by(db * gr_iq2s_grid[x[i].qs[kk] | (((x[i].qh[g] >> (2*l)) & 3) << 8)][j],
                                     x[i].qs[32 + kk], j)
                y += 8

cdef void dequantize_row_iq3_xxs(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_iq3_xxs* x = <const block_iq3_xxs*>vx
    cdef int64_t i
    cdef int g, l, j
    cdef uint32_t w
    cdef uint8_t signs
    cdef float d, db
    for i in range(k // QK_K):
        d = fp16_to_fp32(x[i].d)
        for g in range(8):
            w = load_u32(&x[i].qs[64 + 4*g])
            db = d * (<float>0.5 + <float>(w >> 28)) * <float>0.5
            for l in range(4):
                signs = gr_ksigns_iq2xs[(w >> (7*l)) & 127]
                for j in range(4):
                    y[j] = signed_by(db * gr_iq3xxs_grid[x[i].qs[8*g + 2*l]][j], signs, j)
                    y[j + 4] = signed_by(db * gr_iq3xxs_grid[x[i].qs[8*g + 2*l + 1]][j], signs, j + 4)
                y += 8

cdef void dequantize_row_iq3_s(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_iq3_s* x = <const block_iq3_s*>vx
    cdef int64_t i
    cdef int g, kk, j
    cdef float d, db
    for i in range(k // QK_K):
        d = fp16_to_fp32(x[i].d)
        for g in range(8):
            db = d * <float>(1 + 2 * ((x[i].scales[g // 2] >> (4 * (g % 2))) & 15))
            for kk in range(8*g, 8*g + 8):          # 4 weights per index
                for j in range(4):
                    y[j] = signed_by(db * gr_iq3s_grid[x[i].qs[kk] | (((x[i].qh[kk // 8] >> (kk % 8)) & 1) << 8)][j],
                                     x[i].signs[kk // 2], 4 * (kk % 2) + j)
                y += 4

cdef void dequantize_row_iq1_s(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_iq1_s* x = <const block_iq1_s*>vx
    cdef int64_t i
    cdef int g, l, j
    cdef uint16_t qh
    cdef float d, dl, delta
    for i in range(k // QK_K):
        d = fp16_to_fp32(x[i].d)
        for g in range(8):
            qh = x[i].qh[g]
            dl = d * <float>(2 * ((qh >> 12) & 7) + 1)
            delta = -IQ1S_DELTA if qh & 0x8000 else IQ1S_DELTA
            for l in range(4):
                for j in range(8):
                    y[j] = dl * (gr_iq1s_grid[x[i].qs[4*g + l] | (((qh >> (3*l)) & 7) << 8)][j] + delta)
                y += 8

cdef void dequantize_row_iq1_m(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_iq1_m* x = <const block_iq1_m*>vx
    cdef int64_t i
    cdef int g, l, j
    cdef uint16_t sc
    cdef uint16_t w[4]
    cdef uint8_t nib
    cdef float d, dl, delta
    for i in range(k // QK_K):
        d = fp16_to_fp32(gr_iq1m_words(x[i].scales, w))
        for g in range(8):
            sc = w[g // 2]
            for l in range(4):
                dl = d * <float>(2 * ((sc >> (6 * (g % 2) + 3 * (l // 2))) & 7) + 1)
                nib = (x[i].qh[2*g + l // 2] >> (4 * (l % 2))) & 15
                delta = -IQ1M_DELTA if nib & 8 else IQ1M_DELTA
                for j in range(8):
                    y[j] = dl * (gr_iq1s_grid[x[i].qs[4*g + l] | ((nib & 7) << 8)][j] + delta)
                y += 8

cdef inline int tq1_digit(uint8_t byte, int pw) noexcept nogil:
    # the base-3 digit of a TQ1_0 byte that multiplying by pw = 3^p brings to the top (p = 0: the
    # most significant), as 0, 1 or 2: the product wraps to 8 bits on purpose
    return (<uint16_t><uint8_t>(byte * pw) * 3) >> 8

cdef void dequantize_row_tq1_0(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_tq1_0* x = <const block_tq1_0*>vx
    cdef int64_t i
    cdef int p, m, pw
    cdef float d
    for i in range(k // QK_K):
        d = fp16_to_fp32(x[i].d)
        pw = 1
        for p in range(5):
            for m in range(32):
                y[32*p + m] = d * <float>(tq1_digit(x[i].qs[m], pw) - 1)
            for m in range(16):
                y[160 + 16*p + m] = d * <float>(tq1_digit(x[i].qs[32 + m], pw) - 1)
            if p < 4:
                for m in range(4):
                    y[240 + 4*p + m] = d * <float>(tq1_digit(x[i].qh[m], pw) - 1)
            pw *= 3
        y += QK_K

cdef void dequantize_row_tq2_0(const void* vx, float* y, int64_t k) noexcept nogil:
    cdef const block_tq2_0* x = <const block_tq2_0*>vx
    cdef int64_t i
    cdef int c, p, m
    cdef float d
    for i in range(k // QK_K):
        d = fp16_to_fp32(x[i].d)
        for c in range(2):
            for p in range(4):
                for m in range(32):
                    y[128*c + 32*p + m] = d * <float>(((x[i].qs[32*c + m] >> (2*p)) & 3) - 1)
        y += QK_K
