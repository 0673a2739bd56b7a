/* The NEON unit (aarch64): the generic unit's arithmetic, 16 bytes at a time.
 *
 * Built three times, each a table of its own, chosen at run time by neon_cpu.h's checks
 * (gr_neon_cpu_has_dotprod / gr_neon_cpu_has_i8mm, exported by the baseline build):
 *  - baseline ARMv8.0 (-march=armv8-a): gr_isa_neon, products with SMULL + SADALP;
 *  - dotprod (-march=armv8.2-a+dotprod): gr_isa_neon_dotprod, products with SDOT;
 *  - i8mm (-march=armv8.2-a+dotprod+i8mm): gr_isa_neon_i8mm, as dotprod, and SMMLA for
 *    the 8-row x 4-token kernels of prompt batches (neon_r8.h).
 * Build with -std=c11 -ffp-contract=off (generic.h says why).
 *
 * Exactness (tests/c/test_neon.c checks every kernel against generic.c):
 *  - quantized types: the integer sums of a block (or super-block) are exact, whatever the
 *    lane order, and the float expression per block is the generic one, in its order (one
 *    row: a scalar chain; 8 interleaved rows: 4 rows per instruction): the same bits as
 *    generic.c, in every build.
 *  - kv_scores, kv_mix: one dot product per lane in the generic order (kv_scores: 4
 *    positions in the 4 lanes; kv_mix: 4 outputs), multiply then add, never fused: the
 *    same bits as generic.c.
 *  - f32, f16 weights: float products (rounded as generic's) summed in double in 4 lanes,
 *    not one chain: |neon - generic| <= 2^-22 * sum |x_i y_i| (both round a double sum
 *    to float once; the double sums differ by far less than a float ulp).
 *
 * Each family is written once, as a static inline body with the block type and the token
 * count T (1: vec_dot, dot_r8; 4: vec_dot_x4, dot_r8_x4) as constants, instantiated below
 * per type. */
#include <arm_neon.h>
#include "generic.h"
#include "neon_cpu.h"

#define INLINE static inline __attribute__((always_inline))

/* IEEE half -> float with FCVT (exact, as generic's conversion) */
INLINE float h2f(ggml_fp16_t h) {
    __fp16 v;
    memcpy(&v, &h, 2);
    return (float)v;
}

/* acc + the products of a and b, summed in 32-bit lanes (which lane holds which product
 * differs between the two builds; every caller sums the lanes or scales them alike) */
INLINE int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    return vpadalq_s16(vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b))), vmull_high_s8(a, b));
#endif
}

/* bytes b of v (a little-endian 32-bit word): 0xFF in lane j where bit 16*half + j is set */
INLINE uint8x16_t bits16(uint32_t v, int half) {
    static const uint8_t sel[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    uint8x16_t h = vcombine_u8(vdup_n_u8((uint8_t)(v >> 16 * half)), vdup_n_u8((uint8_t)(v >> (16 * half + 8))));
    return vtstq_u8(h, vld1q_u8(sel));
}

/* ---- 32-weight blocks against q8_1 ------------------------------------------------- */
/* block b of type `type` -> its 32 weights as signed bytes (w[0]: 0..15, w[1]: 16..31) in
 * the scale's units, its scale dx and (q4_1, q5_1) its minimum mx */
INLINE void decode32(int type, const uint8_t *b, int8x16_t *w, float *dx, float *mx) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    uint8x16_t qs, lo, hi;
    uint32_t qh;
    switch (type) {
    case GGML_TYPE_IQ4_NL: {   /* each nibble an index into kvalues_iq4nl: one table lookup */
        const block_iq4_nl *x = (const block_iq4_nl *)b;
        const int8x16_t kv = vld1q_s8(kvalues_iq4nl);
        *dx = h2f(x->d);
        qs = vld1q_u8(x->qs);
        w[0] = vqtbl1q_s8(kv, vandq_u8(qs, m4));
        w[1] = vqtbl1q_s8(kv, vshrq_n_u8(qs, 4));
        return;
    }
    case GGML_TYPE_Q8_0: {
        const block_q8_0 *x = (const block_q8_0 *)b;
        *dx = h2f(x->d);
        w[0] = vld1q_s8(x->qs);
        w[1] = vld1q_s8(x->qs + 16);
        return;
    }
    case GGML_TYPE_Q4_0: case GGML_TYPE_Q4_1: {
        const block_q4_1 *x1 = (const block_q4_1 *)b;
        const uint8_t *q = type == GGML_TYPE_Q4_0 ? ((const block_q4_0 *)b)->qs : x1->qs;
        *dx = h2f(x1->d);      /* d first in both */
        qs = vld1q_u8(q);
        lo = vandq_u8(qs, m4);
        hi = vshrq_n_u8(qs, 4);
        if (type == GGML_TYPE_Q4_0) {
            lo = vsubq_u8(lo, vdupq_n_u8(8));
            hi = vsubq_u8(hi, vdupq_n_u8(8));
        } else {
            *mx = h2f(x1->m);
        }
        break;
    }
    default: {  /* q5_0, q5_1: the nibble, bit j of qh as 16 */
        const block_q5_1 *x1 = (const block_q5_1 *)b;
        const block_q5_0 *x0 = (const block_q5_0 *)b;
        const uint8x16_t m16 = vdupq_n_u8(0x10);
        *dx = h2f(x0->d);
        qh = gr_load_u32(type == GGML_TYPE_Q5_0 ? x0->qh : x1->qh);
        qs = vld1q_u8(type == GGML_TYPE_Q5_0 ? x0->qs : x1->qs);
        lo = vorrq_u8(vandq_u8(qs, m4), vandq_u8(bits16(qh, 0), m16));
        hi = vorrq_u8(vshrq_n_u8(qs, 4), vandq_u8(bits16(qh, 1), m16));
        if (type == GGML_TYPE_Q5_0) {
            lo = vsubq_u8(lo, m16);
            hi = vsubq_u8(hi, m16);
        } else {
            *mx = h2f(x1->m);
        }
    }
    }
    w[0] = vreinterpretq_s8_u8(lo);
    w[1] = vreinterpretq_s8_u8(hi);
}

