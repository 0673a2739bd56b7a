/* The AVX-512 unit (F, BW, VL, DQ, VNNI, VBMI): the attention loops at 16 floats a register,
 * and the 8-row interleaved kernels (dot_r8, dot_r8_x4) of q4_0, q4_1, q8_0, q4_K and q6_K with
 * VNNI's vpdpbusd (4 u8 x s8 products summed into each i32 lane: one instruction where AVX2
 * needs maddubs, madd and an add), and the one-row kernels (vec_dot, vec_dot_x4) of q4_0, q4_1
 * and q8_0, for the matrices not interleaved. What it leaves out its fallback unit, avx2,
 * fills (_engine.KernelSet).
 *
 * One source, two widths (isa_list.py): GR_WIDTH=512 is the avx512 unit; GR_WIDTH=256 builds
 * the same bodies with AVX2 only (vpdpbusd as maddubs + madd + add, which gives the same
 * integers: no pair sum here reaches the i16 limit), the test-only unit avx512_at256, so
 * that every kernel below runs and is tested on any AVX2 CPU. The width-dependent part is the
 * vector layer right below; the kernels use only it.
 *
 * The 8-row kernels: lane r of each 32-byte step of a block_*x8 holds 4 weights of row r
 * (ggml_blocks.h); a 512-bit register holds two consecutive steps (vi_load_w). Each row's
 * integer sums are exact, and after them every (row, token)
 * gets the float operations of the avx2 unit's 8-row kernels in the same order: the results
 * are the avx2 unit's bits, at either width (tests/test_isa.py checks it). */
#include <immintrin.h>
#include <string.h>
#include "isa_table.h"

#ifndef GR_WIDTH
#define GR_WIDTH 512
#endif

/* ---- the vector layer: vi (bytes), vf (floats), at GR_WIDTH bits -------------------- */
#if GR_WIDTH == 512
#define UNIT_NAME "avx512"
#define UNIT_TABLE gr_isa_avx512
typedef __m512i vi;
typedef __m512 vf;
#define VF_LANES 16
#define STEPS 2                                  /* 32-byte steps of an 8-row block per vi */
#define vi_load(p) _mm512_loadu_si512((const void *)(p))
#define vi_zero() _mm512_setzero_si512()
#define vi_set1_8(c) _mm512_set1_epi8((char)(c))
#define vi_and(a, b) _mm512_and_si512(a, b)
#define vi_or(a, b) _mm512_or_si512(a, b)
#define vi_srli16(a, n) _mm512_srli_epi16(a, n)
#define vi_slli16(a, n) _mm512_slli_epi16(a, n)
#define dpbusd(acc, u, s) _mm512_dpbusd_epi32(acc, u, s)
#define vf_zero() _mm512_setzero_ps()
#define vf_set1(x) _mm512_set1_ps(x)
#define vf_load(p) _mm512_loadu_ps(p)
#define vf_store(p, v) _mm512_storeu_ps(p, v)
#define vf_fma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vf_add(a, b) _mm512_add_ps(a, b)
#define vf_load_f16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
static inline float vf_hsum(vf x);
/* Two steps of an 8-row block in one register, lane 2r holding row r's 4 weights of the first
 * step and lane 2r + 1 those of the second: one permute of the weights, which the tokens share,
 * lets each token's activation bytes of the two steps (p[0..3], p[4..7]) come with a
 * broadcast load (rather than one permute per token and step) */
static inline vi vi_load_w(const void *p) {
    return _mm512_permutexvar_epi32(_mm512_set_epi32(15, 7, 14, 6, 13, 5, 12, 4, 11, 3, 10, 2, 9, 1, 8, 0),
                                    _mm512_loadu_si512(p));
}
static inline vi bcast_step(const int8_t *p) {
    int64_t v;
    memcpy(&v, p, 8);
    return _mm512_set1_epi64(v);
}
/* each row's sum: its lanes 2r and 2r + 1 (the carry out of the low dword lands in the high,
 * which the narrowing drops) */
