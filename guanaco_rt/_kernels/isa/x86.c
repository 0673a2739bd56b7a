/* The x86 units: one source, built once per unit of isa_list.py with its own flags.
 *   avx2      GR_WIDTH=256, AVX2 + FMA + F16C: vpdpbusd emulated as maddubs + madd + add
 *   avx_vnni  GR_WIDTH=256 with AVX-VNNI (Alder Lake and later cores): the VEX vpdpbusd
 *   vnni256   GR_WIDTH=256 with AVX-512 VL + VNNI: the EVEX vpdpbusd on ymm (test-only: the
 *             avx_vnni body, run on CPUs with AVX-512 but without AVX-VNNI)
 *   avx512    GR_WIDTH=512, AVX-512 F/BW/VL/DQ + VNNI + VBMI
 * What it holds: the attention loops (kv_scores, kv_mix) at 8 or 16 floats a register, the q8_1
 * activation quantizer, BF16's one-row vec_dot, and the 8-row interleaved kernels (dot_r8,
 * dot_r8_x4) of every quantized weight type, in x86_r8.h: each type's body written once,
 * instantiated by the compiler per token count (1, 4) and, through the vector layer below, per
 * width. A unit declares the layout it wants by what its table fills: every quantized weight type
 * here is interleaved 8 rows at a time at load, so the
 * one-row kernels (vec_dot) come from the fallback unit, generic, for the few tail rows of a
 * matrix whose row count is not a multiple of 8 (_engine.rows_q). The exceptions, the i-quants
 * IQ2_XXS/IQ2_XS/IQ2_S/IQ3_XXS/IQ3_S/IQ1_S/IQ1_M, TQ1_0 and TQ2_0, have one-row kernels of their own (x86_iq.h).
 *
 * The 8-row kernels: lane r of each 32-byte step of a block_*x8 holds 4 weights of row r
 * (ggml_blocks.h); a 512-bit register holds two consecutive steps (vi_load_w). Each row's
 * integer sums are exact, and after them every (row, token) gets the same float operations in
 * the same order at every width: all four units give the same bits (tests/test_isa.py). */
#include <immintrin.h>
#include <string.h>
#include "isa_table.h"

#ifndef GR_WIDTH
#define GR_WIDTH 512
#endif

/* ---- the vector layer: vi (bytes), vf (floats), at GR_WIDTH bits -------------------- */
#if GR_WIDTH == 512
#define GR_VNNI 1
#define UNIT_NAME "avx512"
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
#define vf_load_bf16(p) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define vi_bcast16(p) _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(p)))   /* 16 bytes, each 128-bit lane */
#define vi_shuffle8(t, i) _mm512_shuffle_epi8(t, i)                                   /* within each 128-bit lane */
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
#if defined(__AVXVNNI__) && !defined(__AVX512VNNI__)
#define GR_VNNI 1
#define UNIT_NAME "avx_vnni"
#define dpbusd(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#elif defined(__AVX512VNNI__)
#define GR_VNNI 1
#define UNIT_NAME "vnni256"
#define dpbusd(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#else
#define GR_VNNI 0
#define UNIT_NAME "avx2"
/* vpdpbusd without VNNI: exact while no u8 x s8 pair sum passes the i16 limit (true of
 * every kernel here: at most 2 * 128 * 127) */
#define dpbusd(acc, u, s) _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
#endif
#define vf_zero() _mm256_setzero_ps()
#define vf_set1(x) _mm256_set1_ps(x)
#define vf_load(p) _mm256_loadu_ps(p)
#define vf_store(p, v) _mm256_storeu_ps(p, v)
#define vf_fma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vf_add(a, b) _mm256_add_ps(a, b)
#define vf_load_f16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define vf_load_bf16(p) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define vi_bcast16(p) _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p)))
#define vi_shuffle8(t, i) _mm256_shuffle_epi8(t, i)
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

/* A sub-block's sum over a few steps of small weights, then times each row's scale: signed byte B
 * of its 32-bit lane of sc (scale_of). The VNNI builds: vpdpbusd into i32 lanes and vpmulld, at
 * either width. The avx2 build: maddubs added up in i16 lanes and one madd with the scale in both
 * i16 halves of each row's lane (small_i32: with 1), exact while a sub-block's steps' pair sums add up within i16 (the
 * callers say by how much), and a madd a step fewer than the emulated vpdpbusd */
