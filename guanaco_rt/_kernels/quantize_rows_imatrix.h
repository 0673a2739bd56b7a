/* Weight quantizers with an importance matrix: a row of floats and the importance of its columns
 * -> a row of ggml blocks, as llama-quantize --imatrix writes them. The float expressions keep
 * ggml's operand order, as in quantize_rows.h, whose fitters these share.
 *
 * What ggml_quantize_chunk does when it is given quant_weights (llama-quantize --imatrix): qw
 * holds one importance per column of the row (the mean square of the activations that column
 * multiplies), and each fit weighs a weight's error by qw * sqrt(sigma2 + x^2), sigma2 a mean
 * square of the weights (of the row for the 32-weight types, twice that of the super-block for
 * the k-quants). Q6_K weighs by qw alone; Q8_0 ignores it. The scales of the k-quants are then
 * themselves fitted, weighted by their group's total weight, instead of being scaled from the
 * largest. */
#ifndef GUANACO_RT_QUANTIZE_ROWS_IMATRIX_H
#define GUANACO_RT_QUANTIZE_ROWS_IMATRIX_H
#include "quantize_rows.h"

/* Non-negative levels 0..nmax for n non-negative values (the sub-scales or sub-mins of a
 * super-block), weighted by qw (ggml's make_qp_quants): the scale from the largest, 8 nudged
 * scales tried on the weighted squared error, then up to 5 passes of coordinate descent. L is
 * uint8 as in ggml: a negative level wraps, and the wrapped value is what the sums then read. */
