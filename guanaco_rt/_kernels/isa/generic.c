/* The generic unit in C: portable dot products and attention loops, the readable spec every
 * other unit agrees with (a port of _generic.pyx, the same float operations in the same
 * order, so the same bits: tests/test_c_units.py).
 *
 * Dot products of one weight row with one quantized activation row: integer sums per
 * block, then one float expression per block, as ggml's scalar branch. s[0] = <x, y> over
 * n elements. Build with -std=c11 -ffp-contract=off (generic.h says why). */
#include "generic.h"
#include "generic_iq.h"   /* the i-quants and ternary types */

/* ---- f32 / f16 weights against f32 activations: float products summed in double ---- */
static void vec_dot_f32_generic(int n, float *s, const void *vx, const void *vy) {
    const float *x = vx, *y = vy;
    double acc = 0.0;
    for (int i = 0; i < n; i++)
        acc += x[i] * y[i];
    *s = (float)acc;
}

static void vec_dot_f16_generic(int n, float *s, const void *vx, const void *vy) {
    const ggml_fp16_t *x = vx;
    const float *y = vy;
    double acc = 0.0;
    for (int i = 0; i < n; i++)
        acc += gr_fp16_to_fp32(x[i]) * y[i];
    *s = (float)acc;
}

static void vec_dot_bf16_generic(int n, float *s, const void *vx, const void *vy) {
    const ggml_bf16_t *x = vx;
    const float *y = vy;
    double acc = 0.0;
    for (int i = 0; i < n; i++)
        acc += gr_bf16_to_fp32(x[i]) * y[i];
    *s = (float)acc;
}

/* ---- 32-weight blocks against q8_1 ---- */
static void vec_dot_q4_0_q8_1_generic(int n, float *s, const void *vx, const void *vy) {
    const block_q4_0 *x = vx;
    const block_q8_1 *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK8_1; i++) {
        int sumi = 0;
        for (int j = 0; j < 16; j++)
            sumi += ((x[i].qs[j] & 0x0F) - 8) * y[i].qs[j] + ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + 16];
        sumf += sumi * gr_fp16_to_fp32(x[i].d) * y[i].d;
    }
    *s = sumf;
}

static void vec_dot_q4_1_q8_1_generic(int n, float *s, const void *vx, const void *vy) {
    const block_q4_1 *x = vx;
    const block_q8_1 *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK8_1; i++) {
        int sumi = 0;
        for (int j = 0; j < 16; j++)
            sumi += (x[i].qs[j] & 0x0F) * y[i].qs[j] + (x[i].qs[j] >> 4) * y[i].qs[j + 16];
        sumf += gr_fp16_to_fp32(x[i].d) * y[i].d * sumi + gr_fp16_to_fp32(x[i].m) * y[i].s;
    }
    *s = sumf;
}

/* weight j of a q5 block, unsigned (0..31): its nibble and bit j of qh */
static inline int q5_weight(const uint8_t *qs, uint32_t qh, int j) {
    return j < 16 ? (int)((qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10))
                  : (int)((qs[j - 16] >> 4) | ((qh >> (j - 16 + 12)) & 0x10));
}

static void vec_dot_q5_0_q8_1_generic(int n, float *s, const void *vx, const void *vy) {
    const block_q5_0 *x = vx;
    const block_q8_1 *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK8_1; i++) {
        uint32_t qh = gr_load_u32(x[i].qh);
        int sumi = 0;
        for (int j = 0; j < 16; j++)
            sumi += (q5_weight(x[i].qs, qh, j) - 16) * y[i].qs[j] + (q5_weight(x[i].qs, qh, j + 16) - 16) * y[i].qs[j + 16];
        sumf += sumi * gr_fp16_to_fp32(x[i].d) * y[i].d;
    }
    *s = sumf;
}