static inline __m256i rows8(vi v) { return _mm512_cvtepi64_epi32(_mm512_add_epi64(v, _mm512_srli_epi64(v, 32))); }
/* a per-row i32 (lane r of v) in both lanes of row r, for vi_mullo */
static inline vi rows_wide(__m256i v) {
    vi q = _mm512_cvtepu32_epi64(v);
    return _mm512_or_si512(q, _mm512_slli_epi64(q, 32));
}
#define vi_mullo(a, b) _mm512_mullo_epi32(a, b)
#define vi_add32(a, b) _mm512_add_epi32(a, b)
/* |w| and y with w's sign (y where w > 0, -y where w < 0; w = 0 zeroes the product anyway) */
static inline vi abs8(vi w) { return _mm512_abs_epi8(w); }
static inline vi sign_by(vi y, vi w) { return _mm512_mask_sub_epi8(y, _mm512_movepi8_mask(w), _mm512_setzero_si512(), y); }
#else
#define UNIT_NAME "avx512_at256"
#define UNIT_TABLE gr_isa_avx512_at256
typedef __m256i vi;
typedef __m256 vf;
#define VF_LANES 8
#define STEPS 1
#define vi_load(p) _mm256_loadu_si256((const __m256i *)(p))
#define vi_zero() _mm256_setzero_si256()
#define vi_set1_8(c) _mm256_set1_epi8((char)(c))
#define vi_and(a, b) _mm256_and_si256(a, b)
#define vi_or(a, b) _mm256_or_si256(a, b)
#define vi_srli16(a, n) _mm256_srli_epi16(a, n)
#define vi_slli16(a, n) _mm256_slli_epi16(a, n)
/* vpdpbusd without VNNI: exact while no u8 x s8 pair sum passes the i16 limit (true of
 * every kernel here: at most 2 * 128 * 127) */
#define dpbusd(acc, u, s) _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
#define vf_zero() _mm256_setzero_ps()
#define vf_set1(x) _mm256_set1_ps(x)
#define vf_load(p) _mm256_loadu_ps(p)
#define vf_store(p, v) _mm256_storeu_ps(p, v)
#define vf_fma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vf_add(a, b) _mm256_add_ps(a, b)
#define vf_load_f16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
static inline float vf_hsum(vf x);
#define vi_load_w(p) vi_load(p)
static inline vi bcast_step(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
static inline __m256i rows8(vi v) { return v; }
static inline vi rows_wide(__m256i v) { return v; }
#define vi_mullo(a, b) _mm256_mullo_epi32(a, b)
#define vi_add32(a, b) _mm256_add_epi32(a, b)
static inline vi abs8(vi w) { return _mm256_sign_epi8(w, w); }
static inline vi sign_by(vi y, vi w) { return _mm256_sign_epi8(y, w); }
#endif

#define ALWAYS_INLINE static inline __attribute__((always_inline))
/* the small constant loops of a kernel, written out: their indices pick fields and shifts */
#define UNROLL _Pragma("GCC unroll 16")
/* the outer loops of a big block stay loops: written out, gcc interleaved their work and spilled */
#define NO_UNROLL _Pragma("GCC unroll 1")

static inline float hsum8(__m256 x) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}
#if GR_WIDTH == 512
static inline float vf_hsum(vf x) {
    return hsum8(_mm256_add_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1)));
}
#else
static inline float vf_hsum(vf x) { return hsum8(x); }
#endif