/* s[t * s_stride] = <x, y_t> for t < T, y_t = vy + t * y_stride bytes: each block decoded
 * once, then per token its integer sum and generic's float expression */
INLINE void dot32(int type, size_t bsize, const int T, int n, float *s, int64_t s_stride, const void *vx,
                  const void *vy, int64_t y_stride) {
    const block_q8_1 *y[4];
    float sumf[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int has_min = type == GGML_TYPE_Q4_1 || type == GGML_TYPE_Q5_1;
    for (int t = 0; t < T; t++)
        y[t] = (const block_q8_1 *)((const uint8_t *)vy + t * y_stride);
    for (int i = 0; i < n / QK8_1; i++) {
        int8x16_t w[2];
        float dx, mx = 0.0f;
        decode32(type, (const uint8_t *)vx + i * bsize, w, &dx, &mx);
        for (int t = 0; t < T; t++) {
            const block_q8_1 *yb = &y[t][i];
            int sumi = vaddvq_s32(dot16(dot16(vdupq_n_s32(0), w[0], vld1q_s8(yb->qs)), w[1], vld1q_s8(yb->qs + 16)));
            if (has_min)
                sumf[t] += dx * yb->d * sumi + mx * yb->s;
            else
                sumf[t] += sumi * dx * yb->d;
        }
    }
    for (int t = 0; t < T; t++)
        s[t * s_stride] = sumf[t];
}

/* ---- k-quants against q8_K ------------------------------------------------------------ */
/* one super-block decoded: its 256 weights as signed bytes (w[j]: weights 16j..16j+15),
 * the integer scale of each 16 (sc), the minimum of each 16 (mn; types with minimums) */
typedef struct {
    int8x16_t w[16];
    int32_t sc[16];
    int16_t mn[16];
    float d, dmin;
} ksuper_t;

INLINE void decode_q2_K(const block_q2_K *x, ksuper_t *k) {
    const uint8x16_t m3 = vdupq_n_u8(3);
    for (int h = 0; h < 2; h++) {                       /* halves of 128 weights */
        uint8x16_t a = vld1q_u8(x->qs + 32 * h), b = vld1q_u8(x->qs + 32 * h + 16);
        for (int s = 0; s < 4; s++) {                   /* bit pair s: weights 128h + 32s + l */
            int8x16_t sh = vdupq_n_s8((int8_t)(-2 * s));
            k->w[8 * h + 2 * s] = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(a, sh), m3));
            k->w[8 * h + 2 * s + 1] = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(b, sh), m3));
        }
    }
    for (int j = 0; j < 16; j++) {
        k->sc[j] = x->scales[j] & 0xF;
        k->mn[j] = x->scales[j] >> 4;
    }
    k->d = h2f(x->d);
    k->dmin = h2f(x->dmin);
}

