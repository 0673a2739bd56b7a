/* The NEON unit's 8-row family (neon.c includes it once, after its helpers: INLINE, h2f,
 * gr_load_u32): dot_r8 and dot_r8_x4 on the interleaved layouts of ggml_blocks.h. */
#ifndef GUANACO_RT_NEON_R8_H
#define GUANACO_RT_NEON_R8_H

/* ---- 8 interleaved rows (ggml_blocks.h: block_q4_0x8 ... block_q6_Kx8) ------------------
 * A 16-byte vector of an interleaved block holds 4 bytes of each of 4 rows (rows 4h..4h+3),
 * all against the same 4 activation bytes: lane r sums row 4h + r, so 8 rows need no
 * horizontal sum, and the float work runs on 4 rows per instruction, in generic's order
 * for each row (the same bits). T = 1 (dot_r8) or 4 tokens (dot_r8_x4). */

/* lane r: acc[r] + <bytes 4r..4r+3 of w, the 4 bytes that y4 repeats> */
INLINE int32x4_t dot4(int32x4_t acc, int8x16_t w, int8x16_t y4) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, w, y4);
#else
    return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(y4))),
                                     vpaddlq_s16(vmull_high_s8(w, y4))));
#endif
}

INLINE int8x16_t bcast4(const int8_t *p) { return vreinterpretq_s8_u32(vdupq_n_u32(gr_load_u32((const uint8_t *)p))); }

INLINE float32x4_t h2f4(const ggml_fp16_t *h) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h))); }

/* byte b of each 32-bit lane of v, as an integer */
INLINE int32x4_t lane_byte(uint8x16_t v, int b) {
    return vreinterpretq_s32_u32(vandq_u32(vshlq_u32(vreinterpretq_u32_u8(v), vdupq_n_s32(-8 * b)), vdupq_n_u32(0xFF)));
}

/* sum[t][h] (lane r: row 4h + r) = the integer sums of 8 rows' 4K weights against yq[t]:
 * w[k][h] holds weights 4k..4k+3 of rows 4h..4h+3, against yq[t][4k..4k+3] */
INLINE void r8_sums(int8x16_t w[][2], const int K, const int8_t *const *yq, const int T, int32x4_t sum[4][2]) {
#if defined(__ARM_FEATURE_MATMUL_INT8)
    if (T == 4) {   /* SMMLA: 2 rows x 8 weights by 8 weights x 2 tokens -> [ra ta, ra tb, rb ta, rb tb] */
        int32x4_t acc[4][2];
        for (int rp = 0; rp < 4; rp++)
            acc[rp][0] = acc[rp][1] = vdupq_n_s32(0);
        for (int k = 0; k < K; k += 2) {        /* weights 4k..4k+7: each row's 8 bytes side by side */
            const int8x16_t b[2] = {vcombine_s8(vld1_s8(yq[0] + 4 * k), vld1_s8(yq[1] + 4 * k)),
                                    vcombine_s8(vld1_s8(yq[2] + 4 * k), vld1_s8(yq[3] + 4 * k))};
            for (int h = 0; h < 2; h++) {
                int32x4_t lo = vreinterpretq_s32_s8(w[k][h]), hi = vreinterpretq_s32_s8(w[k + 1][h]);
                int8x16_t a[2] = {vreinterpretq_s8_s32(vzip1q_s32(lo, hi)), vreinterpretq_s8_s32(vzip2q_s32(lo, hi))};
                for (int e = 0; e < 2; e++)     /* rows 4h + 2e, 4h + 2e + 1 */
                    for (int tp = 0; tp < 2; tp++)
                        acc[2 * h + e][tp] = vmmlaq_s32(acc[2 * h + e][tp], a[e], b[tp]);
            }
        }
        for (int h = 0; h < 2; h++) {           /* back to one token's 4 rows per register */
            for (int tp = 0; tp < 2; tp++) {
                sum[2 * tp][h] = vuzp1q_s32(acc[2 * h][tp], acc[2 * h + 1][tp]);
                sum[2 * tp + 1][h] = vuzp2q_s32(acc[2 * h][tp], acc[2 * h + 1][tp]);
            }
        }
        return;
    }
#endif
    for (int t = 0; t < T; t++) {
        sum[t][0] = sum[t][1] = vdupq_n_s32(0);
        for (int k = 0; k < K; k++) {
            int8x16_t yk = bcast4(yq[t] + 4 * k);
            sum[t][0] = dot4(sum[t][0], w[k][0], yk);
            sum[t][1] = dot4(sum[t][1], w[k][1], yk);
        }
    }
}