static inline float f16_to_f32(ggml_fp16_t h) { return _cvtsh_ss(h); }
static inline int32_t load_i32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* ---- prefetching (the avx2 unit's, measured there) ------------------------------------ */
#define PREFETCH 4096
/* the lines from pf to PREFETCH past end, each once; returns the next one */
static inline const uint8_t *prefetch_until(const uint8_t *pf, const uint8_t *end) {
    while (pf < end + PREFETCH) {
        __builtin_prefetch(pf, 0, 3);      /* (gcc 12 dropped _mm_prefetch here) */
        pf += 64;
    }
    return pf;
}
/* slice idx of nslices of the size bytes at blk, PREFETCH ahead: a big block's lines asked
 * for a few at a time through it, not all at its start */
static inline void prefetch_slice(const void *blk, int64_t size, int idx, int nslices) {
    int64_t step = ((size + nslices - 1) / nslices + 63) / 64 * 64, lo = idx * step;
    if (lo < size)
        prefetch_until((const uint8_t *)blk + lo + PREFETCH, (const uint8_t *)blk + (lo + step < size ? lo + step : size));
}

/* ---- attention over one head (isa_table.h: kv_scores_fn, kv_mix_fn) ------------------ */
#define KV_AHEAD 8

static inline vf kv_vec(const void *kv, int64_t at, int f16) {
    return f16 ? vf_load_f16((const ggml_fp16_t *)kv + at) : vf_load((const float *)kv + at);
}
static inline float kv_at(const void *kv, int64_t at, int f16) {
    return f16 ? f16_to_f32(((const ggml_fp16_t *)kv)[at]) : ((const float *)kv)[at];
}
static inline void kv_prefetch(const void *kv, int64_t at, int n, int f16) {
    const char *b = (const char *)kv + at * (f16 ? 2 : 4);
    for (int k = 0; k < n * (f16 ? 2 : 4); k += 64)
        __builtin_prefetch(b + k, 0, 3);
}

static void kv_scores(float *a, const float *q, const void *kv, int64_t off, int64_t stride, int n_pos, int n,
                      float scale, int f16) {
    for (int p = 0; p < n_pos; p++) {
        int64_t at = off + p * stride;
        vf a0 = vf_zero(), a1 = vf_zero();
        int i = 0;
        float acc;
        if (p + KV_AHEAD < n_pos)
            kv_prefetch(kv, off + (p + KV_AHEAD) * stride, n, f16);
        for (; i + 2 * VF_LANES <= n; i += 2 * VF_LANES) {
            a0 = vf_fma(vf_load(q + i), kv_vec(kv, at + i, f16), a0);
            a1 = vf_fma(vf_load(q + i + VF_LANES), kv_vec(kv, at + i + VF_LANES, f16), a1);
        }
        acc = vf_hsum(vf_add(a0, a1));
        for (; i < n; i++)
            acc += q[i] * kv_at(kv, at + i, f16);
        a[p] = acc * scale;
    }
}

/* 64 output lanes in registers across all positions: per element one fma per position, from
 * p = 0 up, as adding a[p] * row p into out one position at a time */
#define MIX_ACC (64 / VF_LANES)
static void kv_mix(float *out, const float *a, const void *kv, int64_t off, int64_t stride, int n_pos, int n,
                   int f16) {
    vf acc[MIX_ACC];
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        for (int j = 0; j < MIX_ACC; j++)
            acc[j] = vf_zero();
        for (int p = 0; p < n_pos; p++) {
            vf va = vf_set1(a[p]);
            if (p + KV_AHEAD < n_pos)
                kv_prefetch(kv, off + (p + KV_AHEAD) * stride + i, 64, f16);
            for (int j = 0; j < MIX_ACC; j++)
                acc[j] = vf_fma(va, kv_vec(kv, off + p * stride + i + VF_LANES * j, f16), acc[j]);
        }
        for (int j = 0; j < MIX_ACC; j++)
            vf_store(out + i + VF_LANES * j, acc[j]);
    }
    for (; i + VF_LANES <= n; i += VF_LANES) {
        acc[0] = vf_zero();
        for (int p = 0; p < n_pos; p++)
            acc[0] = vf_fma(vf_set1(a[p]), kv_vec(kv, off + p * stride + i, f16), acc[0]);
        vf_store(out + i, acc[0]);
    }
    for (; i < n; i++) {
        float x = 0.0f;
        for (int p = 0; p < n_pos; p++)
            x += a[p] * kv_at(kv, off + p * stride + i, f16);
        out[i] = x;
    }
}