GRQ_NOINLINE static float grq_fit_qp(int n, int nmax, const float* x, uint8_t* L, const float* qw) {
    float mx = 0;
    for (int i = 0; i < n; i++) mx = mx > x[i] ? mx : x[i];
    if (mx < GRQ_EPS) { memset(L, 0, (size_t)n); return 0.f; }
    float iscale = nmax / mx;
    for (int i = 0; i < n; i++) L[i] = (uint8_t)grq_nearest(iscale * x[i]);
    float scale = 1 / iscale;
    float best_mse = 0;
    for (int i = 0; i < n; i++) {
        float diff = x[i] - scale * L[i];
        best_mse += qw[i] * diff * diff;
    }
    for (int is = -4; is <= 4; is++) {
        if (!is) continue;
        float iscale_is = (0.1f * is + nmax) / mx;
        float scale_is = 1 / iscale_is;
        float mse = 0;
        for (int i = 0; i < n; i++) {
            int l = grq_min(nmax, grq_nearest(iscale_is * x[i]));
            float diff = x[i] - scale_is * l;
            mse += qw[i] * diff * diff;
        }
        if (mse < best_mse) { best_mse = mse; iscale = iscale_is; }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = grq_min(nmax, grq_nearest(iscale * x[i]));
        L[i] = (uint8_t)l;
        sumlx += qw[i] * x[i] * l;
        suml2 += qw[i] * l * l;
    }
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = qw[i];
            float slx = sumlx - w * x[i] * L[i];
            float sl2 = suml2 - w * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                int nl = grq_min(nmax, grq_nearest(x[i] * sl2 / slx));
                if (nl != L[i]) {
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)nl; sumlx = slx; suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* w (n,) = qw * sqrt(sigma2 + x^2) */
static inline void grq_weights(int n, const float* x, const float* qw, float sigma2, float* w) {
    for (int j = 0; j < n; j++) w[j] = qw[j] * sqrtf(sigma2 + x[j] * x[j]);
}

static inline float grq_sum_sq(const float* x, int64_t n) {
    float s = 0;
    for (int64_t j = 0; j < n; j++) s += x[j] * x[j];
    return s;
}

/* the 32-weight types: sigma2 is the mean square of the whole row */
/* the symmetric fits of nb (1 or 2) blocks of 32 (two at a time: grq_fit_sym2) */
static void grq_sym32_w(const float* x, const float* qw, float sigma2, int nb, int nmax, int8_t L[64], float d[2]) {
    float w[64];
    grq_weights(32 * nb, x, qw, sigma2, w);
    if (nb == 2) grq_fit_sym2(32, nmax, x, x + 32, L, L + 32, &d[0], &d[1], w, w + 32);
    else d[0] = grq_fit_sym_w(32, nmax, x, w, L);
}

static void grq_q4_0_w(const float* x, block_q4_0* y, int64_t k, const float* qw) {
    const float sigma2 = grq_sum_sq(x, k) / (float)k;
    const int64_t nb = k / QK4_0;
    int8_t L2[64];
    float d[2];
    for (int64_t i = 0; i < nb; i++) {
        if (!(i & 1)) grq_sym32_w(x + 32 * i, qw + 32 * i, sigma2, nb - i >= 2 ? 2 : 1, 8, L2, d);
        const int8_t* L = L2 + 32 * (i & 1);
        y[i].d = grq_fp16(d[i & 1]);
        for (int j = 0; j < QK4_0 / 2; j++) y[i].qs[j] = (uint8_t)(L[j] | (L[j + QK4_0 / 2] << 4));
    }
}

static void grq_q5_0_w(const float* x, block_q5_0* y, int64_t k, const float* qw) {
    const float sigma2 = grq_sum_sq(x, k) / (float)k;
    const int64_t nb = k / QK5_0;
    int8_t L2[64];
    float d[2];
    for (int64_t i = 0; i < nb; i++) {
        if (!(i & 1)) grq_sym32_w(x + 32 * i, qw + 32 * i, sigma2, nb - i >= 2 ? 2 : 1, 16, L2, d);
        const int8_t* L = L2 + 32 * (i & 1);
        y[i].d = grq_fp16(d[i & 1]);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_0 / 2; j++) {
            const uint8_t lo = (uint8_t)L[j], hi = (uint8_t)L[j + QK5_0 / 2];
            y[i].qs[j] = (uint8_t)((lo & 0x0f) | ((hi & 0x0f) << 4));
            qh |= (uint32_t)((lo & 0x10u) >> 4) << j;
            qh |= (uint32_t)((hi & 0x10u) >> 4) << (j + QK5_0 / 2);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

/* Q4_1 and Q5_1: the affine fit of Q4_K's sub-blocks (ggml's make_qkx3_quants, which is
 * make_qkx2_quants with x^2 for missing weights: grq_fit_affine) on nb (1 or 2) blocks of 32 */
static void grq_affine32_w(const float* x, const float* qw, float sigma2, int nb, int nmax, uint8_t L[64],
                           float d[2], float m[2]) {
    float w[64];
    uint8_t Laux[32];
    grq_weights(32 * nb, x, qw, sigma2, w);
    if (nb == 2)
        grq_fit_affine2(32, nmax, x, x + 32, w, w + 32, L, L + 32, &m[0], &m[1], &d[0], &d[1], -0.9f, 0.05f, 36, 0);
    else
        d[0] = grq_fit_affine(32, nmax, x, w, L, &m[0], Laux, -0.9f, 0.05f, 36, 0);
}

static void grq_q4_1_w(const float* x, block_q4_1* y, int64_t k, const float* qw) {
    const float sigma2 = grq_sum_sq(x, k) / (float)k;
    const int64_t nb = k / QK4_1;
    uint8_t L[64];
    float d[2], m[2];
    for (int64_t i = 0; i < nb; i += 2) {
        const int n = nb - i >= 2 ? 2 : 1;
        grq_affine32_w(x + 32 * i, qw + 32 * i, sigma2, n, 15, L, d, m);
        for (int b = 0; b < n; b++) {
            const uint8_t* Lb = L + 32 * b;
            y[i + b].d = grq_fp16(d[b]);
            y[i + b].m = grq_fp16(-m[b]);
            for (int j = 0; j < QK4_1 / 2; j++) y[i + b].qs[j] = (uint8_t)(Lb[j] | (Lb[j + QK4_1 / 2] << 4));
        }
    }
}

static void grq_q5_1_w(const float* x, block_q5_1* y, int64_t k, const float* qw) {
    const float sigma2 = grq_sum_sq(x, k) / (float)k;
    const int64_t nb = k / QK5_1;
    uint8_t L[64];
    float d[2], m[2];
    for (int64_t i = 0; i < nb; i += 2) {
        const int n = nb - i >= 2 ? 2 : 1;
        grq_affine32_w(x + 32 * i, qw + 32 * i, sigma2, n, 31, L, d, m);
        for (int b = 0; b < n; b++) {
            const uint8_t* Lb = L + 32 * b;
            y[i + b].d = grq_fp16(d[b]);
            y[i + b].m = grq_fp16(-m[b]);
            uint32_t qh = 0;
            for (int j = 0; j < QK5_1 / 2; j++) {
                const uint8_t lo = Lb[j], hi = Lb[j + QK5_1 / 2];
                y[i + b].qs[j] = (uint8_t)((lo & 0x0f) | ((hi & 0x0f) << 4));
                qh |= (uint32_t)((lo & 0x10u) >> 4) << j;
                qh |= (uint32_t)((hi & 0x10u) >> 4) << (j + QK5_1 / 2);
            }
            memcpy(y[i + b].qh, &qh, 4);
        }
    }
}

static void grq_q2_K_w(const float* x, block_q2_K* y, int64_t k, const float* qw) {
    uint8_t L[QK_K], Ls[QK_K / 16], Lm[QK_K / 16];
    float w[QK_K], sw[QK_K / 16], mins[QK_K / 16], scales[QK_K / 16];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K, qw += QK_K) {
        const float sigma2 = grq_sum_sq(x, QK_K) / QK_K;       /* not twice, unlike Q3_K..Q5_K */
        grq_weights(QK_K, x, qw, sigma2, w);
        for (int j = 0; j < QK_K / 16; j++) {
            float s = 0;
            for (int l = 0; l < 16; l++) s += w[16 * j + l];
            sw[j] = s;
        }
        for (int j = 0; j < QK_K / 16; j += 2)
            grq_fit_affine2(16, 3, x + 16 * j, x + 16 * j + 16, w + 16 * j, w + 16 * j + 16, L + 16 * j,
                            L + 16 * j + 16, &mins[j], &mins[j + 1], &scales[j], &scales[j + 1], -0.9f, 0.05f, 36, 0);
        y[i].d = grq_fp16(grq_fit_qp(QK_K / 16, 15, scales, Ls, sw));
        y[i].dmin = grq_fp16(grq_fit_qp(QK_K / 16, 15, mins, Lm, sw));
        const float dm = grq_f32(y[i].d), mm = grq_f32(y[i].dmin);
        for (int j = 0; j < QK_K / 16; j++) y[i].scales[j] = (uint8_t)(Ls[j] | (Lm[j] << 4));
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = dm * (y[i].scales[j] & 0xf);
            if (!d) continue;
            const float m = mm * (y[i].scales[j] >> 4);
            for (int l = 0; l < 16; l++) L[16 * j + l] = (uint8_t)grq_clamp(grq_nearest((x[16 * j + l] + m) / d), 0, 3);
        }
        for (int j = 0; j < QK_K; j += 128)
            for (int l = 0; l < 32; l++)
                y[i].qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    }
}

static void grq_q3_K_w(const float* x, block_q3_K* y, int64_t k, const float* qw) {
    int8_t L[QK_K], Ls[QK_K / 16];
    float w[QK_K], sw[QK_K / 16], scales[QK_K / 16];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K, qw += QK_K) {
        const float sigma2 = 2 * grq_sum_sq(x, QK_K) / QK_K;
        grq_weights(QK_K, x, qw, sigma2, w);
        for (int j = 0; j < QK_K / 16; j++) {
            float s = 0;
            for (int l = 0; l < 16; l++) s += w[16 * j + l];
            sw[j] = s;
        }
        for (int j = 0; j < QK_K / 16; j += 2)
            grq_fit_sym2(16, 4, x + 16 * j, x + 16 * j + 16, L + 16 * j, L + 16 * j + 16, &scales[j], &scales[j + 1],
                         w + 16 * j, w + 16 * j + 16);
        /* the 6-bit sub-scales are a weighted fit of the scales (levels 0..63 = -32..31 + 32),
         * packed as in grq_q3_K */
        memset(y[i].scales, 0, 12);
        const float d_block = grq_fit_sym_w(QK_K / 16, 32, scales, sw, Ls);
        for (int j = 0; j < QK_K / 16; j++) {
            int l = Ls[j];
            if (j < 8) y[i].scales[j] = (uint8_t)(l & 0xf);
            else y[i].scales[j - 8] |= (uint8_t)((l & 0xf) << 4);
            y[i].scales[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
        }
        y[i].d = grq_fp16(d_block);
        for (int j = 0; j < QK_K / 16; j++) {
            int sc = j < 8 ? y[i].scales[j] & 0xf : y[i].scales[j - 8] >> 4;
            sc = (int8_t)((sc | (((y[i].scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
            const float d = grq_f32(y[i].d) * sc;
            if (!d) continue;
            for (int l = 0; l < 16; l++) L[16 * j + l] = (int8_t)(grq_clamp(grq_nearest(x[16 * j + l] / d), -4, 3) + 4);
        }
        memset(y[i].hmask, 0, QK_K / 8);
        for (int j = 0; j < QK_K; j++) {
            if (L[j] > 3) { y[i].hmask[j % 32] |= (uint8_t)(1u << (j / 32)); L[j] -= 4; }
        }
        for (int j = 0; j < QK_K; j += 128)
            for (int l = 0; l < 32; l++)
                y[i].qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    }
}

/* Q4_K and Q5_K: 8 affine fits of 32, then the 6-bit sub-scales and sub-mins fitted (grq_fit_qp);
 * clamp63 (Q5_K's) caps them at 63 before packing, Q4_K packs them as they come. The weights
 * are requantized against what the packed bytes decode to. */
static void grq_k_affine_block_w(const float* x, const float* qw, uint8_t* L, uint8_t packed[12],
                                 ggml_fp16_t* d_out, ggml_fp16_t* dmin_out, int nmax, int clamp63) {
    float w[QK_K], sw[QK_K / 32], mins[QK_K / 32], scales[QK_K / 32];
    uint8_t Ls[QK_K / 32], Lm[QK_K / 32];
    const float sigma2 = 2 * grq_sum_sq(x, QK_K) / QK_K;
    grq_weights(QK_K, x, qw, sigma2, w);
    for (int j = 0; j < QK_K / 32; j++) {
        float s = 0;
        for (int l = 0; l < 32; l++) s += w[32 * j + l];
        sw[j] = s;
    }
    for (int j = 0; j < QK_K / 32; j += 2)
        grq_fit_affine2(32, nmax, x + 32 * j, x + 32 * j + 32, w + 32 * j, w + 32 * j + 32, L + 32 * j,
                        L + 32 * j + 32, &mins[j], &mins[j + 1], &scales[j], &scales[j + 1], -0.9f, 0.05f, 36, 0);
    const float d_block = grq_fit_qp(QK_K / 32, 63, scales, Ls, sw);
    const float m_block = grq_fit_qp(QK_K / 32, 63, mins, Lm, sw);
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t ls = Ls[j], lm = Lm[j];
        if (clamp63) {
            if (ls > 63) ls = 63;
            if (lm > 63) lm = 63;
        }
        if (j < 4) {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (uint8_t)((ls & 0xf) | ((lm & 0xf) << 4));
            packed[j - 4] |= (uint8_t)((ls >> 4) << 6);
            packed[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *d_out = grq_fp16(d_block);
    *dmin_out = grq_fp16(m_block);
    const float dd = grq_f32(*d_out), dm0 = grq_f32(*dmin_out);
    for (int j = 0; j < QK_K / 32; j++) {
        /* decoded from the packed bytes (Q4_K's unclamped values may have spilled over) */
        int sc, mn;
        if (j < 4) {
            sc = packed[j] & 63;
            mn = packed[j + 4] & 63;
        } else {
            sc = (packed[j + 4] & 0xf) | ((packed[j - 4] >> 6) << 4);
            mn = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
        }
        const float d = dd * sc;
        if (!d) continue;
        const float dm = dm0 * mn;
        for (int l = 0; l < 32; l++) L[32 * j + l] = (uint8_t)grq_clamp(grq_nearest((x[32 * j + l] + dm) / d), 0, nmax);
    }
}

static void grq_q4_K_w(const float* x, block_q4_K* y, int64_t k, const float* qw) {
    uint8_t L[QK_K];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K, qw += QK_K) {
        grq_k_affine_block_w(x, qw, L, y[i].scales, &y[i].d, &y[i].dmin, 15, 0);
        for (int j = 0; j < QK_K; j += 64)
            for (int l = 0; l < 32; l++) y[i].qs[j / 2 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

static void grq_q5_K_w(const float* x, block_q5_K* y, int64_t k, const float* qw) {
    uint8_t L[QK_K];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K, qw += QK_K) {
        grq_k_affine_block_w(x, qw, L, y[i].scales, &y[i].d, &y[i].dmin, 31, 1);
        memset(y[i].qh, 0, QK_K / 8);
        for (int n = 0, p = 0; n < QK_K; n += 64, p++) {
            for (int l = 0; l < 32; l++) {
                int a = L[n + l], b = L[n + l + 32];
                if (a > 15) { a -= 16; y[i].qh[l] |= (uint8_t)(1u << (2 * p)); }
                if (b > 15) { b -= 16; y[i].qh[l] |= (uint8_t)(2u << (2 * p)); }
                y[i].qs[n / 2 + l] = (uint8_t)(a | (b << 4));
            }
        }
    }
}

/* x (k,) -> y with the importance qw (k,) of its columns, as ggml_quantize_chunk with an imatrix
 * (NULL: none, as grq_quantize_row); returns 0, or -1 for a type it does not make */
static int grq_quantize_row_w(int type, const float* x, void* y, int64_t k, const float* qw) {
    if (!qw) return grq_quantize_row(type, x, y, k);
    switch (type) {
    case GGML_TYPE_Q4_0: grq_q4_0_w(x, (block_q4_0*)y, k, qw); return 0;
    case GGML_TYPE_Q4_1: grq_q4_1_w(x, (block_q4_1*)y, k, qw); return 0;
    case GGML_TYPE_Q5_0: grq_q5_0_w(x, (block_q5_0*)y, k, qw); return 0;
    case GGML_TYPE_Q5_1: grq_q5_1_w(x, (block_q5_1*)y, k, qw); return 0;
    case GGML_TYPE_Q8_0: grq_q8_0(x, (block_q8_0*)y, k); return 0;         /* ggml ignores qw for Q8_0 */
    case GGML_TYPE_IQ4_NL: grq_iq4_nl(x, (block_iq4_nl*)y, k, qw); return 0;
    case GGML_TYPE_Q2_K: grq_q2_K_w(x, (block_q2_K*)y, k, qw); return 0;
    case GGML_TYPE_Q3_K: grq_q3_K_w(x, (block_q3_K*)y, k, qw); return 0;
    case GGML_TYPE_Q4_K: grq_q4_K_w(x, (block_q4_K*)y, k, qw); return 0;
    case GGML_TYPE_Q5_K: grq_q5_K_w(x, (block_q5_K*)y, k, qw); return 0;
    case GGML_TYPE_Q6_K: grq_q6_K(x, (block_q6_K*)y, k, qw); return 0;   /* quantize_rows.h */
    default: return -1;
    }
}

#endif
