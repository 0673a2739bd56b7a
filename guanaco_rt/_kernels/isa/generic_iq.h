/* The generic unit's dot products of the i-quants and ternary types (issue 23) against q8_K: the
 * readable spec of their arithmetic, included by generic.c only. Layouts at ggml_blocks.h, lattices
 * in iq_grids.h.
 *
 * Each block's stored scales are a*ls + b with small integers, so a block's dot product is one
 * integer sum (each group's sum times its odd integer scale 2*ls + 1) and one float expression;
 * the constant factor (1/8 for IQ2 and IQ1's delta, 1/4 for IQ3_XXS) is applied once per row, as
 * ggml does. IQ1's +-1/8 offsets go into the same integer as 8 * grid sum + offset sum. */
#ifndef GUANACO_RT_ISA_GENERIC_IQ_H
#define GUANACO_RT_ISA_GENERIC_IQ_H
#include "generic.h"
#include "iq_grids.h"

/* sum of grid[j] * q8[j] over 8 weights, q8[j] negated where bit j of signs is set */
static inline int iq_signed8(const uint8_t *grid, uint8_t signs, const int8_t *q8) {
    int sum = 0;
    for (int j = 0; j < 8; j++)
        sum += grid[j] * ((signs >> j) & 1 ? -q8[j] : q8[j]);
    return sum;
}

/* the same for two 4-weight rows side by side (IQ3) */
static inline int iq_signed4x2(const uint8_t *grid1, const uint8_t *grid2, uint8_t signs, const int8_t *q8) {
    uint8_t row[8];
    memcpy(row, grid1, 4);
    memcpy(row + 4, grid2, 4);
    return iq_signed8(row, signs, q8);
}

static void vec_dot_iq2_xxs_q8_K_generic(int n, float *s, const void *vx, const void *vy) {
    const block_iq2_xxs *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const int8_t *q8 = y[i].qs;
        int isum = 0;
        for (int g = 0; g < 8; g++) {                  /* 32 weights: one index word, one sign word */
            uint32_t w0 = x[i].qs[4 * g] | (uint32_t)x[i].qs[4 * g + 1] << 16;
            uint32_t w1 = x[i].qs[4 * g + 2] | (uint32_t)x[i].qs[4 * g + 3] << 16;
            int sub = 0;
            for (int l = 0; l < 4; l++, q8 += 8)
                sub += iq_signed8(gr_iq2xxs_grid[(w0 >> 8 * l) & 255], gr_ksigns_iq2xs[(w1 >> 7 * l) & 127], q8);
            isum += (2 * (int)(w1 >> 28) + 1) * sub;
        }
        sumf += gr_fp16_to_fp32(x[i].d) * y[i].d * isum;
    }
    *s = 0.125f * sumf;
}

static void vec_dot_iq2_xs_q8_K_generic(int n, float *s, const void *vx, const void *vy) {
    const block_iq2_xs *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const int8_t *q8 = y[i].qs;
        int isum = 0;
        for (int g = 0; g < 8; g++) {
            for (int h = 0; h < 2; h++) {              /* 16 weights per 4-bit scale */
                int sub = 0;
                for (int l = 2 * h; l < 2 * h + 2; l++, q8 += 8) {
                    uint16_t q = x[i].qs[4 * g + l];
                    sub += iq_signed8(gr_iq2xs_grid[q & 511], gr_ksigns_iq2xs[q >> 9], q8);
                }
                isum += (2 * ((x[i].scales[g] >> 4 * h) & 15) + 1) * sub;
            }
        }
        sumf += gr_fp16_to_fp32(x[i].d) * y[i].d * isum;
    }
    *s = 0.125f * sumf;
}

static void vec_dot_iq2_s_q8_K_generic(int n, float *s, const void *vx, const void *vy) {
    const block_iq2_s *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const int8_t *q8 = y[i].qs;
        int isum = 0;
        for (int g = 0; g < 8; g++) {
            for (int h = 0; h < 2; h++) {
                int sub = 0;
                for (int l = 2 * h; l < 2 * h + 2; l++, q8 += 8) {
                    int k = 4 * g + l;                 /* index: 8 low bits in qs, 2 high in qh */
                    sub += iq_signed8(gr_iq2s_grid[x[i].qs[k] | ((x[i].qh[g] >> 2 * l) & 3) << 8], x[i].qs[32 + k], q8);
                }
                isum += (2 * ((x[i].scales[g] >> 4 * h) & 15) + 1) * sub;
            }
        }
        sumf += gr_fp16_to_fp32(x[i].d) * y[i].d * isum;
    }
    *s = 0.125f * sumf;
}

static void vec_dot_iq3_xxs_q8_K_generic(int n, float *s, const void *vx, const void *vy) {
    const block_iq3_xxs *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const int8_t *q8 = y[i].qs;
        const uint8_t *qs = x[i].qs;
        int isum = 0;
        for (int g = 0; g < 8; g++, qs += 8) {
            uint32_t w = gr_load_u32(x[i].qs + QK_K / 4 + 4 * g);     /* 4 x 7 sign bits, 4-bit scale */
            int sub = 0;
            for (int l = 0; l < 4; l++, q8 += 8)
                sub += iq_signed4x2(gr_iq3xxs_grid[qs[2 * l]], gr_iq3xxs_grid[qs[2 * l + 1]],
                                    gr_ksigns_iq2xs[(w >> 7 * l) & 127], q8);
            isum += (2 * (int)(w >> 28) + 1) * sub;
        }
        sumf += gr_fp16_to_fp32(x[i].d) * y[i].d * isum;
    }
    *s = 0.25f * sumf;
}