/* q4_0, q4_1, q8_0, iq4_nl (laid out as q4_0; its nibbles index kvalues_iq4nl): s[t * s_stride + r] = <row r, y_t> */
INLINE void dot_r8_32(int type, const int T, int n, float *s, int64_t s_stride, const void *vx, const void *vy,
                      int64_t y_stride) {
    const block_q8_1 *y[4];
    float32x4_t acc[4][2];
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const int8x16_t eight = vdupq_n_s8(type == GGML_TYPE_Q4_0 ? 8 : 0), kv = vld1q_s8(kvalues_iq4nl);
    const int as_q4_0 = type == GGML_TYPE_Q4_0 || type == GGML_TYPE_IQ4_NL;     /* block_iq4_nlx8: q4_0x8's layout */
    for (int t = 0; t < T; t++) {
        y[t] = (const block_q8_1 *)((const uint8_t *)vy + t * y_stride);
        acc[t][0] = acc[t][1] = vdupq_n_f32(0.0f);
    }
    for (int i = 0; i < n / QK8_1; i++) {
        const block_q4_0x8 *x0 = (const block_q4_0x8 *)vx + i;
        const block_q4_1x8 *x1 = (const block_q4_1x8 *)vx + i;
        const block_q8_0x8 *x8 = (const block_q8_0x8 *)vx + i;
        const uint8_t *qs = as_q4_0 ? x0->qs : type == GGML_TYPE_Q4_1 ? x1->qs : (const uint8_t *)x8->qs;
        const ggml_fp16_t *d = as_q4_0 ? x0->d : type == GGML_TYPE_Q4_1 ? x1->d : x8->d;
        const float32x4_t dx[2] = {h2f4(d), h2f4(d + 4)};
        int8x16_t w[8][2];          /* weights 4k..4k+3 (4-bit: k < 4 low nibbles, k >= 4 high) */
        for (int k = 0; k < (type == GGML_TYPE_Q8_0 ? 8 : 4); k++) {
            for (int h = 0; h < 2; h++) {
                uint8x16_t v = vld1q_u8(qs + 32 * k + 16 * h);
                if (type == GGML_TYPE_Q8_0) {
                    w[k][h] = vreinterpretq_s8_u8(v);
                } else if (type == GGML_TYPE_IQ4_NL) {
                    w[k][h] = vqtbl1q_s8(kv, vandq_u8(v, m4));
                    w[k + 4][h] = vqtbl1q_s8(kv, vshrq_n_u8(v, 4));
                } else {
                    w[k][h] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, m4)), eight);
                    w[k + 4][h] = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), eight);
                }
            }
        }
        const int8_t *yq[4];
        int32x4_t sum[4][2];
        for (int t = 0; t < T; t++)
            yq[t] = y[t][i].qs;
        r8_sums(w, 8, yq, T, sum);
        for (int t = 0; t < T; t++) {
            const block_q8_1 *yb = &y[t][i];
            const float32x4_t dy = vdupq_n_f32(yb->d);
            for (int h = 0; h < 2; h++) {
                if (type == GGML_TYPE_Q4_1)     /* dx * dy * sumi + m * s */
                    acc[t][h] = vaddq_f32(acc[t][h], vaddq_f32(vmulq_f32(vmulq_f32(dx[h], dy), vcvtq_f32_s32(sum[t][h])),
                                                               vmulq_f32(h2f4(x1->m + 4 * h), vdupq_n_f32(yb->s))));
                else                            /* sumi * dx * dy */
                    acc[t][h] = vaddq_f32(acc[t][h], vmulq_f32(vmulq_f32(vcvtq_f32_s32(sum[t][h]), dx[h]), dy));
            }
        }
    }
    for (int t = 0; t < T; t++) {
        vst1q_f32(s + t * s_stride, acc[t][0]);
        vst1q_f32(s + t * s_stride + 4, acc[t][1]);
    }
}