static void vec_dot_q5_1_q8_1_generic(int n, float *s, const void *vx, const void *vy) {
    const block_q5_1 *x = vx;
    const block_q8_1 *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK8_1; i++) {
        uint32_t qh = gr_load_u32(x[i].qh);
        int sumi = 0;
        for (int j = 0; j < 16; j++)
            sumi += q5_weight(x[i].qs, qh, j) * y[i].qs[j] + q5_weight(x[i].qs, qh, j + 16) * y[i].qs[j + 16];
        sumf += gr_fp16_to_fp32(x[i].d) * y[i].d * sumi + gr_fp16_to_fp32(x[i].m) * y[i].s;
    }
    *s = sumf;
}

static void vec_dot_q8_0_q8_1_generic(int n, float *s, const void *vx, const void *vy) {
    const block_q8_0 *x = vx;
    const block_q8_1 *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK8_1; i++) {
        int sumi = 0;
        for (int j = 0; j < 32; j++)
            sumi += x[i].qs[j] * y[i].qs[j];
        sumf += sumi * gr_fp16_to_fp32(x[i].d) * y[i].d;
    }
    *s = sumf;
}

static void vec_dot_iq4_nl_q8_1_generic(int n, float *s, const void *vx, const void *vy) {
    const block_iq4_nl *x = vx;
    const block_q8_1 *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK8_1; i++) {
        int sumi = 0;
        for (int j = 0; j < 16; j++)
            sumi += kvalues_iq4nl[x[i].qs[j] & 0x0F] * y[i].qs[j] + kvalues_iq4nl[x[i].qs[j] >> 4] * y[i].qs[j + 16];
        sumf += sumi * gr_fp16_to_fp32(x[i].d) * y[i].d;
    }
    *s = sumf;
}

/* ---- k-quants against q8_K: per super-block one integer sum isum (each 16 or 32 weights'
 * sum times its integer scale), the minimums through q8_K's block sums ---- */
static void vec_dot_q2_K_q8_K_generic(int n, float *s, const void *vx, const void *vy) {
    const block_q2_K *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const uint8_t *q2 = x[i].qs, *sc = x[i].scales;
        const int8_t *q8 = y[i].qs;
        int summs = 0, isum = 0, is = 0;
        for (int j = 0; j < 16; j++)
            summs += y[i].bsums[j] * (sc[j] >> 4);
        for (int k = 0; k < 2; k++, q2 += 32) {
            for (int shift = 0; shift < 8; shift += 2, q8 += 32) {
                for (int h = 0; h < 2; h++) {          /* sub-blocks of weights l = 16h..16h+15 */
                    int isuml = 0;
                    for (int l = 16 * h; l < 16 * h + 16; l++)
                        isuml += q8[l] * ((q2[l] >> shift) & 3);
                    isum += (sc[is++] & 0xF) * isuml;
                }
            }
        }
        sumf += y[i].d * gr_fp16_to_fp32(x[i].d) * isum - y[i].d * gr_fp16_to_fp32(x[i].dmin) * summs;
    }
    *s = sumf;
}

static void vec_dot_q3_K_q8_K_generic(int n, float *s, const void *vx, const void *vy) {
    const block_q3_K *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    int8_t sc[16], aux8[QK_K];
    for (int i = 0; i < n / QK_K; i++) {
        const uint8_t *q3 = x[i].qs;
        uint8_t m = 1;
        for (int k = 0; k < 2; k++, q3 += 32)
            for (int j = 0, shift = 0; j < 4; j++, shift += 2, m <<= 1)
                for (int l = 0; l < 32; l++)
                    aux8[128 * k + 32 * j + l] = (int8_t)(((q3[l] >> shift) & 3) - ((x[i].hmask[l] & m) ? 0 : 4));
        gr_unpack_q3_K_scales(x[i].scales, sc);
        int isum = 0;
        for (int j = 0; j < 16; j++) {
            int sub = 0;
            for (int l = 0; l < 16; l++)
                sub += y[i].qs[16 * j + l] * aux8[16 * j + l];
            isum += sc[j] * sub;
        }
        sumf += gr_fp16_to_fp32(x[i].d) * y[i].d * isum;
    }
    *s = sumf;
}

/* q4_K (five = 0) and q5_K (five = 1): the same scales, minimums and nibbles; q5_K adds a
 * 5th bit from qh. Both block structs start d, dmin, scales. */