INLINE void decode_q3_K(const block_q3_K *x, ksuper_t *k) {
    const uint8x16_t m3 = vdupq_n_u8(3), four = vdupq_n_u8(4);
    const uint8x16_t hm[2] = {vld1q_u8(x->hmask), vld1q_u8(x->hmask + 16)};
    int8_t sc[16];
    for (int h = 0; h < 2; h++) {
        const uint8x16_t q[2] = {vld1q_u8(x->qs + 32 * h), vld1q_u8(x->qs + 32 * h + 16)};
        for (int s = 0; s < 4; s++) {
            int8x16_t sh = vdupq_n_s8((int8_t)(-2 * s));
            uint8x16_t bit = vdupq_n_u8((uint8_t)(1 << (4 * h + s)));
            for (int e = 0; e < 2; e++)                 /* q - (high bit ? 0 : 4) */
                k->w[8 * h + 2 * s + e] = vreinterpretq_s8_u8(
                    vsubq_u8(vandq_u8(vshlq_u8(q[e], sh), m3), vbicq_u8(four, vtstq_u8(hm[e], bit))));
        }
    }
    gr_unpack_q3_K_scales(x->scales, sc);
    for (int j = 0; j < 16; j++)
        k->sc[j] = sc[j];
    k->d = h2f(x->d);
}

/* q4_K (qh NULL) and q5_K: chunk c of 32 bytes holds sub-block 2c in its low nibbles and 2c+1
 * in its high ones (32 weights each); q5_K's bits 2c and 2c+1 of qh[l] add 16 */
INLINE void decode_q45_K(ggml_fp16_t d, ggml_fp16_t dmin, const uint8_t *scales, const uint8_t *qs, const uint8_t *qh,
                         ksuper_t *k) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m16 = vdupq_n_u8(0x10);
    for (int c = 0; c < 4; c++) {
        for (int e = 0; e < 2; e++) {
            uint8x16_t q = vld1q_u8(qs + 32 * c + 16 * e), lo = vandq_u8(q, m4), hi = vshrq_n_u8(q, 4);
            if (qh) {
                uint8x16_t h = vld1q_u8(qh + 16 * e);
                lo = vorrq_u8(lo, vandq_u8(vtstq_u8(h, vdupq_n_u8((uint8_t)(1 << 2 * c))), m16));
                hi = vorrq_u8(hi, vandq_u8(vtstq_u8(h, vdupq_n_u8((uint8_t)(2 << 2 * c))), m16));
            }
            k->w[4 * c + e] = vreinterpretq_s8_u8(lo);
            k->w[4 * c + 2 + e] = vreinterpretq_s8_u8(hi);
        }
    }
    for (int j = 0; j < 8; j++) {
        uint8_t sc, mn;
        gr_scale_min_k4(j, scales, &sc, &mn);
        k->sc[2 * j] = k->sc[2 * j + 1] = sc;
        k->mn[2 * j] = k->mn[2 * j + 1] = mn;
    }
    k->d = h2f(d);
    k->dmin = h2f(dmin);
}

INLINE void decode_q6_K(const block_q6_K *x, ksuper_t *k) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m30 = vdupq_n_u8(0x30), o32 = vdupq_n_u8(32);
    for (int h = 0; h < 2; h++) {                       /* halves of 128 weights */
        const uint8_t *ql = x->ql + 64 * h, *qh = x->qh + 32 * h;
        for (int e = 0; e < 2; e++) {                   /* l = 16e .. 16e + 15 */
            uint8x16_t a = vld1q_u8(ql + 16 * e), b = vld1q_u8(ql + 32 + 16 * e), q = vld1q_u8(qh + 16 * e);
            /* weights l, l+32, l+64, l+96: a low, b low, a high, b high; qh bit pairs 0,2,4,6 */
            uint8x16_t v0 = vorrq_u8(vandq_u8(a, m4), vandq_u8(vshlq_n_u8(q, 4), m30));
            uint8x16_t v1 = vorrq_u8(vandq_u8(b, m4), vandq_u8(vshlq_n_u8(q, 2), m30));
            uint8x16_t v2 = vorrq_u8(vshrq_n_u8(a, 4), vandq_u8(q, m30));
            uint8x16_t v3 = vorrq_u8(vshrq_n_u8(b, 4), vandq_u8(vshrq_n_u8(q, 2), m30));
            k->w[8 * h + e] = vreinterpretq_s8_u8(vsubq_u8(v0, o32));
            k->w[8 * h + 2 + e] = vreinterpretq_s8_u8(vsubq_u8(v1, o32));
            k->w[8 * h + 4 + e] = vreinterpretq_s8_u8(vsubq_u8(v2, o32));
            k->w[8 * h + 6 + e] = vreinterpretq_s8_u8(vsubq_u8(v3, o32));
        }
    }
    for (int j = 0; j < 16; j++)
        k->sc[j] = x->scales[j];
    k->d = h2f(x->d);
}