#if GR_VNNI
#define dp_small(acc, u, s) dpbusd(acc, u, s)
static inline vi scale_of(__m256i sc, int B) { return rows_wide(_mm256_srai_epi32(_mm256_slli_epi32(sc, 24 - 8 * B), 24)); }
#define scaled_sum(acc, wsc) vi_mullo(acc, wsc)
#define small_i32(acc) (acc)
/* scale_of for scales held as i16 pairs: i16 number e of each row's lane */
static inline vi scale_of16(__m256i pair, int e) {
    return rows_wide(e ? _mm256_srai_epi32(pair, 16) : _mm256_srai_epi32(_mm256_slli_epi32(pair, 16), 16));
}
#else
#define dp_small(acc, u, s) _mm256_add_epi16(acc, _mm256_maddubs_epi16(u, s))
static inline vi scale_of(__m256i sc, int B) {
    /* byte B of each lane into the high byte of both its i16 (pshufb indices 4p + B; 0x80 + B still
     * zeroes the low bytes), then >> 8 */
    const __m256i at = _mm256_add_epi8(_mm256_setr_epi32(0x00800080, 0x04800480, 0x08800880, 0x0C800C80, 0x00800080,
                                                         0x04800480, 0x08800880, 0x0C800C80), _mm256_set1_epi8((char)B));
    return _mm256_srai_epi16(_mm256_shuffle_epi8(sc, at), 8);
}
static inline vi scale_of16(__m256i pair, int e) {
    /* bytes 2e, 2e + 1 of each lane, twice (pshufb indexes within a 128-bit half: 4p + 2e) */
    const __m256i at = _mm256_add_epi8(_mm256_setr_epi32(0x01000100, 0x05040504, 0x09080908, 0x0D0C0D0C, 0x01000100,
                                                         0x05040504, 0x09080908, 0x0D0C0D0C), _mm256_set1_epi8((char)(2 * e)));
    return _mm256_shuffle_epi8(pair, at);
}
#define scaled_sum(acc, wsc) _mm256_madd_epi16(acc, wsc)
#define small_i32(acc) _mm256_madd_epi16(acc, _mm256_set1_epi16(1))
#endif
/* acc + scaled_sum(s, w) where every i32 lane of s is within i16 and w's scales are in [0, 32767]: at
 * 512 bits one vpdpwssd (a lane's high halves: s's sign times w's 0), for vpmulld and vpaddd: 8-row
 * q4_K 3.5% faster (r8_harness, Zen 4). Only where the caller's sums fit (it says why) */
#if GR_WIDTH == 512
#define add_scaled_i16(acc, s, w) _mm512_dpwssd_epi32(acc, s, w)
#else
#define add_scaled_i16(acc, s, w) vi_add32(acc, scaled_sum(s, w))
#endif
/* how many steps (4 weights a row each) dp_small may add, of weights up to max_u, before scaled_sum:
 * each step adds 2 pair sums of at most 2 * max_u * 128 to an i16 lane */
#define SMALL_STEPS(max_u) (GR_VNNI ? 8 : 32767 / (256 * (max_u)))

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

/* ---- prefetching (as the Cython avx2 unit this replaced did it, measured there) ------------ */
#define PREFETCH 4096
/* the kernels of more than one token (a batch's rows, a prompt) also ask for each line l2 bytes
 * further ahead into L2 only (prefetcht1): two 8-row groups ahead, up to 64 KB, where a group
 * holds 8 KB or more (l2_ahead). The 8-row q4_K kernel streaming a 4096-wide matrix from memory
 * did 121-125 G multiply-adds/s at 8 tokens with 32 KB against 104-111 without, and 113-117
 * against 101-104 at 4 (r8_harness, Zen 4; 64 KB as well, 128 KB less); the engine's 7B q4_K_M
 * pass of 8 sequences took 257-286 ms against 298-315, of 4 148-181 against 175-190. Not for
 * small groups (the demo model's 3 KB: its 32-row passes were 8% slower with 32 KB, the lines
 * past the thread's rows), nor for one token (its kernels stream at the memory's rate), nor at 256
 * bits (the avx2 build's q4_K streamed at 4 tokens took 2222-2274 ns a group with it against 1832,
 * at 8 4127-4147 against 3760) */