/* ---- 8-row kernels: the float steps, shared by every type and both widths ------------- */
/* acc + (d8 * dy) * v: a block's 8 rows of integer sums into a float accumulator */
static inline __m256 r8_scaled(__m256 d8, float dy, __m256i v, __m256 acc) {
    return _mm256_fmadd_ps(_mm256_mul_ps(d8, _mm256_set1_ps(dy)), _mm256_cvtepi32_ps(v), acc);
}
static inline __m256 f16x8(const ggml_fp16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
#define Y_ROW(T, vy, y_stride, t) ((const T *)((const uint8_t *)(vy) + (t) * (y_stride)))

/* q4_0 and q4_1 (block_q4_0x8, block_q4_1x8), T tokens: x = d * q + m with q unsigned 4-bit,
 * m = -8 d for q4_0. acc: d * dy * sum(q y) per block; accm, its own chain: m * s (q8_1's
 * s = dy * sum(y)); s = acc + accm, as the avx2 unit's dot_r8_tokens */
ALWAYS_INLINE void r8_q4(int T, int has_m, int n, float *s, int64_t s_stride, const void *vx, const void *vy,
                         int64_t y_stride) {
    const int64_t x_size = has_m ? sizeof(block_q4_1x8) : sizeof(block_q4_0x8);
    const block_q8_1 *y[4];
    __m256 acc[4], accm[4];
    const vi m4 = vi_set1_8(0x0F);
    const uint8_t *pf = (const uint8_t *)vx + PREFETCH;
    for (int t = 0; t < T; t++) {
        y[t] = Y_ROW(block_q8_1, vy, y_stride, t);
        acc[t] = accm[t] = _mm256_setzero_ps();
    }
    for (int i = 0; i < n / QK8_1; i++) {
        const uint8_t *blk = (const uint8_t *)vx + i * x_size;
        const ggml_fp16_t *d = has_m ? ((const block_q4_1x8 *)blk)->d : ((const block_q4_0x8 *)blk)->d;
        const uint8_t *qs = has_m ? ((const block_q4_1x8 *)blk)->qs : ((const block_q4_0x8 *)blk)->qs;
        vi sum[4];              /* per token: low nibbles (weights 4k+j) and high (16+4k+j) */
        __m256 d8, m8;
        if (T == 1)
            pf = prefetch_until(pf, blk + x_size);
        for (int t = 0; t < T; t++)
            sum[t] = vi_zero();
        UNROLL
        for (int k = 0; k < 4; k += STEPS) {
            vi p = vi_load_w(qs + 32 * k), pl = vi_and(p, m4), ph = vi_and(vi_srli16(p, 4), m4);
            for (int t = 0; t < T; t++) {
                sum[t] = dpbusd(dpbusd(sum[t], pl, bcast_step(y[t][i].qs + 4 * k)), ph,
                                bcast_step(y[t][i].qs + 16 + 4 * k));
            }
        }
        d8 = f16x8(d);
        m8 = has_m ? f16x8(((const block_q4_1x8 *)blk)->m) : _mm256_mul_ps(d8, _mm256_set1_ps(-8.0f));
        for (int t = 0; t < T; t++) {
            acc[t] = r8_scaled(d8, y[t][i].d, rows8(sum[t]), acc[t]);
            accm[t] = _mm256_fmadd_ps(m8, _mm256_set1_ps(y[t][i].s), accm[t]);
        }
    }
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(s + t * s_stride, _mm256_add_ps(acc[t], accm[t]));
}

/* q8_0 (block_q8_0x8): signed weights, so |w| against y with w's sign (q8_1 holds no -128) */
ALWAYS_INLINE void r8_q8(int T, int n, float *s, int64_t s_stride, const void *vx, const void *vy, int64_t y_stride) {
    const block_q8_1 *y[4];
    __m256 acc[4];
    const uint8_t *pf = (const uint8_t *)vx + PREFETCH;
    for (int t = 0; t < T; t++) {
        y[t] = Y_ROW(block_q8_1, vy, y_stride, t);
        acc[t] = _mm256_setzero_ps();
    }
    for (int i = 0; i < n / QK8_0; i++) {
        const block_q8_0x8 *b = (const block_q8_0x8 *)vx + i;
        vi sum[4];
        __m256 d8;
        for (int t = 0; t < T; t++)
            sum[t] = vi_zero();
        UNROLL
        for (int k = 0; k < 8; k += STEPS) {
            vi w = vi_load_w(b->qs + 32 * k), aw = abs8(w);
            if (T == 1)
                pf = prefetch_until(pf, (const uint8_t *)(b->qs + 32 * k + 32 * STEPS));
            for (int t = 0; t < T; t++)
                sum[t] = dpbusd(sum[t], aw, sign_by(bcast_step(y[t][i].qs + 4 * k), w));
        }
        d8 = f16x8(b->d);
        for (int t = 0; t < T; t++)
            acc[t] = r8_scaled(d8, y[t][i].d, rows8(sum[t]), acc[t]);
    }
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(s + t * s_stride, acc[t]);
}

/* q4_K (block_q4_Kx8): per sub-block each row's integer sum, times its 6-bit scale; the
 * minimums through the q8_K block sums, per pair of sub-blocks (the avx2 unit's helpers) */
static inline __m256i lane_bytes(int b0, int b1) {
    /* pshufb mask: in every 32-bit lane, its byte b0 and byte b1 as two u16 */
    int v[4];
    UNROLL
    for (int p = 0; p < 4; p++)
        v[p] = (4 * p + b0) | 0x8000 | ((4 * p + b1) << 16) | (int)0x80000000;
    return _mm256_setr_epi32(v[0], v[1], v[2], v[3], v[0], v[1], v[2], v[3]);
}
static inline int32_t bsum_pair(const block_q8_K *y, int j) {
    /* the q8_K sums of sub-blocks j and j+1 (32 weights each) as two i16 in one i32 */
    int a = y->bsums[2 * j] + y->bsums[2 * j + 1], b = y->bsums[2 * j + 2] + y->bsums[2 * j + 3];
    return (int32_t)((uint32_t)(a & 0xFFFF) | ((uint32_t)b << 16));
}
static inline __m256i min_pair(__m256i mins, int b, const block_q8_K *y, int j) {
    return _mm256_madd_epi16(_mm256_shuffle_epi8(mins, lane_bytes(b, b + 1)), _mm256_set1_epi32(bsum_pair(y, j)));
}
/* the 6-bit scales of sub-blocks 2c, 2c+1 of 8 rows: bytes 2c % 4 and 2c % 4 + 1 of word 0
 * (c < 2), or of word 2 with word 0's top bits (block_q4_K's packing, 8 rows at a time) */
static inline __m256i k4_r8_scales(__m256i w0, __m256i w2, int c) {
    if (c < 2)
        return _mm256_and_si256(w0, _mm256_set1_epi32(0x3f3f3f3f));
    return _mm256_or_si256(_mm256_and_si256(w2, _mm256_set1_epi32(0x0f0f0f0f)),
                           _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(w0, 6), _mm256_set1_epi32(0x03030303)), 4));
}
/* per row: sum_j m_j * bsums of sub-block j */
static inline __m256i k4_r8_mins(__m256i w1, __m256i w2, const block_q8_K *y) {
    __m256i mn_lo = _mm256_and_si256(w1, _mm256_set1_epi32(0x3f3f3f3f));
    __m256i mn_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(w2, 4), _mm256_set1_epi32(0x0f0f0f0f)),
                                    _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(w1, 6),
                                                                       _mm256_set1_epi32(0x03030303)), 4));
    return _mm256_add_epi32(_mm256_add_epi32(min_pair(mn_lo, 0, y, 0), min_pair(mn_lo, 2, y, 2)),
                            _mm256_add_epi32(min_pair(mn_hi, 0, y, 4), min_pair(mn_hi, 2, y, 6)));
}
/* byte b of every 32-bit lane, as an i32 */
static inline __m256i lane_byte(__m256i v, int b) {
    return _mm256_and_si256(_mm256_srli_epi32(v, 8 * b), _mm256_set1_epi32(0xFF));
}

