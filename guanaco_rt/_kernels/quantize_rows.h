/* Weight quantizers: a row of floats -> a row of ggml blocks, as llama-quantize writes them,
 * without an importance matrix (ggml_quantize_chunk with imatrix = NULL) or with one.
 *
 * The output must be the same bytes as ggml's, so every float expression below keeps ggml's
 * operand order and its float (not double) intermediates, and the build passes
 * -ffp-contract=off (a fused a*b+c rounds once, ggml's twice). Ties, clamps and the
 * "all zero" thresholds are ggml's too; a comment marks each place where an innocent-looking
 * rewrite would change a byte.
 *
 * Every function takes k weights (a multiple of the type's block size) and writes k/blck
 * blocks. No state: rows may be quantized in any order, on any thread. */
#ifndef GUANACO_RT_QUANTIZE_ROWS_H
#define GUANACO_RT_QUANTIZE_ROWS_H
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "ggml_blocks.h"

/* the group fitters stay out of line (and uncloned): inlined with their constant n, GCC unrolls
 * them whole and spills; setup.py builds this module at -O2 for the same reason */
#if defined(__GNUC__)
#define GRQ_NOINLINE __attribute__((noinline, noclone))
#else
#define GRQ_NOINLINE
#endif

/* below this a group's largest |x| counts as zero (ggml's GROUP_MAX_EPS) */
#define GRQ_EPS 1e-15f

static inline int grq_min(int a, int b) { return a < b ? a : b; }
static inline int grq_max(int a, int b) { return a > b ? a : b; }
static inline int grq_clamp(int v, int lo, int hi) { return grq_max(lo, grq_min(hi, v)); }

/* float -> half bits, round to nearest even; overflow -> inf, NaN stays NaN */
static inline ggml_fp16_t grq_fp16(float f) {
    uint32_t x; memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);       /* rounds past 65504 */
    if (ax < 0x38800000u) {                                           /* half subnormal or 0 */
        /* adding 0.5 (2^-1) puts the half's subnormal ulp (2^-24) at the float's last bit */
        float a; memcpy(&a, &ax, 4);
        float s = a + 0.5f;
        uint32_t b; memcpy(&b, &s, 4);
        return (uint16_t)(sign | (uint16_t)(b - 0x3f000000u));
    }
    uint32_t odd = (ax >> 13) & 1u;
    ax += 0xc8000fffu + odd;           /* rebias the exponent (-112 << 23) and round half to even */
    return (uint16_t)(sign | (uint16_t)(ax >> 13));
}

static inline float grq_f32(ggml_fp16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, bits;
    if (e == 0x1f) bits = sign | 0x7f800000u | (m << 13);
    else if (e) bits = sign | ((e + 112u) << 23) | (m << 13);
    else if (!m) bits = sign;
    else {                                  /* subnormal: normalize */
        e = 113;
        while (!(m & 0x400u)) { m <<= 1; e--; }
        bits = sign | (e << 23) | ((m & 0x3ffu) << 13);
    }
    float f; memcpy(&f, &bits, 4);
    return f;
}

/* round to nearest, ties to even, by the 1.5*2^23 trick: exact for |v| < 2^22; outside that
 * range the result is wrong the same way ggml's is (both read the same mantissa bits) */
static inline int grq_nearest(float v) {
    float t = v + 12582912.f;
    int32_t i; memcpy(&i, &t, 4);
    return (i & 0x007fffff) - 0x00400000;
}

/* ---- 32-weight formats -------------------------------------------------------------------- */

/* the signed value of largest magnitude (the first one on ties) */
static inline float grq_signed_absmax(const float* x, int n, float* amax_out) {
    float amax = 0.f, m = 0.f;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) { amax = fabsf(x[j]); m = x[j]; }
    }
    if (amax_out) *amax_out = amax;
    return m;
}

static void grq_q4_0(const float* x, block_q4_0* y, int64_t k) {
    for (int64_t i = 0; i < k / QK4_0; i++, x += QK4_0) {
        /* the extreme maps to -8 exactly; the other side gets the spare level */
        const float d = grq_signed_absmax(x, QK4_0, NULL) / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = grq_fp16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            /* truncation of x*id + 8.5 (always >= 0 here), not rounding: the bytes depend on it */
            uint8_t lo = (uint8_t)grq_min(15, (int8_t)(x[j] * id + 8.5f));
            uint8_t hi = (uint8_t)grq_min(15, (int8_t)(x[j + QK4_0 / 2] * id + 8.5f));
            y[i].qs[j] = (uint8_t)(lo | (hi << 4));
        }
    }
}

static inline void grq_minmax(const float* x, int n, float* lo, float* hi) {
    float mn = FLT_MAX, mx = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < mn) mn = x[j];
        if (x[j] > mx) mx = x[j];
    }
    *lo = mn; *hi = mx;
}