/* the 8 rows' integer scales (sc) and minimums (mn) of each 16 weights g, as row lanes
 * (h: rows 4h..4h+3), and their d, dmin */
typedef struct {
    int32x4_t sc[16][2], mn[16][2];
    float32x4_t d[2], dmin[2];
} r8scales_t;

/* q2_K, q6_K: scales[16p + 2r + e] = row r's scale 2p + e; 8 rows' pairs p widened to 16 bits */
INLINE void r8_scale_pairs(const uint8_t *scales, int is_signed, r8scales_t *k) {
    for (int p = 0; p < 8; p++) {
        uint8x16_t v = vld1q_u8(scales + 16 * p);
        for (int h = 0; h < 2; h++) {
            int16x8_t w = is_signed ? vmovl_s8(h ? vget_high_s8(vreinterpretq_s8_u8(v)) : vget_low_s8(vreinterpretq_s8_u8(v)))
                                    : vreinterpretq_s16_u16(vmovl_u8(h ? vget_high_u8(v) : vget_low_u8(v)));
            int32x4_t x = vreinterpretq_s32_s16(w);       /* lane r: scale 2p (low half), 2p + 1 (high) */
            int32x4_t e0 = vshrq_n_s32(vshlq_n_s32(x, 16), 16), e1 = vshrq_n_s32(x, 16);
            if (is_signed) {                              /* q6_K: the int8 scales */
                k->sc[2 * p][h] = e0;
                k->sc[2 * p + 1][h] = e1;
            } else {                                      /* q2_K: scale & 15, minimum >> 4 */
                const int32x4_t m15 = vdupq_n_s32(15);
                k->sc[2 * p][h] = vandq_s32(e0, m15);
                k->sc[2 * p + 1][h] = vandq_s32(vshrq_n_s32(x, 16), m15);
                k->mn[2 * p][h] = vshrq_n_s32(vandq_s32(e0, vdupq_n_s32(0xFF)), 4);
                k->mn[2 * p + 1][h] = vshrq_n_s32(e1, 4);
            }
        }
    }
}

/* q4_K, q5_K: the 3 words of 8 rows side by side (scales[32w + 4r + b] = row r's byte 4w + b),
 * unpacked as gr_scale_min_k4 does, 4 rows at a time */
INLINE void r8_scales_k4(const uint8_t *scales, r8scales_t *k) {
    const uint8x16_t m63 = vdupq_n_u8(63), m15 = vdupq_n_u8(15);
    for (int h = 0; h < 2; h++) {
        uint8x16_t w0 = vld1q_u8(scales + 16 * h), w1 = vld1q_u8(scales + 32 + 16 * h), w2 = vld1q_u8(scales + 64 + 16 * h);
        uint8x16_t sl = vandq_u8(w0, m63), ml = vandq_u8(w1, m63);
        uint8x16_t sh = vorrq_u8(vandq_u8(w2, m15), vshlq_n_u8(vshrq_n_u8(w0, 6), 4));
        uint8x16_t mh = vorrq_u8(vshrq_n_u8(w2, 4), vshlq_n_u8(vshrq_n_u8(w1, 6), 4));
        for (int b = 0; b < 4; b++) {                     /* sub-blocks b and 4 + b, 2 groups each */
            k->sc[2 * b][h] = k->sc[2 * b + 1][h] = lane_byte(sl, b);
            k->sc[8 + 2 * b][h] = k->sc[9 + 2 * b][h] = lane_byte(sh, b);
            k->mn[2 * b][h] = k->mn[2 * b + 1][h] = lane_byte(ml, b);
            k->mn[8 + 2 * b][h] = k->mn[9 + 2 * b][h] = lane_byte(mh, b);
        }
    }
}

