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

#include "x86_r8.h"

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
        [GGML_TYPE_Q5_0] = {.dot_r8 = dot_r8_q5_0, .dot_r8_x4 = dot_r8_x4_q5_0},
        [GGML_TYPE_Q5_1] = {.dot_r8 = dot_r8_q5_1, .dot_r8_x4 = dot_r8_x4_q5_1},
        [GGML_TYPE_Q2_K] = {.dot_r8 = dot_r8_q2_K, .dot_r8_x4 = dot_r8_x4_q2_K},
        [GGML_TYPE_Q3_K] = {.dot_r8 = dot_r8_q3_K, .dot_r8_x4 = dot_r8_x4_q3_K},
        [GGML_TYPE_Q4_K] = {.dot_r8 = dot_r8_q4_K, .dot_r8_x4 = dot_r8_x4_q4_K},
        [GGML_TYPE_Q5_K] = {.dot_r8 = dot_r8_q5_K, .dot_r8_x4 = dot_r8_x4_q5_K},
        [GGML_TYPE_Q6_K] = {.dot_r8 = dot_r8_q6_K, .dot_r8_x4 = dot_r8_x4_q6_K},
    },
    .kv_scores = kv_scores,
    .kv_mix = kv_mix,
};