static inline void vec_dot_k45_generic(int n, float *s, const void *vx, const void *vy, int five) {
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    uint8_t sc[8], mn[8];
    for (int i = 0; i < n / QK_K; i++) {
        const block_q4_K *x4 = (const block_q4_K *)vx + i;
        const block_q5_K *x5 = (const block_q5_K *)vx + i;
        const uint8_t *scales = five ? x5->scales : x4->scales, *ql = five ? x5->qs : x4->qs;
        const uint8_t *qh = x5->qh;
        ggml_fp16_t d = five ? x5->d : x4->d, dmin = five ? x5->dmin : x4->dmin;
        const int8_t *q8 = y[i].qs;
        for (int j = 0; j < 8; j++)
            gr_scale_min_k4(j, scales, &sc[j], &mn[j]);
        int summs = 0, isum = 0;
        for (int j = 0; j < 8; j++)
            summs += (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]) * mn[j];
        for (int j = 0; j < 4; j++, ql += 32, q8 += 64) {
            int sub1 = 0, sub2 = 0;
            for (int l = 0; l < 32; l++) {
                sub1 += ((ql[l] & 0xF) + (five && (qh[l] & (1 << 2 * j)) ? 16 : 0)) * q8[l];
                sub2 += ((ql[l] >> 4) + (five && (qh[l] & (2 << 2 * j)) ? 16 : 0)) * q8[l + 32];
            }
            isum += sc[2 * j] * sub1 + sc[2 * j + 1] * sub2;
        }
        sumf += gr_fp16_to_fp32(d) * y[i].d * isum - gr_fp16_to_fp32(dmin) * y[i].d * summs;
    }
    *s = sumf;
}

static void vec_dot_q4_K_q8_K_generic(int n, float *s, const void *vx, const void *vy) {
    vec_dot_k45_generic(n, s, vx, vy, 0);
}

static void vec_dot_q5_K_q8_K_generic(int n, float *s, const void *vx, const void *vy) {
    vec_dot_k45_generic(n, s, vx, vy, 1);
}