ALWAYS_INLINE void r8_q4_K(int T, int n, float *s, int64_t s_stride, const void *vx, const void *vy, int64_t y_stride) {
    const block_q8_K *y[4];
    __m256 acc[4], accm[4];
    const vi m4 = vi_set1_8(0x0F);
    for (int t = 0; t < T; t++) {
        y[t] = Y_ROW(block_q8_K, vy, y_stride, t);
        acc[t] = accm[t] = _mm256_setzero_ps();
    }
    for (int i = 0; i < n / QK_K; i++) {
        const block_q4_Kx8 *b = (const block_q4_Kx8 *)vx + i;
        __m256i w0 = _mm256_loadu_si256((const __m256i *)b->scales);
        __m256i w1 = _mm256_loadu_si256((const __m256i *)(b->scales + 32));
        __m256i w2 = _mm256_loadu_si256((const __m256i *)(b->scales + 64));
        vi sumi[4];            /* per token, unreduced: each row's sum over its two lanes */
        __m256 d8, dm8;
        for (int t = 0; t < T; t++)
            sumi[t] = vi_zero();
        NO_UNROLL
        for (int c = 0; c < 4; c++) {
            __m256i sc = k4_r8_scales(w0, w2, c);
            UNROLL
            for (int h = 0; h < 2; h++) {     /* sub-block 2c + h: low nibbles of chunk c, then high */
                if (T == 1)
                    prefetch_slice(b, sizeof(block_q4_Kx8), 2 * c + h, 8);
                vi scb = rows_wide(lane_byte(sc, 2 * (c % 2) + h));
                vi s32[4];
                for (int t = 0; t < T; t++)
                    s32[t] = vi_zero();
                UNROLL
                for (int k = 0; k < 8; k += STEPS) {
                    vi p = vi_load_w(b->qs + 256 * c + 32 * k);
                    p = vi_and(h ? vi_srli16(p, 4) : p, m4);
                    for (int t = 0; t < T; t++)
                        s32[t] = dpbusd(s32[t], p, bcast_step(y[t][i].qs + 64 * c + 32 * h + 4 * k));
                }
                for (int t = 0; t < T; t++)
                    sumi[t] = vi_add32(sumi[t], vi_mullo(s32[t], scb));
            }
        }
        d8 = f16x8(b->d);
        dm8 = f16x8(b->dmin);
        for (int t = 0; t < T; t++) {
            acc[t] = r8_scaled(d8, y[t][i].d, rows8(sumi[t]), acc[t]);
            accm[t] = r8_scaled(dm8, y[t][i].d, k4_r8_mins(w1, w2, y[t] + i), accm[t]);
        }
    }
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(s + t * s_stride, _mm256_sub_ps(acc[t], accm[t]));
}