static void grq_q4_1(const float* x, block_q4_1* y, int64_t k) {
    for (int64_t i = 0; i < k / QK4_1; i++, x += QK4_1) {
        float mn, mx;
        grq_minmax(x, QK4_1, &mn, &mx);
        const float d = (mx - mn) / 15;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = grq_fp16(d);
        y[i].m = grq_fp16(mn);
        for (int j = 0; j < QK4_1 / 2; j++) {
            uint8_t lo = (uint8_t)grq_min(15, (int8_t)((x[j] - mn) * id + 0.5f));
            uint8_t hi = (uint8_t)grq_min(15, (int8_t)((x[j + QK4_1 / 2] - mn) * id + 0.5f));
            y[i].qs[j] = (uint8_t)(lo | (hi << 4));
        }
    }
}

static void grq_q5_0(const float* x, block_q5_0* y, int64_t k) {
    for (int64_t i = 0; i < k / QK5_0; i++, x += QK5_0) {
        const float d = grq_signed_absmax(x, QK5_0, NULL) / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = grq_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_0 / 2; j++) {
            uint8_t lo = (uint8_t)grq_min(31, (int8_t)(x[j] * id + 16.5f));
            uint8_t hi = (uint8_t)grq_min(31, (int8_t)(x[j + QK5_0 / 2] * id + 16.5f));
            y[i].qs[j] = (uint8_t)((lo & 0x0f) | ((hi & 0x0f) << 4));
            qh |= (uint32_t)(lo >> 4) << j;                 /* bit 4 of weight j -> bit j */
            qh |= (uint32_t)(hi >> 4) << (j + QK5_0 / 2);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

static void grq_q5_1(const float* x, block_q5_1* y, int64_t k) {
    for (int64_t i = 0; i < k / QK5_1; i++, x += QK5_1) {
        float mn, mx;
        grq_minmax(x, QK5_1, &mn, &mx);
        const float d = (mx - mn) / 31;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = grq_fp16(d);
        y[i].m = grq_fp16(mn);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_1 / 2; j++) {
            /* no clamp at 31 here, as in ggml: a rounding overshoot to 32 wraps its 5th bit away */
            uint8_t lo = (uint8_t)((x[j] - mn) * id + 0.5f);
            uint8_t hi = (uint8_t)((x[j + QK5_1 / 2] - mn) * id + 0.5f);
            y[i].qs[j] = (uint8_t)((lo & 0x0f) | ((hi & 0x0f) << 4));
            qh |= (uint32_t)((lo & 0x10u) >> 4) << j;
            qh |= (uint32_t)((hi & 0x10u) >> 4) << (j + QK5_1 / 2);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

static void grq_q8_0(const float* x, block_q8_0* y, int64_t k) {
    for (int64_t i = 0; i < k / QK8_0; i++, x += QK8_0) {
        float amax = 0.f;
        for (int j = 0; j < QK8_0; j++) amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]);
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = grq_fp16(d);
        for (int j = 0; j < QK8_0; j++) y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

/* non-linear 4-bit: index of the table value nearest v (the lower one on ties) */
static inline int grq_iq4_index(float v) {
    const int8_t* t = kvalues_iq4nl;
    if (v <= t[0]) return 0;
    if (v >= t[15]) return 15;
    int lo = 0, hi = 15;
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (v < t[mid]) hi = mid; else lo = mid;
    }
    return v - t[hi - 1] < t[hi] - v ? hi - 1 : hi;
}

/* IQ4_NL as ggml_quantize_chunk makes it (quantize_iq4_nl: 7 trial scales either side), which is
 * not quantize_row_iq4_nl_ref (no trials). Weights: x^2 without an importance matrix; with one,
 * qw * sqrt(sigma2 + x^2), sigma2 = twice the block's mean square. */
static void grq_iq4_nl(const float* x, block_iq4_nl* y, int64_t k, const float* qw) {
    const int8_t* t = kvalues_iq4nl;
    uint8_t L[QK4_NL];
    float w[QK4_NL];
    for (int64_t i = 0; i < k / QK4_NL; i++, x += QK4_NL) {
        if (qw) {
            const float* q = qw + i * QK4_NL;
            float sigma2 = 0;
            for (int j = 0; j < QK4_NL; j++) sigma2 += x[j] * x[j];
            sigma2 *= 2.f / QK4_NL;
            for (int j = 0; j < QK4_NL; j++) w[j] = q[j] * sqrtf(sigma2 + x[j] * x[j]);
        } else {
            for (int j = 0; j < QK4_NL; j++) w[j] = x[j] * x[j];
        }
        float amax;
        const float mx = grq_signed_absmax(x, QK4_NL, &amax);
        float d = 0.f;
        if (!(amax < GRQ_EPS)) {
            d = -mx / t[0];
            float id = 1 / d, sqx = 0, sq2 = 0;
            for (int j = 0; j < QK4_NL; j++) {
                const float q = t[grq_iq4_index(id * x[j])];
                sqx += w[j] * q * x[j];
                sq2 += w[j] * q * q;
            }
            d = sq2 > 0 ? sqx / sq2 : 0.f;
            float best = d * sqx;
            for (int tr = -7; tr <= 7; tr++) {
                id = (tr + t[0]) / mx;
                sqx = sq2 = 0;
                for (int j = 0; j < QK4_NL; j++) {
                    const float q = t[grq_iq4_index(id * x[j])];
                    sqx += w[j] * q * x[j];
                    sq2 += w[j] * q * q;
                }
                if (sq2 > 0 && sqx * sqx > best * sq2) { d = sqx / sq2; best = d * sqx; }
            }
        }
        y[i].d = grq_fp16(d);
        /* the indices come from the float scale, not its fp16 rounding */
        const float id = d ? 1 / d : 0;
        for (int j = 0; j < QK4_NL; j++) L[j] = (uint8_t)grq_iq4_index(id * x[j]);
        for (int j = 0; j < QK4_NL / 2; j++) y[i].qs[j] = (uint8_t)(L[j] | (L[j + QK4_NL / 2] << 4));
    }
}

/* ---- k-quants: the per-group fitters ------------------------------------------------------ */

/* Symmetric fit of n weights to the levels -nmax..nmax-1, weighted by x^2 (ggml's make_qx_quants,
 * rmse_type 1, no importance): the scale from the extreme, then 18 nudged scales; the best
 * weighted least-squares one wins. L gets the levels + nmax. Returns the scale. */
GRQ_NOINLINE static float grq_fit_sym(int n, int nmax, const float* x, int8_t* L) {
    float amax = 0, mx = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; mx = x[i]; }
    }
    if (amax < GRQ_EPS) { memset(L, 0, (size_t)n); return 0.f; }
    float iscale = -nmax / mx;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = grq_clamp(grq_nearest(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (!is) continue;
        iscale = -(nmax + 0.1f * is) / mx;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = grq_clamp(grq_nearest(iscale * x[i]), -nmax, nmax - 1);
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + grq_clamp(grq_nearest(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* grq_fit_sym with the weights given (ggml's make_qx_quants, rmse_type 1, qw != NULL) */
GRQ_NOINLINE static float grq_fit_sym_w(int n, int nmax, const float* x, const float* qw, int8_t* L) {
    float amax = 0, mx = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; mx = x[i]; }
    }
    if (amax < GRQ_EPS) { memset(L, 0, (size_t)n); return 0.f; }
    float iscale = -nmax / mx;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = grq_clamp(grq_nearest(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        sumlx += qw[i] * x[i] * l;
        suml2 += qw[i] * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (!is) continue;
        iscale = -(nmax + 0.1f * is) / mx;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = grq_clamp(grq_nearest(iscale * x[i]), -nmax, nmax - 1);
            sumlx += qw[i] * x[i] * l;
            suml2 += qw[i] * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + grq_clamp(grq_nearest(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* grq_fit_sym on two groups at once, each with exactly its own sequence of float operations (so
 * the same bits): the two groups' sums are independent chains the CPU overlaps, where one group's
 * 16 dependent additions per trial leave it waiting on latency. Groups whose extreme is below the
 * zero threshold go through grq_fit_sym. qwa, qwb: the weights (grq_fit_sym_w's), or NULL for x^2. */
GRQ_NOINLINE static void grq_fit_sym2(int n, int nmax, const float* xa, const float* xb, int8_t* La, int8_t* Lb,
                                      float* sa_out, float* sb_out, const float* qwa, const float* qwb) {
    float amax_a = 0, mx_a = 0, amax_b = 0, mx_b = 0;
    for (int i = 0; i < n; i++) {
        float a = fabsf(xa[i]), b = fabsf(xb[i]);
        if (a > amax_a) { amax_a = a; mx_a = xa[i]; }
        if (b > amax_b) { amax_b = b; mx_b = xb[i]; }
    }
    if (amax_a < GRQ_EPS || amax_b < GRQ_EPS) {
        *sa_out = qwa ? grq_fit_sym_w(n, nmax, xa, qwa, La) : grq_fit_sym(n, nmax, xa, La);
        *sb_out = qwb ? grq_fit_sym_w(n, nmax, xb, qwb, Lb) : grq_fit_sym(n, nmax, xb, Lb);
        return;
    }
    float wa[32], wb[32], wxa[32], wxb[32];       /* n <= 32: w (x*x or given) and w*x, as ggml forms them */
    for (int i = 0; i < n; i++) {
        wa[i] = qwa ? qwa[i] : xa[i] * xa[i]; wxa[i] = wa[i] * xa[i];
        wb[i] = qwb ? qwb[i] : xb[i] * xb[i]; wxb[i] = wb[i] * xb[i];
    }
    float isa = -nmax / mx_a, isb = -nmax / mx_b;
    float slx_a = 0, sl2_a = 0, slx_b = 0, sl2_b = 0;
    for (int i = 0; i < n; i++) {
        int la = grq_clamp(grq_nearest(isa * xa[i]), -nmax, nmax - 1);
        int lb = grq_clamp(grq_nearest(isb * xb[i]), -nmax, nmax - 1);
        La[i] = (int8_t)(la + nmax);
        Lb[i] = (int8_t)(lb + nmax);
        slx_a += wxa[i] * la; sl2_a += wa[i] * la * la;
        slx_b += wxb[i] * lb; sl2_b += wb[i] * lb * lb;
    }
    float sc_a = sl2_a ? slx_a / sl2_a : 0.0f, sc_b = sl2_b ? slx_b / sl2_b : 0.0f;
    float best_a = sc_a * slx_a, best_b = sc_b * slx_b;
    for (int is = -9; is <= 9; is++) {
        if (!is) continue;
        isa = -(nmax + 0.1f * is) / mx_a;
        isb = -(nmax + 0.1f * is) / mx_b;
        slx_a = sl2_a = slx_b = sl2_b = 0;
        for (int i = 0; i < n; i++) {
            int la = grq_clamp(grq_nearest(isa * xa[i]), -nmax, nmax - 1);
            int lb = grq_clamp(grq_nearest(isb * xb[i]), -nmax, nmax - 1);
            slx_a += wxa[i] * la; sl2_a += wa[i] * la * la;
            slx_b += wxb[i] * lb; sl2_b += wb[i] * lb * lb;
        }
        if (sl2_a > 0 && slx_a * slx_a > best_a * sl2_a) {
            for (int i = 0; i < n; i++)
                La[i] = (int8_t)(nmax + grq_clamp(grq_nearest(isa * xa[i]), -nmax, nmax - 1));
            sc_a = slx_a / sl2_a;
            best_a = sc_a * slx_a;
        }
        if (sl2_b > 0 && slx_b * slx_b > best_b * sl2_b) {
            for (int i = 0; i < n; i++)
                Lb[i] = (int8_t)(nmax + grq_clamp(grq_nearest(isb * xb[i]), -nmax, nmax - 1));
            sc_b = slx_b / sl2_b;
            best_b = sc_b * slx_b;
        }
    }
    *sa_out = sc_a;
    *sb_out = sc_b;
}

/* Symmetric 3-bit fit (ggml's make_q3_quants with rmse): levels from the extreme, then up to 5
 * passes of coordinate descent, one weight at a time, on the x^2-weighted error. L as above. */
GRQ_NOINLINE static float grq_fit_q3(int n, int nmax, const float* x, int8_t* L) {
    float amax = 0, mx = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; mx = x[i]; }
    }
    if (amax < GRQ_EPS) { memset(L, 0, (size_t)n); return 0.f; }
    const float iscale = -nmax / mx;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = grq_clamp(grq_nearest(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                int nl = grq_clamp(grq_nearest(x[i] * sl2 / slx), -nmax, nmax - 1);
                if (nl != L[i]) {
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)nl; sumlx = slx; suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Affine fit x ~ scale*l - m, l in 0..nmax, m >= 0 (ggml's make_qkx2_quants): the min-max fit,
 * then nstep+1 trial grids, each refit by weighted least squares for scale and min; the one
 * with the least weighted error (absolute if use_mad, else squared) wins. *the_min gets m. */
GRQ_NOINLINE static float grq_fit_affine(int n, int nmax, const float* x, const float* w, uint8_t* L, float* the_min,
                            uint8_t* Laux, float rmin, float rdelta, int nstep, int use_mad) {
    float mn = x[0], mx = x[0];
    float sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < mn) mn = x[i];
        if (x[i] > mx) mx = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (mn > 0) mn = 0;
    if (mx == mn) { memset(L, 0, (size_t)n); *the_min = -mn; return 0.f; }
    float iscale = nmax / (mx - mn);
    float scale = 1 / iscale;
    float best_err = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)grq_clamp(grq_nearest(iscale * (x[i] - mn)), 0, nmax);
        float diff = scale * L[i] + mn - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_err += w[i] * diff;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (mx - mn);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = grq_clamp(grq_nearest(iscale * (x[i] - mn)), 0, nmax);
            Laux[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float s = (sum_w * sum_xl - sum_x * sum_l) / D;
            float m = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (m > 0) { m = 0; s = sum_xl / sum_l2; }
            float err = 0;
            for (int i = 0; i < n; i++) {
                float diff = s * Laux[i] + m - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                err += w[i] * diff;
            }
            if (err < best_err) {
                memcpy(L, Laux, (size_t)n);
                best_err = err; scale = s; mn = m;
            }
        }
    }
    *the_min = -mn;
    return scale;
}

/* grq_fit_affine on two groups at once (as grq_fit_sym2: the same bits, overlapped chains);
 * a group with max == min goes through grq_fit_affine */
GRQ_NOINLINE static void grq_fit_affine2(int n, int nmax, const float* xa, const float* xb, const float* wa,
                                         const float* wb, uint8_t* La, uint8_t* Lb, float* min_a, float* min_b,
                                         float* sc_a_out, float* sc_b_out, float rmin, float rdelta, int nstep,
                                         int use_mad) {
    float mn_a = xa[0], mx_a = xa[0], mn_b = xb[0], mx_b = xb[0];
    float sw_a = wa[0], sx_a = sw_a * xa[0], sw_b = wb[0], sx_b = sw_b * xb[0];
    for (int i = 1; i < n; i++) {
        if (xa[i] < mn_a) mn_a = xa[i];
        if (xa[i] > mx_a) mx_a = xa[i];
        if (xb[i] < mn_b) mn_b = xb[i];
        if (xb[i] > mx_b) mx_b = xb[i];
        sw_a += wa[i]; sx_a += wa[i] * xa[i];
        sw_b += wb[i]; sx_b += wb[i] * xb[i];
    }
    if (mn_a > 0) mn_a = 0;
    if (mn_b > 0) mn_b = 0;
    if (mx_a == mn_a || mx_b == mn_b) {
        uint8_t Laux[32];
        *sc_a_out = grq_fit_affine(n, nmax, xa, wa, La, min_a, Laux, rmin, rdelta, nstep, use_mad);
        *sc_b_out = grq_fit_affine(n, nmax, xb, wb, Lb, min_b, Laux, rmin, rdelta, nstep, use_mad);
        return;
    }
    uint8_t Xa[32], Xb[32];                       /* n <= 32: the trial levels */
    float isa = nmax / (mx_a - mn_a), isb = nmax / (mx_b - mn_b);
    float sc_a = 1 / isa, sc_b = 1 / isb;
    float be_a = 0, be_b = 0;
    for (int i = 0; i < n; i++) {
        La[i] = (uint8_t)grq_clamp(grq_nearest(isa * (xa[i] - mn_a)), 0, nmax);
        Lb[i] = (uint8_t)grq_clamp(grq_nearest(isb * (xb[i] - mn_b)), 0, nmax);
        float da = sc_a * La[i] + mn_a - xa[i], db = sc_b * Lb[i] + mn_b - xb[i];
        da = use_mad ? fabsf(da) : da * da;
        db = use_mad ? fabsf(db) : db * db;
        be_a += wa[i] * da;
        be_b += wb[i] * db;
    }
    for (int is = 0; is <= nstep; is++) {
        isa = (rmin + rdelta * is + nmax) / (mx_a - mn_a);
        isb = (rmin + rdelta * is + nmax) / (mx_b - mn_b);
        float sl_a = 0, sl2_a = 0, sxl_a = 0, sl_b = 0, sl2_b = 0, sxl_b = 0;
        for (int i = 0; i < n; i++) {
            int la = grq_clamp(grq_nearest(isa * (xa[i] - mn_a)), 0, nmax);
            int lb = grq_clamp(grq_nearest(isb * (xb[i] - mn_b)), 0, nmax);
            Xa[i] = (uint8_t)la;
            Xb[i] = (uint8_t)lb;
            sl_a += wa[i] * la; sl2_a += wa[i] * la * la; sxl_a += wa[i] * la * xa[i];
            sl_b += wb[i] * lb; sl2_b += wb[i] * lb * lb; sxl_b += wb[i] * lb * xb[i];
        }
        float D_a = sw_a * sl2_a - sl_a * sl_a, D_b = sw_b * sl2_b - sl_b * sl_b;
        float s_a = 0, m_a = 0, s_b = 0, m_b = 0, e_a = 0, e_b = 0;
        if (D_a > 0) {
            s_a = (sw_a * sxl_a - sx_a * sl_a) / D_a;
            m_a = (sl2_a * sx_a - sl_a * sxl_a) / D_a;
            if (m_a > 0) { m_a = 0; s_a = sxl_a / sl2_a; }
        }
        if (D_b > 0) {
            s_b = (sw_b * sxl_b - sx_b * sl_b) / D_b;
            m_b = (sl2_b * sx_b - sl_b * sxl_b) / D_b;
            if (m_b > 0) { m_b = 0; s_b = sxl_b / sl2_b; }
        }
        for (int i = 0; i < n; i++) {
            float da = s_a * Xa[i] + m_a - xa[i], db = s_b * Xb[i] + m_b - xb[i];
            da = use_mad ? fabsf(da) : da * da;
            db = use_mad ? fabsf(db) : db * db;
            e_a += wa[i] * da;
            e_b += wb[i] * db;
        }
        if (D_a > 0 && e_a < be_a) {
            memcpy(La, Xa, (size_t)n);
            be_a = e_a; sc_a = s_a; mn_a = m_a;
        }
        if (D_b > 0 && e_b < be_b) {
            memcpy(Lb, Xb, (size_t)n);
            be_b = e_b; sc_b = s_b; mn_b = m_b;
        }
    }
    *min_a = -mn_a;
    *min_b = -mn_b;
    *sc_a_out = sc_a;
    *sc_b_out = sc_b;
}

/* ---- k-quants: 256-weight super-blocks ---------------------------------------------------- */

static void grq_q2_K(const float* x, block_q2_K* y, int64_t k) {
    uint8_t L[QK_K];
    float w[32], mins[QK_K / 16], scales[QK_K / 16];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < QK_K / 16; j += 2) {
            for (int l = 0; l < 32; l++) w[l] = fabsf(x[16 * j + l]);
            grq_fit_affine2(16, 3, x + 16 * j, x + 16 * j + 16, w, w + 16, L + 16 * j, L + 16 * j + 16, &mins[j],
                            &mins[j + 1], &scales[j], &scales[j + 1], -0.5f, 0.1f, 15, 1);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        /* 4-bit sub-scales (low nibble) and sub-mins (high nibble) against the largest of each */
        if (max_scale > 0) {
            float iscale = 15.f / max_scale;
            for (int j = 0; j < QK_K / 16; j++) y[i].scales[j] = (uint8_t)grq_nearest(iscale * scales[j]);
            y[i].d = grq_fp16(max_scale / 15.f);
        } else {
            memset(y[i].scales, 0, QK_K / 16);
            y[i].d = grq_fp16(0.f);
        }
        if (max_min > 0) {
            float iscale = 15.f / max_min;
            for (int j = 0; j < QK_K / 16; j++) y[i].scales[j] |= (uint8_t)(grq_nearest(iscale * mins[j]) << 4);
            y[i].dmin = grq_fp16(max_min / 15.f);
        } else {
            y[i].dmin = grq_fp16(0.f);
        }
        /* requantize against the stored (rounded) scales; a zero sub-scale keeps the fitted levels */
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = grq_f32(y[i].d) * (y[i].scales[j] & 0xf);
            if (!d) continue;
            const float dm = grq_f32(y[i].dmin) * (y[i].scales[j] >> 4);
            for (int l = 0; l < 16; l++) L[16 * j + l] = (uint8_t)grq_clamp(grq_nearest((x[16 * j + l] + dm) / d), 0, 3);
        }
        for (int j = 0; j < QK_K; j += 128)
            for (int l = 0; l < 32; l++)
                y[i].qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    }
}

static void grq_q3_K(const float* x, block_q3_K* y, int64_t k) {
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        float max_scale = 0, amax = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            scales[j] = grq_fit_q3(16, 4, x + 16 * j, L + 16 * j);
            if (fabsf(scales[j]) > amax) { amax = fabsf(scales[j]); max_scale = scales[j]; }
        }
        /* 6-bit sub-scales + 32: low 4 bits in a nibble of scales[0..7] (j and j+8 share a byte),
         * high 2 bits at bits 2*(j/4) of scales[8 + j%4] */
        memset(y[i].scales, 0, 12);
        if (max_scale) {
            float iscale = -32.f / max_scale;
            for (int j = 0; j < QK_K / 16; j++) {
                int8_t l = (int8_t)grq_nearest(iscale * scales[j]);   /* int8 first, as ggml */
                l = (int8_t)(grq_clamp(l, -32, 31) + 32);
                if (j < 8) y[i].scales[j] = (uint8_t)(l & 0xf);
                else y[i].scales[j - 8] |= (uint8_t)((l & 0xf) << 4);
                y[i].scales[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
            }
            y[i].d = grq_fp16(1 / iscale);
        } else {
            y[i].d = grq_fp16(0.f);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sc = j < 8 ? y[i].scales[j] & 0xf : y[i].scales[j - 8] >> 4;
            sc = (sc | (((y[i].scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
            const float d = grq_f32(y[i].d) * sc;
            if (!d) continue;
            for (int l = 0; l < 16; l++) L[16 * j + l] = (int8_t)(grq_clamp(grq_nearest(x[16 * j + l] / d), -4, 3) + 4);
        }
        /* bit 2 of weight j goes to hmask[j % 32], bit j / 32 */
        memset(y[i].hmask, 0, QK_K / 8);
        for (int j = 0; j < QK_K; j++) {
            if (L[j] > 3) { y[i].hmask[j % 32] |= (uint8_t)(1u << (j / 32)); L[j] -= 4; }
        }
        for (int j = 0; j < QK_K; j += 128)
            for (int l = 0; l < 32; l++)
                y[i].qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    }
}

/* 8 sub-blocks of 32 with 6-bit scales and mins against d and dmin (Q4_K, Q5_K): fits them,
 * packs scales[12] and requantizes each weight to 0..nmax against the stored values. */
static void grq_k_affine_block(const float* x, uint8_t* L, uint8_t packed[12], ggml_fp16_t* d_out,
                               ggml_fp16_t* dmin_out, int nmax, float rmin, int nstep) {
    float w[QK_K], mins[QK_K / 32], scales[QK_K / 32];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; j++) {
        const float* xj = x + 32 * j;
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) sum_x2 += xj[l] * xj[l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) w[32 * j + l] = av_x + fabsf(xj[l]);
    }
    for (int j = 0; j < QK_K / 32; j += 2)
        grq_fit_affine2(32, nmax, x + 32 * j, x + 32 * j + 32, w + 32 * j, w + 32 * j + 32, L + 32 * j,
                        L + 32 * j + 32, &mins[j], &mins[j + 1], &scales[j], &scales[j + 1], rmin, 0.1f, nstep, 0);
    for (int j = 0; j < QK_K / 32; j++) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    /* sub-block j < 4: scale in packed[j], min in packed[j+4] (low 6 bits); j >= 4: low nibbles in
     * packed[j+4], high 2 bits in the top bits of packed[j-4] (scale) and packed[j] (min) */
    uint8_t ls[8], lm[8];
    for (int j = 0; j < QK_K / 32; j++) {
        ls[j] = (uint8_t)grq_nearest(inv_scale * scales[j]);   /* wraps to uint8 before the clamp, as ggml */
        lm[j] = (uint8_t)grq_nearest(inv_min * mins[j]);
        if (ls[j] > 63) ls[j] = 63;
        if (lm[j] > 63) lm[j] = 63;
        if (j < 4) {
            packed[j] = ls[j];
            packed[j + 4] = lm[j];
        } else {
            packed[j + 4] = (uint8_t)((ls[j] & 0xf) | ((lm[j] & 0xf) << 4));
            packed[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            packed[j] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
    *d_out = grq_fp16(max_scale / 63.f);
    *dmin_out = grq_fp16(max_min / 63.f);
    const float dd = grq_f32(*d_out), dm0 = grq_f32(*dmin_out);
    for (int j = 0; j < QK_K / 32; j++) {
        /* the stored 6-bit values are the clamped ones computed above */
        const float d = dd * ls[j];
        if (!d) continue;
        const float dm = dm0 * lm[j];
        for (int l = 0; l < 32; l++) L[32 * j + l] = (uint8_t)grq_clamp(grq_nearest((x[32 * j + l] + dm) / d), 0, nmax);
    }
}

static void grq_q4_K(const float* x, block_q4_K* y, int64_t k) {
    uint8_t L[QK_K];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        memset(y[i].scales, 0, K_SCALE_SIZE);
        grq_k_affine_block(x, L, y[i].scales, &y[i].d, &y[i].dmin, 15, -1.f, 20);
        /* qs: 32 bytes per 64 weights, weight l in the low nibble and l + 32 in the high */
        for (int j = 0; j < QK_K; j += 64)
            for (int l = 0; l < 32; l++) y[i].qs[j / 2 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

static void grq_q5_K(const float* x, block_q5_K* y, int64_t k) {
    uint8_t L[QK_K];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        memset(y[i].scales, 0, K_SCALE_SIZE);
        grq_k_affine_block(x, L, y[i].scales, &y[i].d, &y[i].dmin, 31, -0.5f, 15);
        /* as Q4_K, plus bit 4 of weight n + l (n = 64p, l < 32) at bit 2p of qh[l], of n + 32 + l at 2p + 1 */
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

/* qw: the importance of each weight (quantize_rows_imatrix.h), each group of 16 fitted with it
 * as its weights (no sigma2 term); NULL: none */
static void grq_q6_K(const float* x, block_q6_K* y, int64_t k, const float* qw) {
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K, qw = qw ? qw + QK_K : NULL) {
        float max_scale = 0, max_abs = 0;
        for (int j = 0; j < QK_K / 16; j += 2)
            grq_fit_sym2(16, 32, x + 16 * j, x + 16 * j + 16, L + 16 * j, L + 16 * j + 16, &scales[j], &scales[j + 1],
                         qw ? qw + 16 * j : NULL, qw ? qw + 16 * j + 16 : NULL);
        for (int j = 0; j < QK_K / 16; j++) {
            if (fabsf(scales[j]) > max_abs) { max_abs = fabsf(scales[j]); max_scale = scales[j]; }
        }
        if (max_abs < GRQ_EPS) {
            memset(&y[i], 0, sizeof(block_q6_K));
            continue;
        }
        const float iscale = -128.f / max_scale;
        y[i].d = grq_fp16(1 / iscale);
        for (int j = 0; j < QK_K / 16; j++) y[i].scales[j] = (int8_t)grq_min(127, grq_nearest(iscale * scales[j]));
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = grq_f32(y[i].d) * y[i].scales[j];
            if (!d) continue;
            for (int l = 0; l < 16; l++) L[16 * j + l] = (int8_t)(grq_clamp(grq_nearest(x[16 * j + l] / d), -32, 31) + 32);
        }
        /* per 128 weights: ql holds the low nibbles of l, l+64 (ql[l]) and l+32, l+96 (ql[l+32]);
         * qh[l] the high 2 bits of l, l+32, l+64, l+96 */
        for (int j = 0, h = 0; j < QK_K; j += 128, h++) {
            uint8_t* ql = y[i].ql + 64 * h;
            uint8_t* qh = y[i].qh + 32 * h;
            for (int l = 0; l < 32; l++) {
                const uint8_t a = (uint8_t)L[j + l], b = (uint8_t)L[j + l + 32];
                const uint8_t c = (uint8_t)L[j + l + 64], e = (uint8_t)L[j + l + 96];
                ql[l] = (uint8_t)((a & 0xf) | ((c & 0xf) << 4));
                ql[l + 32] = (uint8_t)((b & 0xf) | ((e & 0xf) << 4));
                qh[l] = (uint8_t)((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6));
            }
        }
    }
}

/* ---- the source rows: F32, F16 or BF16 -> float (exact conversions) ----------------------- */

static float grq_f16_table[65536];   /* half bits -> float, filled once by grq_init (with the GIL) */
static int grq_table_ready = 0;

static void grq_init(void) {
    if (grq_table_ready) return;
    for (uint32_t h = 0; h < 65536; h++) grq_f16_table[h] = grq_f32((ggml_fp16_t)h);
    grq_table_ready = 1;
}

/* src (k values of ggml type src_type: F32, F16 or BF16) -> dst (k,) */
static void grq_row_to_f32(int src_type, const void* src, float* dst, int64_t k) {
    if (src_type == GGML_TYPE_F16) {
        const uint16_t* h = (const uint16_t*)src;
        for (int64_t i = 0; i < k; i++) dst[i] = grq_f16_table[h[i]];
    } else if (src_type == GGML_TYPE_BF16) {
        const uint16_t* h = (const uint16_t*)src;
        for (int64_t i = 0; i < k; i++) {
            uint32_t b = (uint32_t)h[i] << 16;
            memcpy(dst + i, &b, 4);
        }
    } else {
        memcpy(dst, src, (size_t)k * 4);
    }
}

/* ---- one entry point ---------------------------------------------------------------------- */

/* weights per block and bytes per block of the types grq_quantize_row makes; 0 for the others */
static inline int grq_block_size(int type) {
    switch (type) {
    case GGML_TYPE_Q4_0: case GGML_TYPE_Q4_1: case GGML_TYPE_Q5_0: case GGML_TYPE_Q5_1:
    case GGML_TYPE_Q8_0: case GGML_TYPE_IQ4_NL: return 32;
    case GGML_TYPE_Q2_K: case GGML_TYPE_Q3_K: case GGML_TYPE_Q4_K: case GGML_TYPE_Q5_K:
    case GGML_TYPE_Q6_K: return QK_K;
    default: return 0;
    }
}

static inline int grq_block_bytes(int type) {
    switch (type) {
    case GGML_TYPE_Q4_0: return (int)sizeof(block_q4_0);
    case GGML_TYPE_Q4_1: return (int)sizeof(block_q4_1);
    case GGML_TYPE_Q5_0: return (int)sizeof(block_q5_0);
    case GGML_TYPE_Q5_1: return (int)sizeof(block_q5_1);
    case GGML_TYPE_Q8_0: return (int)sizeof(block_q8_0);
    case GGML_TYPE_IQ4_NL: return (int)sizeof(block_iq4_nl);
    case GGML_TYPE_Q2_K: return (int)sizeof(block_q2_K);
    case GGML_TYPE_Q3_K: return (int)sizeof(block_q3_K);
    case GGML_TYPE_Q4_K: return (int)sizeof(block_q4_K);
    case GGML_TYPE_Q5_K: return (int)sizeof(block_q5_K);
    case GGML_TYPE_Q6_K: return (int)sizeof(block_q6_K);
    default: return 0;
    }
}

/* x (k,) -> y (k / block size blocks); returns 0, or -1 for a type it does not make */
static int grq_quantize_row(int type, const float* x, void* y, int64_t k) {
    switch (type) {
    case GGML_TYPE_Q4_0: grq_q4_0(x, (block_q4_0*)y, k); return 0;
    case GGML_TYPE_Q4_1: grq_q4_1(x, (block_q4_1*)y, k); return 0;
    case GGML_TYPE_Q5_0: grq_q5_0(x, (block_q5_0*)y, k); return 0;
    case GGML_TYPE_Q5_1: grq_q5_1(x, (block_q5_1*)y, k); return 0;
    case GGML_TYPE_Q8_0: grq_q8_0(x, (block_q8_0*)y, k); return 0;
    case GGML_TYPE_IQ4_NL: grq_iq4_nl(x, (block_iq4_nl*)y, k, NULL); return 0;
    case GGML_TYPE_Q2_K: grq_q2_K(x, (block_q2_K*)y, k); return 0;
    case GGML_TYPE_Q3_K: grq_q3_K(x, (block_q3_K*)y, k); return 0;
    case GGML_TYPE_Q4_K: grq_q4_K(x, (block_q4_K*)y, k); return 0;
    case GGML_TYPE_Q5_K: grq_q5_K(x, (block_q5_K*)y, k); return 0;
    case GGML_TYPE_Q6_K: grq_q6_K(x, (block_q6_K*)y, k, NULL); return 0;
    default: return -1;
    }
}

#endif