/* iq4_xs: sub-block j's 32 weights looked up in kvalues_iq4nl (w[2j]: low nibbles, w[2j+1]: high),
 * its 6-bit scale less 32 for both of its 16s; no minimums */
INLINE void decode_iq4_xs(const block_iq4_xs *x, ksuper_t *k) {
    const int8x16_t kv = vld1q_s8(kvalues_iq4nl);
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    for (int j = 0; j < 8; j++) {
        uint8x16_t q = vld1q_u8(x->qs + 16 * j);
        k->w[2 * j] = vqtbl1q_s8(kv, vandq_u8(q, m4));
        k->w[2 * j + 1] = vqtbl1q_s8(kv, vshrq_n_u8(q, 4));
        k->sc[2 * j] = k->sc[2 * j + 1] =
            (((x->scales_l[j / 2] >> 4 * (j % 2)) & 0xF) | (((x->scales_h >> 2 * j) & 3) << 4)) - 32;
    }
    k->d = h2f(x->d);
}

INLINE void decode_k(int type, const uint8_t *b, ksuper_t *k) {
    switch (type) {
    case GGML_TYPE_IQ4_XS: decode_iq4_xs((const block_iq4_xs *)b, k); return;
    case GGML_TYPE_Q2_K: decode_q2_K((const block_q2_K *)b, k); return;
    case GGML_TYPE_Q3_K: decode_q3_K((const block_q3_K *)b, k); return;
    case GGML_TYPE_Q4_K: {
        const block_q4_K *x = (const block_q4_K *)b;
        decode_q45_K(x->d, x->dmin, x->scales, x->qs, NULL, k);
        return;
    }
    case GGML_TYPE_Q5_K: {
        const block_q5_K *x = (const block_q5_K *)b;
        decode_q45_K(x->d, x->dmin, x->scales, x->qs, x->qh, k);
        return;
    }
    default: decode_q6_K((const block_q6_K *)b, k); return;
    }
}

/* generic's float expression for one super-block, in its order */
INLINE float k_block(int type, const ksuper_t *k, float dy, int isum, int summs) {
    switch (type) {
    case GGML_TYPE_Q2_K: return dy * k->d * isum - dy * k->dmin * summs;
    case GGML_TYPE_Q4_K: case GGML_TYPE_Q5_K: return k->d * dy * isum - k->dmin * dy * summs;
    default: return k->d * dy * isum;             /* q3_K, q6_K, iq4_xs */
    }
}

INLINE void dot_k(int type, size_t bsize, const int T, int n, float *s, int64_t s_stride, const void *vx,
                  const void *vy, int64_t y_stride) {
    const block_q8_K *y[4];
    float sumf[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int has_min = type == GGML_TYPE_Q2_K || type == GGML_TYPE_Q4_K || type == GGML_TYPE_Q5_K;
    for (int t = 0; t < T; t++)
        y[t] = (const block_q8_K *)((const uint8_t *)vy + t * y_stride);
    for (int i = 0; i < n / QK_K; i++) {
        ksuper_t k;
        decode_k(type, (const uint8_t *)vx + i * bsize, &k);
        for (int t = 0; t < T; t++) {
            const block_q8_K *yb = &y[t][i];
            int32x4_t acc = vdupq_n_s32(0);
            int summs = 0;
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++)                /* each 16's products times its scale */
                acc = vmlaq_n_s32(acc, dot16(vdupq_n_s32(0), k.w[j], vld1q_s8(yb->qs + 16 * j)), k.sc[j]);
            if (has_min) {                               /* the minimums against the 16-sums of y */
                int32x4_t m = vmull_s16(vld1_s16(yb->bsums), vld1_s16(k.mn));
                m = vmlal_s16(m, vld1_s16(yb->bsums + 4), vld1_s16(k.mn + 4));
                m = vmlal_s16(m, vld1_s16(yb->bsums + 8), vld1_s16(k.mn + 8));
                m = vmlal_s16(m, vld1_s16(yb->bsums + 12), vld1_s16(k.mn + 12));
                summs = vaddvq_s32(m);
            }
            sumf[t] += k_block(type, &k, yb->d, vaddvq_s32(acc), summs);
        }
    }
    for (int t = 0; t < T; t++)
        s[t * s_stride] = sumf[t];
}