INLINE void r8_scales(int type, const void *b, r8scales_t *k) {
    const ggml_fp16_t *d, *dmin = NULL;
    switch (type) {
    case GGML_TYPE_Q2_K: r8_scale_pairs(((const block_q2_Kx8 *)b)->scales, 0, k);
        d = ((const block_q2_Kx8 *)b)->d; dmin = ((const block_q2_Kx8 *)b)->dmin; break;
    case GGML_TYPE_Q4_K: r8_scales_k4(((const block_q4_Kx8 *)b)->scales, k);
        d = ((const block_q4_Kx8 *)b)->d; dmin = ((const block_q4_Kx8 *)b)->dmin; break;
    case GGML_TYPE_Q5_K: r8_scales_k4(((const block_q5_Kx8 *)b)->scales, k);
        d = ((const block_q5_Kx8 *)b)->d; dmin = ((const block_q5_Kx8 *)b)->dmin; break;
    default: r8_scale_pairs((const uint8_t *)((const block_q6_Kx8 *)b)->scales, 1, k);
        d = ((const block_q6_Kx8 *)b)->d; break;
    }
    for (int h = 0; h < 2; h++) {
        k->d[h] = h2f4(d + 4 * h);
        k->dmin[h] = dmin ? h2f4(dmin + 4 * h) : vdupq_n_f32(0.0f);
    }
}

/* weights 16g + 4k .. 16g + 4k + 3 of the 8 rows (w[k][h]: rows 4h..4h+3), k = 0..3: where
 * each row keeps them, in the layouts of ggml_blocks.h (4-byte steps, 8 rows side by side) */
INLINE void r8_group(int type, const void *b, int g, int8x16_t w[4][2]) {
    const uint8x16_t m3 = vdupq_n_u8(3), m4 = vdupq_n_u8(0x0F), m16 = vdupq_n_u8(0x10);
    for (int k = 0; k < 4; k++) {
        for (int h = 0; h < 2; h++) {
            uint8x16_t v;
            if (type == GGML_TYPE_Q2_K) {   /* g = 8 half + 2 shift + e: row qs[32 half + 16e + 4k] >> 2 shift */
                const block_q2_Kx8 *x = b;
                v = vandq_u8(vshlq_u8(vld1q_u8(x->qs + 32 * (8 * (g / 8) + 4 * (g % 2) + k) + 16 * h),
                                      vdupq_n_s8((int8_t)(-2 * ((g % 8) / 2)))), m3);
            } else if (type == GGML_TYPE_Q4_K || type == GGML_TYPE_Q5_K) {
                /* sub-block g/2 in chunk g/4 (low nibbles if g/2 is even); row qs[32c + 16e + 4k] */
                const int c = g / 4, e = g % 2, at = 32 * (8 * c + 4 * e + k) + 16 * h;
                const uint8_t *qs = type == GGML_TYPE_Q4_K ? ((const block_q4_Kx8 *)b)->qs : ((const block_q5_Kx8 *)b)->qs;
                v = vld1q_u8(qs + at);
                v = (g / 2) % 2 ? vshrq_n_u8(v, 4) : vandq_u8(v, m4);
                if (type == GGML_TYPE_Q5_K) {   /* bit g/2 of row qh[16e + 4k] */
                    uint8x16_t hb = vld1q_u8(((const block_q5_Kx8 *)b)->qh + 32 * (4 * e + k) + 16 * h);
                    v = vorrq_u8(v, vandq_u8(vtstq_u8(hb, vdupq_n_u8((uint8_t)(1 << g / 2))), m16));
                }
            } else {    /* q6_K: g = 8 half + 2 quarter + e; row ql[64 half + 32 (quarter & 1) + 16e + 4k],
                         * low nibble for quarters 0, 1; qh[32 half + 16e + 4k] bits 2 quarter, +1 */
                const block_q6_Kx8 *x = b;
                const int hh = g / 8, q = (g % 8) / 2, e = g % 2;
                uint8x16_t l = vld1q_u8(x->ql + 32 * (16 * hh + 8 * (q & 1) + 4 * e + k) + 16 * h);
                uint8x16_t hi = vld1q_u8(x->qh + 32 * (8 * hh + 4 * e + k) + 16 * h);
                l = q < 2 ? vandq_u8(l, m4) : vshrq_n_u8(l, 4);
                hi = vandq_u8(vshlq_u8(hi, vdupq_n_s8((int8_t)(4 - 2 * q))), vdupq_n_u8(0x30));
                v = vsubq_u8(vorrq_u8(l, hi), vdupq_n_u8(32));
            }
            w[k][h] = vreinterpretq_s8_u8(v);
        }
    }
}