/* q6_K (block_q6_Kx8): weights 0..63 against y, each sub-block's sum times its scale; the
 * -32 through the q8_K block sums, first */
static inline __m256i q6_r8_pair(const block_q6_Kx8 *b, int p) {
    /* lane r: row r's scales of sub-blocks 2p and 2p+1 as two i16 */
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b->scales + 16 * p)));
}
/* the 6-bit weights of quarter qd (0..3: ql low nibbles with qh bits 0-1, ...) */
static inline vi q6_r8_quarter(vi ql, vi qh, int qd) {
    vi lo = vi_and(qd < 2 ? ql : vi_srli16(ql, 4), vi_set1_8(0x0F));
    if (qd == 0)
        qh = vi_slli16(qh, 4);
    else if (qd == 1)
        qh = vi_slli16(qh, 2);
    else if (qd == 3)
        qh = vi_srli16(qh, 2);
    return vi_or(lo, vi_and(qh, vi_set1_8(0x30)));
}

ALWAYS_INLINE void r8_q6_K(int T, int n, float *s, int64_t s_stride, const void *vx, const void *vy, int64_t y_stride) {
    const block_q8_K *y[4];
    __m256 acc[4];
    for (int t = 0; t < T; t++) {
        y[t] = Y_ROW(block_q8_K, vy, y_stride, t);
        acc[t] = _mm256_setzero_ps();
    }
    for (int i = 0; i < n / QK_K; i++) {
        const block_q6_Kx8 *b = (const block_q6_Kx8 *)vx + i;
        __m256i sumi[4];
        vi wide[4];            /* per token, unreduced: the sub-blocks' scaled sums */
        for (int t = 0; t < T; t++) {       /* the offset first: -32 * sum_j sc_j bsums_j */
            sumi[t] = _mm256_setzero_si256();
            UNROLL
            for (int p = 0; p < 8; p++)
                sumi[t] = _mm256_sub_epi32(sumi[t], _mm256_madd_epi16(q6_r8_pair(b, p),
                                                                      _mm256_set1_epi32(load_i32(y[t][i].bsums + 2 * p))));
            sumi[t] = _mm256_slli_epi32(sumi[t], 5);
            wide[t] = vi_zero();
        }
        NO_UNROLL
        for (int h = 0; h < 2; h++) {
            NO_UNROLL
            for (int e = 0; e < 2; e++) {
                /* positions 16e..16e+15 of quarter qd of half h: sub-block 8h + 2qd + e. One
                 * sub-block at a time, so only T sums are live (the steps' loads hit L1) */
                UNROLL
                for (int qd = 0; qd < 4; qd++) {
                    if (T == 1)       /* 16 slices: 4 were 2x slower (measured at 512 and 256 bits) */
                        prefetch_slice(b, sizeof(block_q6_Kx8), 8 * h + 4 * e + qd, 16);
                    __m256i pair = q6_r8_pair(b, 4 * h + qd);
                    vi sc = rows_wide(e ? _mm256_srai_epi32(pair, 16) : _mm256_srai_epi32(_mm256_slli_epi32(pair, 16), 16));
                    vi s32[4];
                    for (int t = 0; t < T; t++)
                        s32[t] = vi_zero();
                    UNROLL
                    for (int k = 4 * e; k < 4 * e + 4; k += STEPS) {
                        vi w = q6_r8_quarter(vi_load_w(b->ql + 32 * (16 * h + 8 * (qd % 2) + k)),
                                             vi_load_w(b->qh + 32 * (8 * h + k)), qd);
                        for (int t = 0; t < T; t++)
                            s32[t] = dpbusd(s32[t], w, bcast_step(y[t][i].qs + 128 * h + 32 * qd + 4 * k));
                    }
                    for (int t = 0; t < T; t++)
                        wide[t] = vi_add32(wide[t], vi_mullo(s32[t], sc));
                }
            }
        }
        for (int t = 0; t < T; t++)
            acc[t] = r8_scaled(f16x8(b->d), y[t][i].d, _mm256_add_epi32(sumi[t], rows8(wide[t])), acc[t]);
    }
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(s + t * s_stride, acc[t]);
}