static inline int64_t l2_ahead(int T, int64_t group_bytes) {
#if GR_WIDTH == 512
    return T > 1 && group_bytes >= 8192 ? (2 * group_bytes < 65536 ? 2 * group_bytes : 65536) : 0;
#else
    (void)T;
    (void)group_bytes;
    return 0;
#endif
}
/* the lines from pf to PREFETCH past end, each once (and l2 past them, unless 0); returns the next one */
static inline const uint8_t *prefetch_until(const uint8_t *pf, const uint8_t *end, int64_t l2) {
    while (pf < end + PREFETCH) {
        __builtin_prefetch(pf, 0, 3);      /* (gcc 12 dropped _mm_prefetch here) */
        if (l2)
            __builtin_prefetch(pf + l2, 0, 1);
        pf += 64;
    }
    return pf;
}
/* slice idx of nslices of the size bytes at blk, PREFETCH ahead: a big block's lines asked
 * for a few at a time through it, not all at its start */
static inline void prefetch_slice(const void *blk, int64_t size, int idx, int nslices, int64_t l2) {
    int64_t step = ((size + nslices - 1) / nslices + 63) / 64 * 64, lo = idx * step;
    if (lo < size)
        prefetch_until((const uint8_t *)blk + lo + PREFETCH, (const uint8_t *)blk + (lo + step < size ? lo + step : size),
                       l2);
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
#include "x86_iq.h"   /* one-row kernels of the i-quants and TQ2_0 */

/* ---- bf16 weights against f32 activations: one row (bf16 matrices are not interleaved) ---- */
/* Per 16 floats one fma per element into 16 lanes (one register at 512 bits, two at 256), 4 chains,
 * then the same additions in the same order at both widths: the same bits (tests/test_isa.py) */
#define V16 (16 / VF_LANES)
static inline void fma16_bf16(vf *a, const ggml_bf16_t *x, const float *y) {
    for (int v = 0; v < V16; v++)
        a[v] = vf_fma(vf_load_bf16(x + VF_LANES * v), vf_load(y + VF_LANES * v), a[v]);
}
static void vec_dot_bf16(int n, float *s, const void *vx, const void *vy) {
    const ggml_bf16_t *x = vx;
    const float *y = vy;
    vf a[4][V16], t[V16];
    int i = 0;
    float acc;
    for (int c = 0; c < 4; c++)
        for (int v = 0; v < V16; v++)
            a[c][v] = vf_zero();
    for (; i + 64 <= n; i += 64)
        for (int c = 0; c < 4; c++)
            fma16_bf16(a[c], x + i + 16 * c, y + i + 16 * c);
    for (; i + 16 <= n; i += 16)
        fma16_bf16(a[0], x + i, y + i);
    for (int v = 0; v < V16; v++)
        t[v] = vf_add(vf_add(a[0][v], a[1][v]), vf_add(a[2][v], a[3][v]));
#if GR_WIDTH == 512
    acc = vf_hsum(t[0]);                 /* hsum8 of its two halves' sum */
#else
    acc = hsum8(vf_add(t[0], t[1]));
#endif
    for (; i < n; i++) {
        uint32_t bits = (uint32_t)x[i] << 16;
        float w;
        memcpy(&w, &bits, 4);
        acc += w * y[i];
    }
    *s = acc;
}

/* ---- the q8_1 activation quantizer ------------------------------------------------------ */
/* roundf, 8 at a time: truncate, then step away from zero where the dropped part is >= 0.5
 * (v - trunc(v) is exact); _mm256_round_ps's nearest mode would round ties to even */
static inline __m256 round_half_away(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 far = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(v, t)), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    return _mm256_add_ps(t, _mm256_and_ps(far, _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0f))));
}

/* the bytes of _quants.quantize_row_q8_1 (tests/test_isa.py): d = amax / 127, q = roundf(x * (1 / d)),
 * s = d * sum(q) */