INLINE void dot_r8_k(int type, const int T, int n, float *s, int64_t s_stride, const void *vx, const void *vy,
                     int64_t y_stride) {
    const size_t bsize = type == GGML_TYPE_Q2_K ? sizeof(block_q2_Kx8) : type == GGML_TYPE_Q4_K ? sizeof(block_q4_Kx8)
                       : type == GGML_TYPE_Q5_K ? sizeof(block_q5_Kx8) : sizeof(block_q6_Kx8);
    const block_q8_K *y[4];
    float32x4_t acc[4][2];
    const int has_min = type != GGML_TYPE_Q6_K;
    for (int t = 0; t < T; t++) {
        y[t] = (const block_q8_K *)((const uint8_t *)vy + t * y_stride);
        acc[t][0] = acc[t][1] = vdupq_n_f32(0.0f);
    }
    for (int i = 0; i < n / QK_K; i++) {
        const uint8_t *b = (const uint8_t *)vx + i * bsize;
        r8scales_t k;
        int32x4_t isum[4][2], summs[4][2];
        r8_scales(type, b, &k);
        for (int t = 0; t < T; t++)
            isum[t][0] = isum[t][1] = summs[t][0] = summs[t][1] = vdupq_n_s32(0);
        for (int g = 0; g < 16; g++) {
            int8x16_t w[4][2];
            r8_group(type, b, g, w);
            const int8_t *yq[4];
            int32x4_t sub[4][2];
            for (int t = 0; t < T; t++)
                yq[t] = y[t][i].qs + 16 * g;
            r8_sums(w, 4, yq, T, sub);
            for (int t = 0; t < T; t++) {
                for (int h = 0; h < 2; h++) {
                    isum[t][h] = vmlaq_s32(isum[t][h], sub[t][h], k.sc[g][h]);
                    if (has_min)
                        summs[t][h] = vmlaq_n_s32(summs[t][h], k.mn[g][h], y[t][i].bsums[g]);
                }
            }
        }
        for (int t = 0; t < T; t++) {
            const float32x4_t dy = vdupq_n_f32(y[t][i].d);
            for (int h = 0; h < 2; h++) {       /* k_block's expressions, 4 rows at a time */
                float32x4_t v;
                if (type == GGML_TYPE_Q2_K)
                    v = vsubq_f32(vmulq_f32(vmulq_f32(dy, k.d[h]), vcvtq_f32_s32(isum[t][h])),
                                  vmulq_f32(vmulq_f32(dy, k.dmin[h]), vcvtq_f32_s32(summs[t][h])));
                else if (has_min)
                    v = vsubq_f32(vmulq_f32(vmulq_f32(k.d[h], dy), vcvtq_f32_s32(isum[t][h])),
                                  vmulq_f32(vmulq_f32(k.dmin[h], dy), vcvtq_f32_s32(summs[t][h])));
                else
                    v = vmulq_f32(vmulq_f32(k.d[h], dy), vcvtq_f32_s32(isum[t][h]));
                acc[t][h] = vaddq_f32(acc[t][h], v);
            }
        }
    }
    for (int t = 0; t < T; t++) {
        vst1q_f32(s + t * s_stride, acc[t][0]);
        vst1q_f32(s + t * s_stride + 4, acc[t][1]);
    }
}

#endif