static void vec_dot_iq3_s_q8_K_generic(int n, float *s, const void *vx, const void *vy) {
    const block_iq3_s *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const int8_t *q8 = y[i].qs;
        int isum = 0;
        for (int g = 0; g < 8; g++) {
            const uint8_t *qs = x[i].qs + 8 * g;
            int sub = 0;
            for (int l = 0; l < 4; l++, q8 += 8) {     /* index: 8 low bits in qs, the 9th in qh */
                int k1 = qs[2 * l] | ((x[i].qh[g] >> 2 * l) & 1) << 8;
                int k2 = qs[2 * l + 1] | ((x[i].qh[g] >> (2 * l + 1)) & 1) << 8;
                sub += iq_signed4x2(gr_iq3s_grid[k1], gr_iq3s_grid[k2], x[i].signs[4 * g + l], q8);
            }
            isum += (2 * ((x[i].scales[g / 2] >> 4 * (g % 2)) & 15) + 1) * sub;
        }
        sumf += gr_fp16_to_fp32(x[i].d) * y[i].d * isum;
    }
    *s = sumf;
}

static void vec_dot_iq1_s_q8_K_generic(int n, float *s, const void *vx, const void *vy) {
    const block_iq1_s *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const int8_t *q8 = y[i].qs;
        int isum = 0, idelta = 0;                      /* grid part, and the +-1 part of delta */
        for (int g = 0; g < 8; g++) {
            uint16_t qh = x[i].qh[g];
            int ls = 2 * ((qh >> 12) & 7) + 1, sub = 0;
            for (int l = 0; l < 4; l++, q8 += 8) {
                const int8_t *grid = gr_iq1s_grid[x[i].qs[4 * g + l] | ((qh >> 3 * l) & 7) << 8];
                for (int j = 0; j < 8; j++)
                    sub += grid[j] * q8[j];
            }
            isum += ls * sub;
            idelta += ls * (qh & 0x8000 ? -1 : 1) * (y[i].bsums[2 * g] + y[i].bsums[2 * g + 1]);
        }
        sumf += gr_fp16_to_fp32(x[i].d) * y[i].d * (8 * isum + idelta);
    }
    *s = IQ1S_DELTA * sumf;                            /* delta is 1/8: grid + delta = (8 grid +- 1) / 8 */
}

static void vec_dot_iq1_m_q8_K_generic(int n, float *s, const void *vx, const void *vy) {
    const block_iq1_m *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const uint8_t *sc = x[i].scales;
        uint16_t w[4];
        ggml_fp16_t d = gr_iq1m_words(sc, w);
        const int8_t *q8 = y[i].qs;
        int isum = 0, idelta = 0;
        for (int g = 0; g < 8; g++) {
            for (int h = 0; h < 2; h++) {              /* 16 weights per 3-bit scale */
                int ls = 2 * ((w[g / 2] >> (6 * (g % 2) + 3 * h)) & 7) + 1, sub = 0, dsum = 0;
                for (int l = 2 * h; l < 2 * h + 2; l++, q8 += 8) {
                    int nib = (x[i].qh[2 * g + h] >> 4 * (l % 2)) & 15, qsum = 0;
                    const int8_t *grid = gr_iq1s_grid[x[i].qs[4 * g + l] | (nib & 7) << 8];
                    for (int j = 0; j < 8; j++) {
                        sub += grid[j] * q8[j];
                        qsum += q8[j];
                    }
                    dsum += nib & 8 ? -qsum : qsum;
                }
                isum += ls * sub;
                idelta += ls * dsum;
            }
        }
        sumf += gr_fp16_to_fp32(d) * y[i].d * (8 * isum + idelta);
    }
    *s = IQ1M_DELTA * sumf;
}

/* a TQ1_0 byte's base-3 digit that multiplying by pw = 3^p brings to the top, as 0, 1, 2 (the
 * product wraps to 8 bits on purpose) */
static inline int tq1_digit(uint8_t byte, int pw) {
    return ((uint8_t)(byte * pw) * 3) >> 8;
}

static void vec_dot_tq1_0_q8_K_generic(int n, float *s, const void *vx, const void *vy) {
    const block_tq1_0 *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const int8_t *q8 = y[i].qs;
        int isum = 0;
        for (int p = 0, pw = 1; p < 5; p++, pw *= 3) {
            for (int m = 0; m < 32; m++)
                isum += (tq1_digit(x[i].qs[m], pw) - 1) * q8[32 * p + m];
            for (int m = 0; m < 16; m++)
                isum += (tq1_digit(x[i].qs[32 + m], pw) - 1) * q8[160 + 16 * p + m];
            for (int m = 0; m < 4 && p < 4; m++)
                isum += (tq1_digit(x[i].qh[m], pw) - 1) * q8[240 + 4 * p + m];
        }
        sumf += gr_fp16_to_fp32(x[i].d) * y[i].d * isum;
    }
    *s = sumf;
}

static void vec_dot_tq2_0_q8_K_generic(int n, float *s, const void *vx, const void *vy) {
    const block_tq2_0 *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const int8_t *q8 = y[i].qs;
        int isum = 0;
        for (int c = 0; c < 2; c++)
            for (int p = 0; p < 4; p++)
                for (int m = 0; m < 32; m++)
                    isum += (((x[i].qs[32 * c + m] >> 2 * p) & 3) - 1) * q8[128 * c + 32 * p + m];
        sumf += gr_fp16_to_fp32(x[i].d) * y[i].d * isum;
    }
    *s = sumf;
}
#endif