static void vec_dot_q6_K_q8_K_generic(int n, float *s, const void *vx, const void *vy) {
    const block_q6_K *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    int8_t aux8[QK_K];
    for (int i = 0; i < n / QK_K; i++) {
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        for (int k = 0; k < 2; k++, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                aux8[128 * k + l] = (int8_t)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
                aux8[128 * k + l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                aux8[128 * k + l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                aux8[128 * k + l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        int isum = 0;
        for (int j = 0; j < 16; j++) {
            int sub = 0;
            for (int l = 0; l < 16; l++)
                sub += y[i].qs[16 * j + l] * aux8[16 * j + l];
            isum += x[i].scales[j] * sub;
        }
        sumf += gr_fp16_to_fp32(x[i].d) * y[i].d * isum;
    }
    *s = sumf;
}

/* iq4_xs: each sub-block's integer sum times its 6-bit scale less 32, one float step per super-block */
static void vec_dot_iq4_xs_q8_K_generic(int n, float *s, const void *vx, const void *vy) {
    const block_iq4_xs *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        int isum = 0;
        for (int ib = 0; ib < 8; ib++) {
            const uint8_t *qs = x[i].qs + 16 * ib;
            const int8_t *q8 = y[i].qs + 32 * ib;
            int ls = ((x[i].scales_l[ib / 2] >> 4 * (ib % 2)) & 0xF) | (((x[i].scales_h >> 2 * ib) & 3) << 4), sub = 0;
            for (int l = 0; l < 16; l++)
                sub += kvalues_iq4nl[qs[l] & 0xF] * q8[l] + kvalues_iq4nl[qs[l] >> 4] * q8[l + 16];
            isum += (ls - 32) * sub;
        }
        sumf += gr_fp16_to_fp32(x[i].d) * y[i].d * isum;
    }
    *s = sumf;
}

/* ---- attention inner loops over one head: q . k for every position, then sum a * v ---- */
static inline float kv_at(const void *kv, int64_t at, int f16) {
    return f16 ? gr_fp16_to_fp32(((const ggml_fp16_t *)kv)[at]) : ((const float *)kv)[at];
}

static void kv_scores_generic(float *a, const float *q, const void *kv, int64_t off, int64_t stride, int n_pos,
                              int n, float scale, int f16) {
    for (int p = 0; p < n_pos; p++) {
        float acc = 0.0f;
        for (int i = 0; i < n; i++)
            acc += q[i] * kv_at(kv, off + p * stride + i, f16);
        a[p] = acc * scale;
    }
}

static void kv_mix_generic(float *out, const float *a, const void *kv, int64_t off, int64_t stride, int n_pos,
                           int n, int f16) {
    for (int i = 0; i < n; i++)
        out[i] = 0.0f;
    for (int p = 0; p < n_pos; p++)
        for (int i = 0; i < n; i++)
            out[i] += a[p] * kv_at(kv, off + p * stride + i, f16);
}

/* ---- the table ---- */
const isa_kernels_t gr_isa_generic = {
    .name = "generic",
    .types = {
        [GGML_TYPE_F32] = {.vec_dot = vec_dot_f32_generic},
        [GGML_TYPE_F16] = {.vec_dot = vec_dot_f16_generic},
        [GGML_TYPE_Q4_0] = {.vec_dot = vec_dot_q4_0_q8_1_generic},
        [GGML_TYPE_Q4_1] = {.vec_dot = vec_dot_q4_1_q8_1_generic},
        [GGML_TYPE_Q5_0] = {.vec_dot = vec_dot_q5_0_q8_1_generic},
        [GGML_TYPE_Q5_1] = {.vec_dot = vec_dot_q5_1_q8_1_generic},
        [GGML_TYPE_Q8_0] = {.vec_dot = vec_dot_q8_0_q8_1_generic},
        [GGML_TYPE_Q2_K] = {.vec_dot = vec_dot_q2_K_q8_K_generic},
        [GGML_TYPE_Q3_K] = {.vec_dot = vec_dot_q3_K_q8_K_generic},
        [GGML_TYPE_Q4_K] = {.vec_dot = vec_dot_q4_K_q8_K_generic},
        [GGML_TYPE_Q5_K] = {.vec_dot = vec_dot_q5_K_q8_K_generic},
        [GGML_TYPE_Q6_K] = {.vec_dot = vec_dot_q6_K_q8_K_generic},
        [GGML_TYPE_IQ4_NL] = {.vec_dot = vec_dot_iq4_nl_q8_1_generic},
        [GGML_TYPE_IQ4_XS] = {.vec_dot = vec_dot_iq4_xs_q8_K_generic},
        [GGML_TYPE_BF16] = {.vec_dot = vec_dot_bf16_generic},
        /* ---- i-quants and ternary types (issue 23): generic_iq.h */
        [GGML_TYPE_IQ2_XXS] = {.vec_dot = vec_dot_iq2_xxs_q8_K_generic},
        [GGML_TYPE_IQ2_XS] = {.vec_dot = vec_dot_iq2_xs_q8_K_generic},
        [GGML_TYPE_IQ2_S] = {.vec_dot = vec_dot_iq2_s_q8_K_generic},
        [GGML_TYPE_IQ3_XXS] = {.vec_dot = vec_dot_iq3_xxs_q8_K_generic},
        [GGML_TYPE_IQ3_S] = {.vec_dot = vec_dot_iq3_s_q8_K_generic},
        [GGML_TYPE_IQ1_S] = {.vec_dot = vec_dot_iq1_s_q8_K_generic},
        [GGML_TYPE_IQ1_M] = {.vec_dot = vec_dot_iq1_m_q8_K_generic},
        [GGML_TYPE_TQ1_0] = {.vec_dot = vec_dot_tq1_0_q8_K_generic},
        [GGML_TYPE_TQ2_0] = {.vec_dot = vec_dot_tq2_0_q8_K_generic},
    },
    .kv_scores = kv_scores_generic,
    .kv_mix = kv_mix_generic,
};