/* ---- f32 / f16 weights against f32 activations -------------------------------------- */
INLINE float32x4_t load4(const void *x, int64_t at, int f16) {
    if (f16)
        return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)x + at)));
    return vld1q_f32((const float *)x + at);
}

INLINE void dot_float(int f16, int n, float *s, const void *vx, const void *vy) {
    const float *y = vy;
    float64x2_t acc[4] = {vdupq_n_f64(0.0), vdupq_n_f64(0.0), vdupq_n_f64(0.0), vdupq_n_f64(0.0)};
    double tail = 0.0;
    int i = 0;
    for (; i + 8 <= n; i += 8) {                        /* float products, as generic rounds them */
        float32x4_t p0 = vmulq_f32(load4(vx, i, f16), vld1q_f32(y + i));
        float32x4_t p1 = vmulq_f32(load4(vx, i + 4, f16), vld1q_f32(y + i + 4));
        acc[0] = vaddq_f64(acc[0], vcvt_f64_f32(vget_low_f32(p0)));
        acc[1] = vaddq_f64(acc[1], vcvt_high_f64_f32(p0));
        acc[2] = vaddq_f64(acc[2], vcvt_f64_f32(vget_low_f32(p1)));
        acc[3] = vaddq_f64(acc[3], vcvt_high_f64_f32(p1));
    }
    for (; i < n; i++)
        tail += (f16 ? h2f(((const ggml_fp16_t *)vx)[i]) : ((const float *)vx)[i]) * y[i];
    *s = (float)(vaddvq_f64(vaddq_f64(vaddq_f64(acc[0], acc[1]), vaddq_f64(acc[2], acc[3]))) + tail);
}

/* ---- attention inner loops over one head ----------------------------------------------- */
INLINE float kv_at(const void *kv, int64_t at, int f16) {
    return f16 ? h2f(((const ggml_fp16_t *)kv)[at]) : ((const float *)kv)[at];
}

/* 4 rows' elements i..i+3 (rows r0..r3) -> c[m] = element i+m of the 4 rows */
INLINE void transpose4(const float32x4_t *r, float32x4_t *c) {
    float32x4_t t0 = vtrn1q_f32(r[0], r[1]), t1 = vtrn2q_f32(r[0], r[1]);
    float32x4_t t2 = vtrn1q_f32(r[2], r[3]), t3 = vtrn2q_f32(r[2], r[3]);
    c[0] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
    c[1] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
    c[2] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
    c[3] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
}

/* a[p] = <q, row p> * scale, 4 positions at once, lane j summing row p + j from i = 0 up
 * (generic's order for each position) */
INLINE void kv_scores_body(int f16, float *a, const float *q, const void *kv, int64_t off, int64_t stride, int n_pos,
                           int n, float scale) {
    int p = 0;
    for (; p + 4 <= n_pos; p += 4) {
        const int64_t base = off + p * stride;
        float32x4_t acc = vdupq_n_f32(0.0f), r[4], c[4];
        int i = 0;
        for (; i + 4 <= n; i += 4) {
            for (int j = 0; j < 4; j++)
                r[j] = load4(kv, base + j * stride + i, f16);
            transpose4(r, c);
            for (int m = 0; m < 4; m++)
                acc = vaddq_f32(acc, vmulq_f32(vdupq_n_f32(q[i + m]), c[m]));
        }
        for (; i < n; i++) {
            float col[4];
            for (int j = 0; j < 4; j++)
                col[j] = kv_at(kv, base + j * stride + i, f16);
            acc = vaddq_f32(acc, vmulq_f32(vdupq_n_f32(q[i]), vld1q_f32(col)));
        }
        vst1q_f32(a + p, vmulq_f32(acc, vdupq_n_f32(scale)));
    }
    for (; p < n_pos; p++) {
        float acc = 0.0f;
        for (int i = 0; i < n; i++)
            acc += q[i] * kv_at(kv, off + p * stride + i, f16);
        a[p] = acc * scale;
    }
}