/* ---- one-row kernels (vec_dot, vec_dot_x4) of q4_0, q4_1, q8_0 against q8_1 ------------- */
/* One 32-weight block a 256-bit register at either width: its integer sum exact (vpdpbusd on
 * ymm, or maddubs + madd at the 256-bit build: no pair sum reaches the i16 limit since q8_1
 * holds no -128; q4_0's 8 * y: 8 * 127 * 2), then per block and token one fma of (dx * dy) * sum into one of two
 * accumulators (even and odd blocks: two short chains). q4_1's m * s terms go to two sums
 * of their own, the same way (a lane per token). The 1- and 4-token kernels are one body: each token gets the
 * same float operations in the same order. Two blocks a 512-bit register (inserts for the
 * weights, the activations and the scales) measured 0.68-0.94x the avx2 unit's speed on Zen 4 */
#if GR_WIDTH == 512
#define dpbusd_y(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#else
#define dpbusd_y(acc, u, s) _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
#endif

enum { ROW_Q4_0, ROW_Q4_1, ROW_Q8_0 };

/* a block's 32 weights in order, as bytes: q8_0's q signed, q4_0's and q4_1's q unsigned (the
 * 16 nibble bytes broadcast to both lanes, the high lane shifted by 4: no shuffle) */
ALWAYS_INLINE __m256i row_block_bytes(int kind, const uint8_t *b) {
    __m256i q;
    if (kind == ROW_Q8_0)
        return _mm256_loadu_si256((const __m256i *)((const block_q8_0 *)b)->qs);
    q = _mm256_broadcastsi128_si256(
        _mm_loadu_si128((const __m128i *)(kind == ROW_Q4_1 ? ((const block_q4_1 *)b)->qs : ((const block_q4_0 *)b)->qs)));
    return _mm256_and_si256(_mm256_srlv_epi64(q, _mm256_set_epi64x(4, 4, 0, 0)), _mm256_set1_epi8(0x0F));
}

/* a block's exact integer sums (8 lanes): q8_0 by the sign trick, q4_0 as q * y - 8 * y */
ALWAYS_INLINE __m256i row_block_sum(int kind, __m256i w, __m256i aw, __m256i yv) {
    const __m256i z = _mm256_setzero_si256();
    if (kind == ROW_Q8_0)
        return dpbusd_y(z, aw, _mm256_sign_epi8(yv, w));
    if (kind == ROW_Q4_0)
        return _mm256_sub_epi32(dpbusd_y(z, w, yv), dpbusd_y(z, _mm256_set1_epi8(8), yv));
    return dpbusd_y(z, w, yv);
}

ALWAYS_INLINE void row_dot(int T, int kind, int n, float *s, int64_t s_stride, const void *vx, const void *vy,
                           int64_t y_stride) {
    const int64_t x_size = kind == ROW_Q8_0 ? sizeof(block_q8_0)
                           : kind == ROW_Q4_1 ? sizeof(block_q4_1) : sizeof(block_q4_0);
    const uint8_t *xb = (const uint8_t *)vx;
    const int nb = n / QK8_1;
    const block_q8_1 *y[4];
    __m256 acc[4][2];
    /* q4_1's m * s terms: 4 tokens in the lanes of sm, one in sm1 (per lane the same operations) */
    __m128 sm[2] = {_mm_setzero_ps(), _mm_setzero_ps()};
    float sm1[2] = {0.0f, 0.0f};
    /* 4 tokens: row 0's packed [d0 d1 d2 d3 s0 s1 s2 s3] per block (pack_q8_1_x4), one load */
    const float *ds = (const float *)((const uint8_t *)vy + nb * sizeof(block_q8_1));
    const uint8_t *pf = xb + PREFETCH;
    for (int t = 0; t < T; t++) {
        y[t] = Y_ROW(block_q8_1, vy, y_stride, t);
        acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    }
    for (int i0 = 0; i0 < nb; i0 += 2) {
        if (T == 1)
            pf = prefetch_until(pf, xb + (i0 + 2) * x_size);
        UNROLL
        for (int c = 0; c < 2; c++) {
            const int i = i0 + c;
            if (i >= nb)
                break;
            const uint8_t *b = xb + i * x_size;
            const float d = f16_to_f32(*(const ggml_fp16_t *)b);
            __m256i w = row_block_bytes(kind, b);
            __m256i aw = kind == ROW_Q8_0 ? _mm256_sign_epi8(w, w) : w;
            const __m128 dd = T == 4 ? _mm_mul_ps(_mm_set1_ps(d), _mm_loadu_ps(ds + 8 * i)) : _mm_setzero_ps();
            if (kind == ROW_Q4_1 && T == 4)
                sm[c] = _mm_add_ps(sm[c], _mm_mul_ps(_mm_set1_ps(f16_to_f32(((const block_q4_1 *)b)->m)),
                                                     _mm_loadu_ps(ds + 8 * i + 4)));
            else if (kind == ROW_Q4_1)
                sm1[c] += f16_to_f32(((const block_q4_1 *)b)->m) * y[0][i].s;
            for (int t = 0; t < T; t++) {
                const block_q8_1 *yt = y[t] + i;
                __m256i yv = _mm256_loadu_si256((const __m256i *)yt->qs);
                __m256i sum = row_block_sum(kind, w, aw, yv);
                const __m256 sc = T == 4 ? _mm256_permutevar8x32_ps(_mm256_castps128_ps256(dd), _mm256_set1_epi32(t))
                                         : _mm256_set1_ps(d * yt->d);
                acc[t][c] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(sum), acc[t][c]);
            }
        }
    }
    float m_terms[4];
    _mm_storeu_ps(m_terms, _mm_add_ps(sm[0], sm[1]));
    if (T == 1)
        m_terms[0] = sm1[0] + sm1[1];
    for (int t = 0; t < T; t++) {
        float r = hsum8(_mm256_add_ps(acc[t][0], acc[t][1]));
        s[t * s_stride] = kind == ROW_Q4_1 ? r + m_terms[t] : r;
    }
}