static void quantize_row_q8_1(const float *x, void *vy, int64_t k) {
    block_q8_1 *y = (block_q8_1 *)vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < k / QK8_1; i++) {
        __m256 v[4], m;
        __m256i q[4], p, qsum;
        __m128 h;
        __m128i s4;
        float amax, d, id;
        for (int j = 0; j < 4; j++)
            v[j] = _mm256_loadu_ps(x + i * QK8_1 + 8 * j);
        m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                          _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
        h = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        amax = _mm_cvtss_f32(h);
        d = amax / 127.0f;
        id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = d;
        for (int j = 0; j < 4; j++)
            q[j] = _mm256_cvttps_epi32(round_half_away(_mm256_mul_ps(v[j], _mm256_set1_ps(id))));
        qsum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        /* i32 -> i8: the two packs interleave the 128-bit lanes; the permute restores the order */
        p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y[i].qs, p);
        s4 = _mm_add_epi32(_mm256_extracti128_si256(qsum, 1), _mm256_castsi256_si128(qsum));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
        y[i].s = d * (float)_mm_cvtsi128_si32(s4);
    }
}

/* ---- the table (setup.py names it gr_isa_<unit>) ----------------------------------------- */
#define R8(name) {.dot_r8 = dot_r8_##name, .dot_r8_x4 = dot_r8_x4_##name}
const isa_kernels_t GR_UNIT_TABLE = {
    .name = UNIT_NAME,
    .types = {
        [GGML_TYPE_Q4_0] = R8(q4_0),
        [GGML_TYPE_Q4_1] = R8(q4_1),
        [GGML_TYPE_Q5_0] = R8(q5_0),
        [GGML_TYPE_Q5_1] = R8(q5_1),
        [GGML_TYPE_Q8_0] = R8(q8_0),
        [GGML_TYPE_Q2_K] = R8(q2_K),
        [GGML_TYPE_Q3_K] = R8(q3_K),
        [GGML_TYPE_Q4_K] = R8(q4_K),
        [GGML_TYPE_Q5_K] = R8(q5_K),
        [GGML_TYPE_Q6_K] = R8(q6_K),
        [GGML_TYPE_IQ4_NL] = R8(iq4_nl),
        [GGML_TYPE_IQ4_XS] = R8(iq4_xs),
        [GGML_TYPE_BF16] = {.vec_dot = vec_dot_bf16},
        [GGML_TYPE_Q8_1] = {.quantize = quantize_row_q8_1},
        /* ---- i-quants and ternary types (issue 23): one row a call (x86_iq.h) */
        [GGML_TYPE_IQ2_XXS] = {.vec_dot = vec_dot_iq2_xxs_q8_K, .vec_dot_x4 = vec_dot_x4_iq2_xxs_q8_K},
        [GGML_TYPE_IQ2_XS] = {.vec_dot = vec_dot_iq2_xs_q8_K, .vec_dot_x4 = vec_dot_x4_iq2_xs_q8_K},
        [GGML_TYPE_IQ2_S] = {.vec_dot = vec_dot_iq2_s_q8_K, .vec_dot_x4 = vec_dot_x4_iq2_s_q8_K},
        [GGML_TYPE_IQ3_XXS] = {.vec_dot = vec_dot_iq3_xxs_q8_K, .vec_dot_x4 = vec_dot_x4_iq3_xxs_q8_K},
        [GGML_TYPE_IQ3_S] = {.vec_dot = vec_dot_iq3_s_q8_K, .vec_dot_x4 = vec_dot_x4_iq3_s_q8_K},
        [GGML_TYPE_IQ1_S] = {.vec_dot = vec_dot_iq1_s_q8_K},
        [GGML_TYPE_IQ1_M] = {.vec_dot = vec_dot_iq1_m_q8_K},
        [GGML_TYPE_TQ1_0] = {.vec_dot = vec_dot_tq1_0_q8_K},
        [GGML_TYPE_TQ2_0] = {.vec_dot = vec_dot_tq2_0_q8_K},
    },
    .kv_scores = kv_scores,
    .kv_mix = kv_mix,
};