/* out[i] = sum over p of a[p] * row p[i], from p = 0 up, 32 outputs held in 8 registers
 * across all positions */
INLINE void kv_mix_body(int f16, float *out, const float *a, const void *kv, int64_t off, int64_t stride, int n_pos,
                        int n) {
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        float32x4_t acc[8];
        for (int j = 0; j < 8; j++)
            acc[j] = vdupq_n_f32(0.0f);
        for (int p = 0; p < n_pos; p++) {
            float32x4_t va = vdupq_n_f32(a[p]);
            for (int j = 0; j < 8; j++)
                acc[j] = vaddq_f32(acc[j], vmulq_f32(va, load4(kv, off + p * stride + i + 4 * j, f16)));
        }
        for (int j = 0; j < 8; j++)
            vst1q_f32(out + i + 4 * j, acc[j]);
    }
    for (; i + 4 <= n; i += 4) {
        float32x4_t acc = vdupq_n_f32(0.0f);
        for (int p = 0; p < n_pos; p++)
            acc = vaddq_f32(acc, vmulq_f32(vdupq_n_f32(a[p]), load4(kv, off + p * stride + i, f16)));
        vst1q_f32(out + i, acc);
    }
    for (; i < n; i++) {
        float x = 0.0f;
        for (int p = 0; p < n_pos; p++)
            x += a[p] * kv_at(kv, off + p * stride + i, f16);
        out[i] = x;
    }
}

static void kv_scores_neon(float *a, const float *q, const void *kv, int64_t off, int64_t stride, int n_pos, int n,
                           float scale, int f16) {
    if (f16)
        kv_scores_body(1, a, q, kv, off, stride, n_pos, n, scale);
    else
        kv_scores_body(0, a, q, kv, off, stride, n_pos, n, scale);
}

static void kv_mix_neon(float *out, const float *a, const void *kv, int64_t off, int64_t stride, int n_pos, int n,
                        int f16) {
    if (f16)
        kv_mix_body(1, out, a, kv, off, stride, n_pos, n);
    else
        kv_mix_body(0, out, a, kv, off, stride, n_pos, n);
}

#include "neon_r8.h"

/* ---- the instances ------------------------------------------------------------------- */
static void vec_dot_f32_neon(int n, float *s, const void *vx, const void *vy) { dot_float(0, n, s, vx, vy); }
static void vec_dot_f16_neon(int n, float *s, const void *vx, const void *vy) { dot_float(1, n, s, vx, vy); }

/* vec_dot_<type>_neon and vec_dot_x4_<type>_neon of one block family */
#define INSTANCES(body, name, TYPE, block)                                                                    \
    static void vec_dot_##name##_neon(int n, float *s, const void *vx, const void *vy) {                      \
        body(TYPE, sizeof(block), 1, n, s, 0, vx, vy, 0);                                                      \
    }                                                                                                          \
    static void vec_dot_x4_##name##_neon(int n, float *s, int64_t s_stride, const void *vx, const void *vy,   \
                                         int64_t y_stride) {                                                   \
        body(TYPE, sizeof(block), 4, n, s, s_stride, vx, vy, y_stride);                                        \
    }
INSTANCES(dot32, q4_0, GGML_TYPE_Q4_0, block_q4_0)
INSTANCES(dot32, q4_1, GGML_TYPE_Q4_1, block_q4_1)
INSTANCES(dot32, q5_0, GGML_TYPE_Q5_0, block_q5_0)
INSTANCES(dot32, q5_1, GGML_TYPE_Q5_1, block_q5_1)
INSTANCES(dot32, q8_0, GGML_TYPE_Q8_0, block_q8_0)
INSTANCES(dot_k, q2_K, GGML_TYPE_Q2_K, block_q2_K)
INSTANCES(dot_k, q3_K, GGML_TYPE_Q3_K, block_q3_K)
INSTANCES(dot_k, q4_K, GGML_TYPE_Q4_K, block_q4_K)
INSTANCES(dot_k, q5_K, GGML_TYPE_Q5_K, block_q5_K)
INSTANCES(dot_k, q6_K, GGML_TYPE_Q6_K, block_q6_K)
INSTANCES(dot32, iq4_nl, GGML_TYPE_IQ4_NL, block_iq4_nl)
INSTANCES(dot_k, iq4_xs, GGML_TYPE_IQ4_XS, block_iq4_xs)