#define ROW_PAIR(name, kind)                                                                                      \
    static void vec_dot_##name(int n, float *s, const void *vx, const void *vy) {                                \
        row_dot(1, kind, n, s, 0, vx, vy, 0);                                                                     \
    }                                                                                                             \
    static void vec_dot_x4_##name(int n, float *s, int64_t s_stride, const void *vx, const void *vy, int64_t ys) { \
        row_dot(4, kind, n, s, s_stride, vx, vy, ys);                                                             \
    }
ROW_PAIR(q4_0, ROW_Q4_0)
ROW_PAIR(q4_1, ROW_Q4_1)
ROW_PAIR(q8_0, ROW_Q8_0)

/* ---- the table: one function per (type, token count), each a body above --------------- */
#define R8_PAIR(name, call)                                                                                     \
    static void dot_r8_##name(int n, float *s, int64_t s_stride, const void *vx, const void *vy, int64_t ys) {  \
        call(1, n, s, s_stride, vx, vy, ys);                                                                    \
    }                                                                                                           \
    static void dot_r8_x4_##name(int n, float *s, int64_t s_stride, const void *vx, const void *vy, int64_t ys) { \
        call(4, n, s, s_stride, vx, vy, ys);                                                                    \
    }
#define R8_Q4_0(T, ...) r8_q4(T, 0, __VA_ARGS__)
#define R8_Q4_1(T, ...) r8_q4(T, 1, __VA_ARGS__)
R8_PAIR(q4_0, R8_Q4_0)
R8_PAIR(q4_1, R8_Q4_1)
R8_PAIR(q8_0, r8_q8)
R8_PAIR(q4_K, r8_q4_K)
R8_PAIR(q6_K, r8_q6_K)

const isa_kernels_t UNIT_TABLE = {
    .name = UNIT_NAME,
    .types = {
        [GGML_TYPE_Q4_0] = {.vec_dot = vec_dot_q4_0,
                              .vec_dot_x4 = vec_dot_x4_q4_0,
                              .dot_r8 = dot_r8_q4_0,
                              .dot_r8_x4 = dot_r8_x4_q4_0},
        [GGML_TYPE_Q4_1] = {.vec_dot = vec_dot_q4_1,
                              .vec_dot_x4 = vec_dot_x4_q4_1,
                              .dot_r8 = dot_r8_q4_1,
                              .dot_r8_x4 = dot_r8_x4_q4_1},
        [GGML_TYPE_Q8_0] = {.vec_dot = vec_dot_q8_0,
                              .vec_dot_x4 = vec_dot_x4_q8_0,
                              .dot_r8 = dot_r8_q8_0,
                              .dot_r8_x4 = dot_r8_x4_q8_0},
        [GGML_TYPE_Q4_K] = {.dot_r8 = dot_r8_q4_K, .dot_r8_x4 = dot_r8_x4_q4_K},
        [GGML_TYPE_Q6_K] = {.dot_r8 = dot_r8_q6_K, .dot_r8_x4 = dot_r8_x4_q6_K},
    },
    .kv_scores = kv_scores,
    .kv_mix = kv_mix,
};