/* dot_r8_<type>_neon and dot_r8_x4_<type>_neon (neon_r8.h) */
#define INSTANCES_R8(body, name, TYPE)                                                                       \
    static void dot_r8_##name##_neon(int n, float *s, int64_t s_stride, const void *vx, const void *vy,       \
                                     int64_t y_stride) {                                                      \
        body(TYPE, 1, n, s, s_stride, vx, vy, y_stride);                                                      \
    }                                                                                                         \
    static void dot_r8_x4_##name##_neon(int n, float *s, int64_t s_stride, const void *vx, const void *vy,    \
                                        int64_t y_stride) {                                                   \
        body(TYPE, 4, n, s, s_stride, vx, vy, y_stride);                                                      \
    }
INSTANCES_R8(dot_r8_32, q4_0, GGML_TYPE_Q4_0)
INSTANCES_R8(dot_r8_32, q4_1, GGML_TYPE_Q4_1)
INSTANCES_R8(dot_r8_32, q8_0, GGML_TYPE_Q8_0)
INSTANCES_R8(dot_r8_k, q2_K, GGML_TYPE_Q2_K)
INSTANCES_R8(dot_r8_k, q4_K, GGML_TYPE_Q4_K)
INSTANCES_R8(dot_r8_k, q5_K, GGML_TYPE_Q5_K)
INSTANCES_R8(dot_r8_k, q6_K, GGML_TYPE_Q6_K)
INSTANCES_R8(dot_r8_32, iq4_nl, GGML_TYPE_IQ4_NL)

#define ROW(TYPE, name) [TYPE] = {.vec_dot = vec_dot_##name##_neon, .vec_dot_x4 = vec_dot_x4_##name##_neon}
#define ROW_R8(TYPE, name)                                                                                     \
    [TYPE] = {.vec_dot = vec_dot_##name##_neon, .vec_dot_x4 = vec_dot_x4_##name##_neon,                        \
              .dot_r8 = dot_r8_##name##_neon, .dot_r8_x4 = dot_r8_x4_##name##_neon}

#if defined(__ARM_FEATURE_MATMUL_INT8) && defined(__ARM_FEATURE_DOTPROD)
#define NEON_TABLE gr_isa_neon_i8mm
#define NEON_NAME "neon_i8mm"
#elif defined(__ARM_FEATURE_DOTPROD)
#define NEON_TABLE gr_isa_neon_dotprod
#define NEON_NAME "neon_dotprod"
#else
#define NEON_TABLE gr_isa_neon
#define NEON_NAME "neon"
/* the baseline build also answers which build this CPU runs (it has no instruction to fault) */
int gr_neon_cpu_has_dotprod(void) { return gr_cpu_has_dotprod(); }
int gr_neon_cpu_has_i8mm(void) { return gr_cpu_has_dotprod() && gr_cpu_has_i8mm(); }
#endif

const isa_kernels_t NEON_TABLE = {
    .name = NEON_NAME,
    .types = {
        [GGML_TYPE_F32] = {.vec_dot = vec_dot_f32_neon},
        [GGML_TYPE_F16] = {.vec_dot = vec_dot_f16_neon},
        ROW_R8(GGML_TYPE_Q4_0, q4_0), ROW_R8(GGML_TYPE_Q4_1, q4_1), ROW(GGML_TYPE_Q5_0, q5_0),
        ROW(GGML_TYPE_Q5_1, q5_1), ROW_R8(GGML_TYPE_Q8_0, q8_0), ROW_R8(GGML_TYPE_Q2_K, q2_K),
        ROW(GGML_TYPE_Q3_K, q3_K), ROW_R8(GGML_TYPE_Q4_K, q4_K), ROW_R8(GGML_TYPE_Q5_K, q5_K),
        ROW_R8(GGML_TYPE_Q6_K, q6_K), ROW_R8(GGML_TYPE_IQ4_NL, iq4_nl), ROW(GGML_TYPE_IQ4_XS, iq4_xs),
    },
    .kv_scores = kv_scores_neon,
    .kv_mix = kv_mix_neon,
};
