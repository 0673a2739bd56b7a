/* q8_K dot products of the i-quants but IQ4 and of TQ1_0/TQ2_0 (issue 23), included by x86.c:
 * 256-bit code in all four x86 builds, except the one-token kernels of the five lattice types with
 * signs and IQ1_S's inner step, which the 512-bit build (avx512) takes two groups at a time: there
 * the gain is in AVX-512's masks and VBMI (sign bits worked out in vectors, one masked subtract per
 * 64 weights), not in wider arithmetic, which Zen 4 runs as two 256-bit halves. These types are
 * not interleaved 8 rows at a time: one weight row per call, with 1 token (vec_dot) or, for the
 * five lattice types with signs, 4 tokens sharing each gathered group (vec_dot_x4: prompts).
 *
 * Each block's integer sum is exact and the float steps after it are the generic unit's
 * (generic_iq.h) in its order, so every x86 unit gives the generic unit's bits for these types.
 * The signs go onto the lattice values (at most 62, so negating them stays in int8), and the
 * product is |q8| x (signed grid with q8's sign): q8_K can hold -128, which a negated q8 could not.
 * Pair sums stay within i16: 2 x 128 x 62 = 15872. */
#include <stddef.h>
#include "iq_grids.h"

static inline uint64_t iq_row8(const uint8_t *row) {
    uint64_t v;
    memcpy(&v, row, 8);
    return v;
}

static inline uint32_t iq_row4(const uint8_t *row) {
    uint32_t v;
    memcpy(&v, row, 4);
    return v;
}

/* the same sum as a float (cvtdq2ps rounds as (float) does), kept in a vector register: no trip
 * through a general register and back */
static inline float iq_hsum_i32_f(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_extracti128_si256(v, 1), _mm256_castsi256_si128(v));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtss_f32(_mm_cvtepi32_ps(s));
}

static inline int iq_hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_extracti128_si256(v, 1), _mm256_castsi256_si128(v));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* One 32-weight group g of a block: its lattice values with their signs (int8: at most 62, so a
 * negated value stays in range) and its odd scale for weights 0..15 and 16..31 (i16 lanes). Built
 * once per group and shared by the tokens of a call (the gathering is most of the cost). */
typedef struct { __m256i gs, sc; } iq_group;

/* 32 lattice values and the 4 sign bytes of their weights (byte l: bit j set, weight 8l + j
 * negative), as one signs4 word -> the values with their signs */
static inline __m256i iq_signed(__m256i grid, uint32_t signs4) {
    const __m256i spread = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0);
    const __m256i bits = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i s = _mm256_shuffle_epi8(_mm256_set1_epi32((int)signs4), spread);
    __m256i neg = _mm256_cmpeq_epi8(_mm256_and_si256(s, bits), bits);
    return _mm256_sign_epi8(grid, _mm256_or_si256(neg, _mm256_set1_epi8(1)));
}

/* a group times 32 q8 values, each 16 times its scale, in 8 i32 lanes */
static inline __m256i iq_mul(iq_group q, const int8_t *q8) {
    __m256i y = _mm256_loadu_si256((const __m256i *)q8);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(y), _mm256_sign_epi8(q.gs, y)), q.sc);
}

static inline uint32_t iq_ksigns4(uint32_t w) {     /* 4 x 7 stored sign bits -> 4 sign bytes */
    return gr_ksigns_iq2xs[w & 127] | (uint32_t)gr_ksigns_iq2xs[(w >> 7) & 127] << 8 |
           (uint32_t)gr_ksigns_iq2xs[(w >> 14) & 127] << 16 | (uint32_t)gr_ksigns_iq2xs[(w >> 21) & 127] << 24;
}

static inline __m256i iq_scales16(int lo, int hi) {  /* weights 0..15 times lo, 16..31 times hi */
    return _mm256_set_m128i(_mm_set1_epi16((short)hi), _mm_set1_epi16((short)lo));
}

static inline iq_group iq2_xxs_group(const void *vx, int g) {
    const block_iq2_xxs *x = vx;
    uint32_t w0 = x->qs[4 * g] | (uint32_t)x->qs[4 * g + 1] << 16, w1 = x->qs[4 * g + 2] | (uint32_t)x->qs[4 * g + 3] << 16;
    __m256i grid = _mm256_set_epi64x((long long)iq_row8(gr_iq2xxs_grid[w0 >> 24]),
                                     (long long)iq_row8(gr_iq2xxs_grid[(w0 >> 16) & 255]),
                                     (long long)iq_row8(gr_iq2xxs_grid[(w0 >> 8) & 255]),
                                     (long long)iq_row8(gr_iq2xxs_grid[w0 & 255]));
    int ls = 2 * (int)(w1 >> 28) + 1;
    return (iq_group){iq_signed(grid, iq_ksigns4(w1)), iq_scales16(ls, ls)};
}

static inline iq_group iq2_xs_group(const void *vx, int g) {
    const block_iq2_xs *x = vx;
    const uint16_t *q = x->qs + 4 * g;
    __m256i grid = _mm256_set_epi64x((long long)iq_row8(gr_iq2xs_grid[q[3] & 511]),
                                     (long long)iq_row8(gr_iq2xs_grid[q[2] & 511]),
                                     (long long)iq_row8(gr_iq2xs_grid[q[1] & 511]),
                                     (long long)iq_row8(gr_iq2xs_grid[q[0] & 511]));
    uint32_t signs = gr_ksigns_iq2xs[q[0] >> 9] | (uint32_t)gr_ksigns_iq2xs[q[1] >> 9] << 8 |
                     (uint32_t)gr_ksigns_iq2xs[q[2] >> 9] << 16 | (uint32_t)gr_ksigns_iq2xs[q[3] >> 9] << 24;
    return (iq_group){iq_signed(grid, signs), iq_scales16(2 * (x->scales[g] & 15) + 1, 2 * (x->scales[g] >> 4) + 1)};
}

static inline iq_group iq2_s_group(const void *vx, int g) {
    const block_iq2_s *x = vx;
    const uint8_t *qs = x->qs + 4 * g;
    int qh = x->qh[g];
    __m256i grid = _mm256_set_epi64x((long long)iq_row8(gr_iq2s_grid[qs[3] | (qh << 2 & 0x300)]),
                                     (long long)iq_row8(gr_iq2s_grid[qs[2] | (qh << 4 & 0x300)]),
                                     (long long)iq_row8(gr_iq2s_grid[qs[1] | (qh << 6 & 0x300)]),
                                     (long long)iq_row8(gr_iq2s_grid[qs[0] | (qh << 8 & 0x300)]));
    uint32_t signs;
    memcpy(&signs, x->qs + QK_K / 8 + 4 * g, 4);
    return (iq_group){iq_signed(grid, signs), iq_scales16(2 * (x->scales[g] & 15) + 1, 2 * (x->scales[g] >> 4) + 1)};
}

static inline iq_group iq3_xxs_group(const void *vx, int g) {
    const block_iq3_xxs *x = vx;
    const uint8_t *q = x->qs + 8 * g;
    uint32_t w;
    memcpy(&w, x->qs + QK_K / 4 + 4 * g, 4);
    __m256i grid = _mm256_set_epi32((int)iq_row4(gr_iq3xxs_grid[q[7]]), (int)iq_row4(gr_iq3xxs_grid[q[6]]),
                                    (int)iq_row4(gr_iq3xxs_grid[q[5]]), (int)iq_row4(gr_iq3xxs_grid[q[4]]),
                                    (int)iq_row4(gr_iq3xxs_grid[q[3]]), (int)iq_row4(gr_iq3xxs_grid[q[2]]),
                                    (int)iq_row4(gr_iq3xxs_grid[q[1]]), (int)iq_row4(gr_iq3xxs_grid[q[0]]));
    int ls = 2 * (int)(w >> 28) + 1;
    return (iq_group){iq_signed(grid, iq_ksigns4(w)), iq_scales16(ls, ls)};
}

static inline iq_group iq3_s_group(const void *vx, int g) {
    const block_iq3_s *x = vx;
    const uint8_t *q = x->qs + 8 * g;
    int qh = x->qh[g];
#define IQ3S_ROW(m) (int)iq_row4(gr_iq3s_grid[q[m] | ((qh >> (m)) & 1) << 8])
    __m256i grid = _mm256_set_epi32(IQ3S_ROW(7), IQ3S_ROW(6), IQ3S_ROW(5), IQ3S_ROW(4),
                                    IQ3S_ROW(3), IQ3S_ROW(2), IQ3S_ROW(1), IQ3S_ROW(0));
#undef IQ3S_ROW
    uint32_t signs;
    memcpy(&signs, x->signs + 4 * g, 4);
    int ls = 2 * ((x->scales[g / 2] >> 4 * (g % 2)) & 15) + 1;
    return (iq_group){iq_signed(grid, signs), iq_scales16(ls, ls)};
}

/* s[t * s_stride] = <x, y + t * y_stride bytes> for t < T (1: vec_dot, 4: vec_dot_x4), each token
 * with the generic unit's float steps: per block d * y.d * (exact integer sum), then times factor.
 * Every block here starts with its f16 d (ggml_blocks.h; checked below). */
static inline void iq_dot_body(int n, float *s, int64_t s_stride, const void *vx, const void *vy, int64_t y_stride,
                               int T, size_t bsize, iq_group (*group)(const void *, int), float factor) {
    float sumf[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = 0; i < n / QK_K; i++) {
        const void *blk = (const uint8_t *)vx + i * bsize;
        __m256i acc[4];
        for (int t = 0; t < T; t++)
            acc[t] = _mm256_setzero_si256();
        for (int g = 0; g < 8; g++) {
            iq_group q = group(blk, g);
            for (int t = 0; t < T; t++)
                acc[t] = _mm256_add_epi32(acc[t], iq_mul(q, ((const block_q8_K *)((const char *)vy + t * y_stride) + i)->qs + 32 * g));
        }
        ggml_fp16_t d;
        memcpy(&d, blk, sizeof d);
        for (int t = 0; t < T; t++)
            sumf[t] += _cvtsh_ss(d) * ((const block_q8_K *)((const char *)vy + t * y_stride) + i)->d * iq_hsum_i32(acc[t]);
    }
    for (int t = 0; t < T; t++)
        s[t * s_stride] = factor * sumf[t];
}
_Static_assert(offsetof(block_iq2_xxs, d) == 0 && offsetof(block_iq2_xs, d) == 0 && offsetof(block_iq2_s, d) == 0 &&
               offsetof(block_iq3_xxs, d) == 0 && offsetof(block_iq3_s, d) == 0, "iq_dot_body reads d first");

/* the pair of kernels of one type; factor: the constant of its scales (generic_iq.h) */
#if GR_WIDTH == 512
#define IQ_VEC_DOT(name, factor)          /* vec_dot: the 512-bit body below */
#else
#define IQ_VEC_DOT(name, factor)                                                                                    \
    static void vec_dot_##name##_q8_K(int n, float *s, const void *vx, const void *vy) {                            \
        iq_dot_body(n, s, 0, vx, vy, 0, 1, sizeof(block_##name), name##_group, factor);                             \
    }
#endif
#define IQ_KERNELS(name, factor)                                                                                    \
    IQ_VEC_DOT(name, factor)                                                                                        \
    static void vec_dot_x4_##name##_q8_K(int n, float *s, int64_t s_stride, const void *vx, const void *vy,         \
                                         int64_t y_stride) {                                                        \
        iq_dot_body(n, s, s_stride, vx, vy, y_stride, 4, sizeof(block_##name), name##_group, factor);               \
    }
IQ_KERNELS(iq2_xxs, 0.125f)
IQ_KERNELS(iq2_xs, 0.125f)
IQ_KERNELS(iq2_s, 0.125f)
IQ_KERNELS(iq3_xxs, 0.25f)
IQ_KERNELS(iq3_s, 1.0f)
#undef IQ_KERNELS
#undef IQ_VEC_DOT

/* the indices of IQ_CHUNK blocks are worked out first, into a table on the stack, and read back
 * by the lookups later (read back at once, the narrow loads would wait for the wide stores) */
#define IQ_CHUNK 16

#if GR_WIDTH == 512
/* ---- one token at 512 bits: two groups (64 weights) a step --------------------------------
 * A block's 256 sign bits come out of vectors in a few steps (the 7-bit fields of the XXS and XS
 * types through VBMI: vpmultishiftqb cuts them into bytes, vpermi2b looks all up in the 128-byte
 * gr_ksigns_iq2xs at once) as four 64-bit masks; the product of a pair is then
 * |q8| x (grid, negated where the weight's sign and q8's differ): one kxor and one masked
 * subtract, exact with -128 as above. The scales: one i16 per 8 or 16 weights of the block in a
 * vector, spread over each pair's 32 maddubs lanes by one vpermw. */
static const uint16_t iq_lane16[32] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                       16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};

typedef struct {
    __m512i grid[4];       /* pair p's lattice values, weights 64p..64p + 63 */
    uint64_t neg[4];       /* bit j of neg[p]: weight 64p + j negative */
    __m512i sc;            /* the block's scales, 2 ls + 1, as i16 lanes (see each type) */
} iq_block512;

ALWAYS_INLINE __m512i iq_rows8(const uint8_t (*grid)[8], int k0, int k1, int k2, int k3, int k4, int k5, int k6, int k7) {
    return _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_set_epi64x((long long)iq_row8(grid[k3]), (long long)iq_row8(grid[k2]),
                                                 (long long)iq_row8(grid[k1]), (long long)iq_row8(grid[k0]))),
        _mm256_set_epi64x((long long)iq_row8(grid[k7]), (long long)iq_row8(grid[k6]), (long long)iq_row8(grid[k5]),
                          (long long)iq_row8(grid[k4])), 1);
}

#define IQ_ROW4(m) (int)iq_row4(grid[k[m]])
#define IQ_ROWS16                                                                                                  \
    _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set_epi32(IQ_ROW4(7), IQ_ROW4(6), IQ_ROW4(5), IQ_ROW4(4),      \
                                                               IQ_ROW4(3), IQ_ROW4(2), IQ_ROW4(1), IQ_ROW4(0))),    \
                       _mm256_set_epi32(IQ_ROW4(15), IQ_ROW4(14), IQ_ROW4(13), IQ_ROW4(12), IQ_ROW4(11), IQ_ROW4(10), \
                                        IQ_ROW4(9), IQ_ROW4(8)), 1)
/* 16 rows of 4 bytes, indices k[0..15] (bytes, or i16 worked out beforehand) */
ALWAYS_INLINE __m512i iq_rows16_u8(const uint8_t (*grid)[4], const uint8_t *k) { return IQ_ROWS16; }
ALWAYS_INLINE __m512i iq_rows16_u16(const uint8_t (*grid)[4], const uint16_t *k) { return IQ_ROWS16; }
#undef IQ_ROWS16
#undef IQ_ROW4

/* bytes holding 7-bit sign fields (bit 7 ignored) -> the sign bytes (gr_ksigns_iq2xs) */
static inline __m512i iq_ksigns64(__m512i fields) {
    return _mm512_permutex2var_epi8(_mm512_loadu_si512((const void *)gr_ksigns_iq2xs), fields,
                                    _mm512_loadu_si512((const void *)(gr_ksigns_iq2xs + 64)));
}

/* the 32 sign bytes of a block, weight order, into neg[4] */
static inline void iq_store_neg(uint64_t *neg, __m256i bytes) { _mm256_storeu_si256((__m256i *)neg, bytes); }

/* 4 x 7 sign bits at bit 0 of each 32-bit word (XXS types: one word per group, here in the low
 * half of each qword) -> its 4 sign bytes in that qword's low 4 bytes */
static inline __m256i iq_signs_of_words(__m512i w) {
    /* vpmultishiftqb: bytes 0..3 of each qword the 8 bits from bit 0, 7, 14, 21 */
    return _mm512_cvtepi64_epi32(iq_ksigns64(_mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x150E0700150E0700LL), w)));
}

#define iq2_xxs_prep NULL
#define iq3_xxs_prep NULL
static inline void iq2_xxs_block512(iq_block512 *b, const void *vx, const uint16_t *k) {
    (void)k;
    const block_iq2_xxs *x = vx;
    const uint8_t *q = (const uint8_t *)x->qs;      /* group g: index bytes 8g..8g+3, then word w1 */
    __m512i v = _mm512_loadu_si512((const void *)x->qs);
    iq_store_neg(b->neg, iq_signs_of_words(_mm512_srli_epi64(v, 32)));
    b->sc = _mm512_or_si512(_mm512_slli_epi64(_mm512_srli_epi64(v, 60), 1), _mm512_set1_epi64(1));   /* i16 lane 4g */
    for (int p = 0; p < 4; p++, q += 16)
        b->grid[p] = iq_rows8(gr_iq2xxs_grid, q[0], q[1], q[2], q[3], q[8], q[9], q[10], q[11]);
}

static inline void iq3_xxs_block512(iq_block512 *b, const void *vx, const uint16_t *k) {
    (void)k;
    const block_iq3_xxs *x = vx;
    __m512i w = _mm512_cvtepu32_epi64(_mm256_loadu_si256((const __m256i *)(x->qs + QK_K / 4)));
    iq_store_neg(b->neg, iq_signs_of_words(w));
    b->sc = _mm512_or_si512(_mm512_slli_epi64(_mm512_srli_epi64(w, 28), 1), _mm512_set1_epi64(1));   /* i16 lane 4g */
    for (int p = 0; p < 4; p++)
        b->grid[p] = iq_rows16_u8(gr_iq3xxs_grid, x->qs + 16 * p);
}

/* the 16 scales of IQ2_XS/IQ2_S (scales[g]: low nibble weights 32g..32g+15, high 32g+16..32g+31)
 * as 2 ls + 1 in i16 lanes 2g and 2g + 1 */
static inline __m512i iq_scales_nibbles16(const uint8_t *scales) {
    __m128i v = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)scales));
    __m128i lo = _mm_and_si128(v, _mm_set1_epi16(15)), hi = _mm_srli_epi16(v, 4);
    __m256i ls = _mm256_set_m128i(_mm_unpackhi_epi16(lo, hi), _mm_unpacklo_epi16(lo, hi));
    return _mm512_castsi256_si512(_mm256_or_si256(_mm256_slli_epi16(ls, 1), _mm256_set1_epi16(1)));
}

static inline void iq2_xs_prep(uint16_t *k, const void *vx) {
    const block_iq2_xs *x = vx;
    _mm512_storeu_si512((void *)k, _mm512_and_si512(_mm512_loadu_si512((const void *)x->qs), _mm512_set1_epi16(511)));
}

static inline void iq2_xs_block512(iq_block512 *b, const void *vx, const uint16_t *k) {
    const block_iq2_xs *x = vx;
    __m512i v = _mm512_loadu_si512((const void *)x->qs);
    iq_store_neg(b->neg, _mm512_cvtepi16_epi8(iq_ksigns64(_mm512_srli_epi16(v, 9))));
    b->sc = iq_scales_nibbles16(x->scales);
    for (int p = 0; p < 4; p++)
        b->grid[p] = iq_rows8(gr_iq2xs_grid, k[8 * p], k[8 * p + 1], k[8 * p + 2], k[8 * p + 3], k[8 * p + 4],
                              k[8 * p + 5], k[8 * p + 6], k[8 * p + 7]);
}

/* qs[k] | (qh[k / 4] >> 2 (k % 4) & 3) << 8: qh[k / 4] brought to i16 lane k by vpermw, times
 * 2^(8 - 2 (k % 4)), bits 8, 9 kept */
static inline void iq2_s_prep(uint16_t *k, const void *vx) {
    const block_iq2_s *x = vx;
    const __m512i e = _mm512_loadu_si512((const void *)iq_lane16);
    __m512i q = _mm512_permutexvar_epi16(_mm512_srli_epi16(e, 2),
                                         _mm512_cvtepu8_epi16(_mm256_castsi128_si256(_mm_loadl_epi64((const __m128i *)x->qh))));
    __m512i sh = _mm512_sub_epi16(_mm512_set1_epi16(8), _mm512_slli_epi16(_mm512_and_si512(e, _mm512_set1_epi16(3)), 1));
    __m512i top = _mm512_and_si512(_mm512_sllv_epi16(q, sh), _mm512_set1_epi16(0x300));
    _mm512_storeu_si512((void *)k, _mm512_or_si512(top, _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)x->qs))));
}

static inline void iq2_s_block512(iq_block512 *b, const void *vx, const uint16_t *k) {
    const block_iq2_s *x = vx;
    iq_store_neg(b->neg, _mm256_loadu_si256((const __m256i *)(x->qs + QK_K / 8)));
    b->sc = iq_scales_nibbles16(x->scales);
    for (int p = 0; p < 4; p++)
        b->grid[p] = iq_rows8(gr_iq2s_grid, k[8 * p], k[8 * p + 1], k[8 * p + 2], k[8 * p + 3], k[8 * p + 4],
                              k[8 * p + 5], k[8 * p + 6], k[8 * p + 7]);
}

/* the 9-bit indices qs[k] | (qh[k / 8] >> k % 8 & 1) << 8, 32 at a time in i16 lanes e: qh[k / 8]
 * brought to lane e by vpermw, times 2^(8 - k % 8), bit 8 kept */
static inline void iq3_s_prep(uint16_t *k, const void *vx) {
    const block_iq3_s *x = vx;
    const __m512i e = _mm512_loadu_si512((const void *)iq_lane16);
    const __m512i sh = _mm512_sub_epi16(_mm512_set1_epi16(8), _mm512_and_si512(e, _mm512_set1_epi16(7)));
    const __m512i qh = _mm512_cvtepu8_epi16(_mm256_castsi128_si256(_mm_loadl_epi64((const __m128i *)x->qh)));
    for (int h = 0; h < 2; h++) {
        __m512i q = _mm512_permutexvar_epi16(_mm512_add_epi16(_mm512_srli_epi16(e, 3), _mm512_set1_epi16((short)(4 * h))), qh);
        __m512i top = _mm512_and_si512(_mm512_sllv_epi16(q, sh), _mm512_set1_epi16(256));
        _mm512_storeu_si512((void *)(k + 32 * h),
                            _mm512_or_si512(top, _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(x->qs + 32 * h)))));
    }
}

static inline void iq3_s_block512(iq_block512 *b, const void *vx, const uint16_t *k) {
    const block_iq3_s *x = vx;
    iq_store_neg(b->neg, _mm256_loadu_si256((const __m256i *)x->signs));
    /* scales[g / 2] nibble g % 2: 2 ls + 1 into i16 lane g */
    __m128i v = _mm_cvtepu8_epi16(_mm_cvtsi32_si128((int)load_i32(x->scales)));
    __m128i ls = _mm_unpacklo_epi16(_mm_and_si128(v, _mm_set1_epi16(15)), _mm_srli_epi16(v, 4));
    b->sc = _mm512_castsi128_si512(_mm_or_si128(_mm_slli_epi16(ls, 1), _mm_set1_epi16(1)));
    for (int p = 0; p < 4; p++)
        b->grid[p] = iq_rows16_u16(gr_iq3s_grid, k + 16 * p);
}

/* s = factor * sum over blocks of d * y.d * (exact integer), the generic unit's float steps.
 * prep (NULL: none): the lattice indices a type works out in vectors, for IQ_CHUNK blocks at a time
 * before their lookups (read back at once, the narrow loads would wait for the wide stores).
 * sc_at[p]: the vpermw indices that give pair p's 32 maddubs lanes their scale */
ALWAYS_INLINE void iq_dot512(int n, float *s, const void *vx, const void *vy, size_t bsize,
                             void (*prep)(uint16_t *, const void *),
                             void (*block)(iq_block512 *, const void *, const uint16_t *), const __m512i *sc_at,
                             float factor) {
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    uint16_t idx[IQ_CHUNK][64];
    for (int i = 0; i < n / QK_K; i++) {
        const void *blk = (const uint8_t *)vx + i * bsize;
        if (prep && i % IQ_CHUNK == 0)
            for (int c = i; c < n / QK_K && c < i + IQ_CHUNK; c++)
                prep(idx[c - i], (const uint8_t *)vx + c * bsize);
        iq_block512 b;
        block(&b, blk, idx[i % IQ_CHUNK]);
        __m512i acc = _mm512_setzero_si512();
        for (int p = 0; p < 4; p++) {
            __m512i yv = _mm512_loadu_si512((const void *)(y[i].qs + 64 * p));
            __mmask64 k = _kxor_mask64(_cvtu64_mask64(b.neg[p]), _mm512_movepi8_mask(yv));
            __m512i sg = _mm512_mask_sub_epi8(b.grid[p], k, _mm512_setzero_si512(), b.grid[p]);
            acc = _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(yv), sg),
                                                          _mm512_permutexvar_epi16(sc_at[p], b.sc)));
        }
        ggml_fp16_t d;
        memcpy(&d, blk, sizeof d);
        sumf += _cvtsh_ss(d) * y[i].d * _mm512_reduce_add_epi32(acc);
    }
    *s = factor * sumf;
}

/* vpermw indices: lanes 0..15 take lane a, 16..31 lane b (one scale a group) */
#define IQ_SC2(a, b) _mm512_inserti64x4(_mm512_set1_epi16(a), _mm256_set1_epi16(b), 1)
/* lanes 8q..8q+7 take lane 4p + q (one scale per 16 weights) */
#define IQ_SC4(p) _mm512_set_epi64(IQ_SC4_Q(p, 3), IQ_SC4_Q(p, 3), IQ_SC4_Q(p, 2), IQ_SC4_Q(p, 2), IQ_SC4_Q(p, 1), \
                                   IQ_SC4_Q(p, 1), IQ_SC4_Q(p, 0), IQ_SC4_Q(p, 0))
#define IQ_SC4_Q(p, q) ((4 * (p) + (q)) * 0x0001000100010001LL)

#define IQ_VEC_DOT512(name, factor, at0, at1, at2, at3)                                                           \
    static void vec_dot_##name##_q8_K(int n, float *s, const void *vx, const void *vy) {                          \
        const __m512i sc_at[4] = {at0, at1, at2, at3};                                                             \
        iq_dot512(n, s, vx, vy, sizeof(block_##name), name##_prep, name##_block512, sc_at, factor);                            \
    }
IQ_VEC_DOT512(iq2_xxs, 0.125f, IQ_SC2(0, 4), IQ_SC2(8, 12), IQ_SC2(16, 20), IQ_SC2(24, 28))
IQ_VEC_DOT512(iq3_xxs, 0.25f, IQ_SC2(0, 4), IQ_SC2(8, 12), IQ_SC2(16, 20), IQ_SC2(24, 28))
IQ_VEC_DOT512(iq2_xs, 0.125f, IQ_SC4(0), IQ_SC4(1), IQ_SC4(2), IQ_SC4(3))
IQ_VEC_DOT512(iq2_s, 0.125f, IQ_SC4(0), IQ_SC4(1), IQ_SC4(2), IQ_SC4(3))
IQ_VEC_DOT512(iq3_s, 1.0f, IQ_SC2(0, 1), IQ_SC2(2, 3), IQ_SC2(4, 5), IQ_SC2(6, 7))
#undef IQ_VEC_DOT512
#undef IQ_SC2
#undef IQ_SC4
#undef IQ_SC4_Q
#endif

/* TQ2_0: sum of (t - 1) q8 = sum of t q8 - sum of q8 (the activation's block sums), one block's
 * integer sum spread over 8 i32 lanes. t of step p is bits 2p, 2p + 1 of a byte, taken by a mask
 * alone, unshifted: 4^p t, and the sums of 4^p t q8 are multiples of 4^p, shifted back exactly at
 * the end. The VNNI builds: vpdpbusd straight into i32 lanes, one chain per step p (each 4^p t q8
 * at most 2 x 4 x 192 x 128), the block sums widened by one madd. The avx2 build: pair sums in i16
 * lanes, steps 0 and 2 as t (the byte shifted by 4 for step 2), steps 1 and 3 as 4 t (each chain
 * 4 pair sums of at most 2 x 12 x 128, and the block sums, at most 2048, on the first) */
static inline __m256i tq2_block(const block_tq2_0 *x, const block_q8_K *y) {
#if GR_VNNI
#if GR_WIDTH == 512
#define TQ2_DP(acc, t, q) _mm256_dpbusd_epi32(acc, t, q)
#else
#define TQ2_DP(acc, t, q) dpbusd(acc, t, q)
#endif
    __m256i a[4];
    a[0] = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y->bsums), _mm256_set1_epi16(-1));
    a[1] = a[2] = a[3] = _mm256_setzero_si256();
    for (int c = 0; c < 2; c++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * c));
        for (int p = 0; p < 4; p++)
            a[p] = TQ2_DP(a[p], _mm256_and_si256(v, _mm256_set1_epi8((char)(3 << 2 * p))),
                          _mm256_loadu_si256((const __m256i *)(y->qs + 128 * c + 32 * p)));
    }
#undef TQ2_DP
    return _mm256_add_epi32(_mm256_add_epi32(a[0], _mm256_srai_epi32(a[1], 2)),
                            _mm256_add_epi32(_mm256_srai_epi32(a[2], 4), _mm256_srai_epi32(a[3], 6)));
#else
    const __m256i three = _mm256_set1_epi8(3), twelve = _mm256_set1_epi8(12);
    __m256i s1 = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_loadu_si256((const __m256i *)y->bsums));
    __m256i s4 = _mm256_setzero_si256();
    for (int c = 0; c < 2; c++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * c)), v4 = _mm256_srli_epi16(v, 4);
        const int8_t *q = y->qs + 128 * c;
#define TQ2_MUL(t, at) _mm256_maddubs_epi16(t, _mm256_loadu_si256((const __m256i *)(q + (at))))
        s1 = _mm256_add_epi16(s1, TQ2_MUL(_mm256_and_si256(v, three), 0));
        s4 = _mm256_add_epi16(s4, TQ2_MUL(_mm256_and_si256(v, twelve), 32));
        s1 = _mm256_add_epi16(s1, TQ2_MUL(_mm256_and_si256(v4, three), 64));
        s4 = _mm256_add_epi16(s4, TQ2_MUL(_mm256_and_si256(v4, twelve), 96));
#undef TQ2_MUL
    }
    return _mm256_madd_epi16(_mm256_add_epi16(s1, _mm256_srai_epi16(s4, 2)), _mm256_set1_epi16(1));
#endif
}

/* four blocks' sums of 8 i32 lanes, as floats in lanes 0..3 (the horizontal steps shared) */
static inline __m128 iq_hsum4_f(__m256i a, __m256i b, __m256i c, __m256i d) {
    /* a0123 b0123 c0123 d0123 | a4567 b4567 c4567 d4567 */
    __m256i t = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_cvtepi32_ps(_mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1)));
}

/* four blocks a step (their horizontal sums shared), the float steps the generic unit's, block by
 * block in order */
static void vec_dot_tq2_0_q8_K(int n, float *s, const void *vx, const void *vy) {
    const block_tq2_0 *x = vx;
    const block_q8_K *y = vy;
    const int nb = n / QK_K;
    float sumf = 0.0f, f[4];
    int i = 0;
    for (; i + 3 < nb; i += 4) {
        _mm_storeu_ps(f, iq_hsum4_f(tq2_block(x + i, y + i), tq2_block(x + i + 1, y + i + 1),
                                    tq2_block(x + i + 2, y + i + 2), tq2_block(x + i + 3, y + i + 3)));
        for (int b = 0; b < 4; b++)
            sumf += _cvtsh_ss(x[i + b].d) * y[i + b].d * f[b];
    }
    for (; i < nb; i++)                          /* the last nb % 4 blocks */
        sumf += _cvtsh_ss(x[i].d) * y[i].d * iq_hsum_i32_f(tq2_block(x + i, y + i));
    *s = sumf;
}

/* TQ1_0: sum of (t - 1) q8 = sum of t q8 - sum of q8, as TQ2_0. A byte's digit p (generic_iq.h's
 * tq1_digit) is (uint8_t)(byte * 3^p) * 3 >> 8, that is [x >= 86] + [x >= 171] of x = the byte
 * times 3^p mod 256, worked out by adds that wrap as the uint8_t product does. The bytes are held
 * biased, x ^ 0x80 = x + 128, so that the two tests are signed compares (x + 128 > -43 + 128,
 * > 42 + 128); an odd multiplier keeps the bias, m (x + 128) = m x + 128 mod 256. The compares give
 * 0, -1 or -2, the digit negated. Pair sums add up in i16 lanes: at most 10 x 2 x 2 x 128 = 5120,
 * less the 16 block sums (each at most 2048) */
static inline __m256i tq1_top(__m256i x) {      /* biased x -> (x * 3) >> 8 of each byte: 0, 1 or 2 */
    return _mm256_abs_epi8(_mm256_add_epi8(_mm256_cmpgt_epi8(x, _mm256_set1_epi8(-43)),
                                           _mm256_cmpgt_epi8(x, _mm256_set1_epi8(42))));
}

static inline __m256i tq1_times3(__m256i x) { return _mm256_add_epi8(x, _mm256_add_epi8(x, x)); }
/* x * 9 mod 256 per byte: x * 8 by a 16-bit shift with the bits the low byte pushed into the high
 * one masked off, plus x */
static inline __m256i tq1_times9(__m256i x) {
    return _mm256_add_epi8(_mm256_and_si256(_mm256_slli_epi16(x, 3), _mm256_set1_epi8((char)0xF8)), x);
}
static inline __m256i tq1_dot(__m256i x, const int8_t *q8) {
    return _mm256_maddubs_epi16(tq1_top(x), _mm256_loadu_si256((const __m256i *)q8));
}

static void vec_dot_tq1_0_q8_K(int n, float *s, const void *vx, const void *vy) {
    const block_tq1_0 *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    for (int i = 0; i < n / QK_K; i++) {
        const int8_t *q8 = y[i].qs;
        /* qs[0:32]: digit p of byte m is weight 32p + m; the byte times 1, 3, 9, 27, 81 as a tree */
        const __m256i bias = _mm256_set1_epi8((char)0x80);
        __m256i v0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)x[i].qs), bias), v1 = tq1_times3(v0);
        __m256i v2 = tq1_times9(v0);
        __m256i v3 = tq1_times9(v1), v4 = tq1_times9(v2);
        /* qs[32:48]: digit p of byte m is weight 160 + 16p + m, two digits a register (p, p + 1) */
        __m128i b0 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(x[i].qs + 32)), _mm256_castsi256_si128(bias));
        __m256i w01 = _mm256_set_m128i(_mm_add_epi8(b0, _mm_add_epi8(b0, b0)), b0), w23 = tq1_times9(w01);
        /* digit 4 of qs[32:48] (weights 224..239) and the 4 digits of qh[0:4] (weight 240 + 4p + m:
         * qh[m] times 1, 3, 9, 27 in dword p) */
        __m256i h0 = _mm256_xor_si256(_mm256_set1_epi32((int)load_i32(x[i].qh)), bias), h1 = tq1_times3(h0);
        __m256i h = _mm256_blend_epi32(_mm256_blend_epi32(h0, h1, 0x22), tq1_times9(_mm256_blend_epi32(h0, h1, 0x88)), 0xCC);
        __m256i w4h = _mm256_set_m128i(_mm256_castsi256_si128(h), _mm256_castsi256_si128(tq1_times9(w23)));
#if GR_VNNI
        /* vpdpbusd straight into i32 lanes, two chains; the block sums widened by one madd */
#if GR_WIDTH == 512
#define TQ1_DP(acc, x, q) _mm256_dpbusd_epi32(acc, tq1_top(x), _mm256_loadu_si256((const __m256i *)(q)))
#else
#define TQ1_DP(acc, x, q) dpbusd(acc, tq1_top(x), _mm256_loadu_si256((const __m256i *)(q)))
#endif
        __m256i a0 = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y[i].bsums), _mm256_set1_epi16(-1));
        __m256i a1 = TQ1_DP(_mm256_setzero_si256(), v0, q8);
        a0 = TQ1_DP(a0, v1, q8 + 32);
        a1 = TQ1_DP(a1, v2, q8 + 64);
        a0 = TQ1_DP(a0, v3, q8 + 96);
        a1 = TQ1_DP(a1, v4, q8 + 128);
        a0 = TQ1_DP(a0, w01, q8 + 160);
        a1 = TQ1_DP(a1, w23, q8 + 192);
        a0 = TQ1_DP(a0, w4h, q8 + 224);
#undef TQ1_DP
        sumf += _cvtsh_ss(x[i].d) * y[i].d * iq_hsum_i32(_mm256_add_epi32(a0, a1));
#else
        __m256i s0 = _mm256_add_epi16(tq1_dot(v0, q8), tq1_dot(v1, q8 + 32));
        __m256i s1 = _mm256_add_epi16(tq1_dot(v2, q8 + 64), tq1_dot(v3, q8 + 96));
        __m256i s2 = _mm256_add_epi16(tq1_dot(v4, q8 + 128), tq1_dot(w01, q8 + 160));
        __m256i s3 = _mm256_sub_epi16(_mm256_add_epi16(tq1_dot(w23, q8 + 192), tq1_dot(w4h, q8 + 224)),
                                      _mm256_loadu_si256((const __m256i *)y[i].bsums));
        __m256i s16 = _mm256_add_epi16(_mm256_add_epi16(s0, s1), _mm256_add_epi16(s2, s3));
        sumf += _cvtsh_ss(x[i].d) * y[i].d * iq_hsum_i32(_mm256_madd_epi16(s16, _mm256_set1_epi16(1)));
#endif
    }
    *s = sumf;
}

/* IQ1_S / IQ1_M: the lattice values are -1, 0, 1; both multiply a u8 made of grid + 1 (0, 1, 2)
 * with q8 as it is (-128 included) and take the offsets out through the activation's block sums,
 * into the same integer as generic_iq.h's, 8 x grid sum + offset sum */

/* the 16 lattice indices qs[k] | (qh[k / 4] >> 3 (k % 4) & 7) << 8 of 4 groups, i16 lane k (qh[k / 4]
 * times 256, 32, 4 or, for k % 4 = 3, shifted right once, masked to bits 8..10) */
static inline __m256i iq1s_indices16(const uint8_t *qs, const uint16_t *qh) {
    __m256i q = _mm256_broadcastsi128_si256(_mm_loadl_epi64((const __m128i *)qh));
    q = _mm256_shuffle_epi8(q, _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3,
                                                4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7));
    __m256i top = _mm256_blend_epi16(_mm256_mullo_epi16(q, _mm256_set1_epi64x(0x0001000400200100LL)),
                                     _mm256_srli_epi16(q, 1), 0x88);
    return _mm256_or_si256(_mm256_and_si256(top, _mm256_set1_epi16(0x700)),
                           _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)qs)));
}

/* 4 lattice rows of 8 bytes, each a load (the indices come from memory: one load each, not a
 * shift and a move out of a register) */
static inline __m256i iq_rows4(const uint8_t (*grid)[8], const uint16_t *k) {
    return _mm256_set_epi64x((long long)iq_row8(grid[k[3]]), (long long)iq_row8(grid[k[2]]),
                             (long long)iq_row8(grid[k[1]]), (long long)iq_row8(grid[k[0]]));
}

/* IQ1_S without a sign step: grid + 1 is 0, 1 or 2, a u8 that multiplies q8 (-128 included) as
 * it is, and sum (grid + 1) q8 = sum grid q8 + S (S: the group's 32 q8 values, from the block sums).
 * So a block's integer 8 x grid sum + offset sum is, with M_g = sum (grid + 1) q8 of group g,
 *   sum_g 8 ls_g M_g + sum_g ls_g (sgn_g - 8) S_g,
 * the first part from maddubs and a madd with 8 ls_g, the second one madd of the block sums with
 * ls_g (sgn_g - 8) (both halves of group g's pair): i32 lanes, at most 8 x 122880 + 16 x 276480.
 * No branch on a sign (random signs mispredict half the time). Two groups a step. */
static void vec_dot_iq1_s_q8_K(int n, float *s, const void *vx, const void *vy) {
    const block_iq1_s *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    uint16_t idx[IQ_CHUNK][32];
    for (int i = 0; i < n / QK_K; i++) {
        const uint16_t *k = idx[i % IQ_CHUNK];
        if (i % IQ_CHUNK == 0)
            for (int c = i; c < n / QK_K && c < i + IQ_CHUNK; c++) {
                _mm256_storeu_si256((__m256i *)idx[c - i], iq1s_indices16(x[c].qs, x[c].qh));
                _mm256_storeu_si256((__m256i *)(idx[c - i] + 16), iq1s_indices16(x[c].qs + 16, x[c].qh + 4));
            }
        /* per group (i16 lane g): ls = 2 * (qh >> 12 & 7) + 1, then 8 ls and ls (sgn - 8) */
        __m128i qh = _mm_loadu_si128((const __m128i *)x[i].qh);
        __m128i ls = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(qh, 11), _mm_set1_epi16(14)), _mm_set1_epi16(1));
        __m128i off = _mm_mullo_epi16(ls, _mm_add_epi16(_mm_set1_epi16(-7), _mm_slli_epi16(_mm_srai_epi16(qh, 15), 1)));
        __m256i acc = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y[i].bsums),
                                        _mm256_set_m128i(_mm_unpackhi_epi16(off, off), _mm_unpacklo_epi16(off, off)));
        int16_t ls8[8];
        _mm_storeu_si128((__m128i *)ls8, _mm_slli_epi16(ls, 3));
#if GR_WIDTH == 512
        __m512i acc2 = _mm512_zextsi256_si512(acc);
        for (int g = 0; g < 8; g += 2) {
            __m512i grid = _mm512_inserti64x4(_mm512_castsi256_si512(iq_rows4((const uint8_t (*)[8])gr_iq1s_grid, k + 4 * g)),
                                              iq_rows4((const uint8_t (*)[8])gr_iq1s_grid, k + 4 * g + 4), 1);
            __m512i sc = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(ls8[g])),
                                            _mm256_set1_epi16(ls8[g + 1]), 1);
            __m512i p = _mm512_maddubs_epi16(_mm512_add_epi8(grid, _mm512_set1_epi8(1)),
                                             _mm512_loadu_si512((const void *)(y[i].qs + 32 * g)));
            acc2 = _mm512_add_epi32(acc2, _mm512_madd_epi16(p, sc));
        }
        acc = _mm256_add_epi32(_mm512_castsi512_si256(acc2), _mm512_extracti64x4_epi64(acc2, 1));
#else
        const __m256i one8 = _mm256_set1_epi8(1);
        for (int g = 0; g < 8; g += 2) {
            __m256i p0 = _mm256_maddubs_epi16(_mm256_add_epi8(iq_rows4((const uint8_t (*)[8])gr_iq1s_grid, k + 4 * g), one8),
                                              _mm256_loadu_si256((const __m256i *)(y[i].qs + 32 * g)));
            __m256i p1 = _mm256_maddubs_epi16(_mm256_add_epi8(iq_rows4((const uint8_t (*)[8])gr_iq1s_grid, k + 4 * g + 4), one8),
                                              _mm256_loadu_si256((const __m256i *)(y[i].qs + 32 * g + 32)));
            acc = _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(p0, _mm256_set1_epi16(ls8[g])),
                                                         _mm256_madd_epi16(p1, _mm256_set1_epi16(ls8[g + 1]))));
        }
#endif
        sumf += _cvtsh_ss(x[i].d) * y[i].d * iq_hsum_i32(acc);
    }
    *s = IQ1S_DELTA * sumf;
}

/* IQ1_M without a sign step: per weight 8 grid + delta (delta +-1 per 8 weights), the integer
 * generic_iq.h sums with the odd scale sc_j = 2 ls_j + 1 of its 16 weights, is u - 16 with
 * u = 8 (grid + 1) + 8 + delta in 7..25, a u8 that multiplies q8 (-128 included) as it is. So a
 * block's 8 x grid sum + offset sum is
 *   sum_j sc_j (sum of u q8 over 16j..16j+15) - 16 sum_j sc_j S_j     (S_j: the block sums),
 * u from the grid row and its delta bit in one byte lookup: index grid + 1 (0, 1, 2), or 4 more
 * where the delta is -1 (pshufb), or, on the units with AVX-512 VBMI, grid xor 0x10 where the
 * delta is -1 (a masked xor per 8 bytes, then vpermb, which reads 5 bits of the index: -1 is 31).
 * Pair sums at most 2 x 25 x 128 = 6400 (i16), times sc_j <= 15; i32 lanes at most 8 x 192000 +
 * 983040. No branch on a delta sign. */

/* the 16 lattice indices qs[r] | (qh[r / 2] >> 4 (r % 2) & 7) << 8 of rows 16k..16k+15 (qs, qh at
 * the rows' bytes): i16 lane r holds qh[r / 2], times 256 (r even) or 16 (odd), masked to bits 8..10 */
static inline __m256i iq1m_indices16(const uint8_t *qs, const uint8_t *qh) {
    __m256i q = _mm256_broadcastsi128_si256(_mm_loadl_epi64((const __m128i *)qh));
    q = _mm256_shuffle_epi8(q, _mm256_setr_epi8(0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1,
                                                4, -1, 4, -1, 5, -1, 5, -1, 6, -1, 6, -1, 7, -1, 7, -1));
    __m256i top = _mm256_mullo_epi16(q, _mm256_set1_epi32(0x00100100));
    return _mm256_or_si256(_mm256_and_si256(top, _mm256_set1_epi16(0x700)),
                           _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)qs)));
}

/* a block's 16 scales sc_j = 2 ls_j + 1 (weights 16j..16j+15), i16 lane j: ls_j is bits 3 (j % 4)..+2 of
 * word j / 4 (gr_iq1m_words' words; their top nibbles are d), brought to bits 9..11 by one mullo */
static inline __m256i iq1m_scales16(const uint8_t *scales) {
    __m256i w = _mm256_broadcastsi128_si256(_mm_loadl_epi64((const __m128i *)scales));
    w = _mm256_shuffle_epi8(w, _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3,
                                                4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7));
    w = _mm256_mullo_epi16(w, _mm256_set1_epi64x(0x0001000800400200LL));
    return _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(w, 8), _mm256_set1_epi16(14)), _mm256_set1_epi16(1));
}

/* 4 lattice rows of 8 bytes, their indices read as one 64-bit word (3 loads fewer than iq_rows4) */
static inline __m256i iq_rows4w(const uint8_t (*grid)[8], const uint16_t *k) {
    uint64_t w;
    memcpy(&w, k, 8);
    return _mm256_set_epi64x((long long)iq_row8(grid[w >> 48]), (long long)iq_row8(grid[(w >> 32) & 0xFFFF]),
                             (long long)iq_row8(grid[(w >> 16) & 0xFFFF]), (long long)iq_row8(grid[w & 0xFFFF]));
}

/* One group (4 rows, 32 weights) a step at 256 bits in every unit: at 512 bits the two halves' insert
 * costs a shuffle, and the shuffle unit is what the lattice rows' assembly keeps busy */
static void vec_dot_iq1_m_q8_K(int n, float *s, const void *vx, const void *vy) {
    const block_iq1_m *x = vx;
    const block_q8_K *y = vy;
    float sumf = 0.0f;
    uint16_t idx[IQ_CHUNK][32];
#if defined(__AVX512VBMI__) && defined(__AVX512VL__)
    /* u by (grid ^ 0x10 where the delta is -1) & 31 (vpermb's index bits): 31, 0, 1 -> 9, 17, 25;
     * 15, 16, 17 -> 7, 15, 23 */
    static const uint8_t u_of[32] = {[31] = 9, [0] = 17, [1] = 25, [15] = 7, [16] = 15, [17] = 23};
    const __m256i u_tab = _mm256_loadu_si256((const __m256i *)u_of), flip = _mm256_set1_epi8(0x10);
#else
    /* u by grid + 1 (+ 4 where the delta is -1): 0, 1, 2 -> 9, 17, 25; 4, 5, 6 -> 7, 15, 23 */
    const __m256i u_tab = _mm256_setr_epi8(9, 17, 25, 0, 7, 15, 23, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                           9, 17, 25, 0, 7, 15, 23, 0, 0, 0, 0, 0, 0, 0, 0, 0);
#endif
    for (int i = 0; i < n / QK_K; i++) {
        const uint16_t *k = idx[i % IQ_CHUNK];
        if (i % IQ_CHUNK == 0)
            for (int c = i; c < n / QK_K && c < i + IQ_CHUNK; c++) {
                _mm256_storeu_si256((__m256i *)idx[c - i], iq1m_indices16(x[c].qs, x[c].qh));
                _mm256_storeu_si256((__m256i *)(idx[c - i] + 16), iq1m_indices16(x[c].qs + 16, x[c].qh + 8));
            }
        uint16_t w[4];
        ggml_fp16_t d = gr_iq1m_words(x[i].scales, w);
        const __m256i sc = iq1m_scales16(x[i].scales);
        /* less 16 sc_j S_j */
        __m256i acc = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y[i].bsums),
                                        _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc, 4)));
        /* the delta bits: bit 3 of qh[m] (row 2m), bit 7 (row 2m + 1) */
        const __m128i qh = _mm_loadu_si128((const __m128i *)x[i].qh);
#if defined(__AVX512VBMI__) && defined(__AVX512VL__)
        /* as bit r of dm (row r) */
        const __m128i qh4 = _mm_slli_epi16(qh, 4);
        const uint32_t dm = (uint32_t)_mm_movemask_epi8(_mm_unpacklo_epi8(qh4, qh)) |
                            (uint32_t)_mm_movemask_epi8(_mm_unpackhi_epi8(qh4, qh)) << 16;
#else
        /* as byte r of the rows' index offsets: 1, or 5 where the delta is -1 */
        const __m128i a = _mm_and_si128(_mm_srli_epi16(qh, 1), _mm_set1_epi8(4));
        const __m128i b = _mm_and_si128(_mm_srli_epi16(qh, 5), _mm_set1_epi8(4));
        const __m256i one8 = _mm256_set1_epi8(1);
        const __m256i off_lo = _mm256_or_si256(_mm256_broadcastsi128_si256(_mm_unpacklo_epi8(a, b)), one8);
        const __m256i off_hi = _mm256_or_si256(_mm256_broadcastsi128_si256(_mm_unpackhi_epi8(a, b)), one8);
#endif
        /* group g's scales: i32 lanes of pairs sc_j sc_j; lo: j = 0..3 | 8..11, hi: 4..7 | 12..15 */
        const __m256i sc_lo = _mm256_unpacklo_epi16(sc, sc), sc_hi = _mm256_unpackhi_epi16(sc, sc);
#pragma GCC unroll 8   /* the shuffle indices below are constants once unrolled */
        for (int g = 0; g < 8; g++) {
            __m256i grid = iq_rows4w((const uint8_t (*)[8])gr_iq1s_grid, k + 4 * g);
#if defined(__AVX512VBMI__) && defined(__AVX512VL__)
            __m256i ix = _mm256_mask_xor_epi64(grid, _cvtu32_mask8((dm >> 4 * g) & 15), grid, flip);
            __m256i u = _mm256_permutexvar_epi8(ix, u_tab);
#else
            /* rows 4g..4g+3: bytes 4 (g % 4).. of off_lo (g < 4) or off_hi, one a qword */
            const long long r = 4 * (g % 4), b8 = 0x0101010101010101LL;
            __m256i off = _mm256_shuffle_epi8(g < 4 ? off_lo : off_hi,
                                              _mm256_set_epi64x(b8 * (r + 3), b8 * (r + 2), b8 * (r + 1), b8 * r));
            __m256i u = _mm256_shuffle_epi8(u_tab, _mm256_add_epi8(grid, off));
#endif
            /* scales 2g (i32 lanes 0..3) and 2g + 1 (4..7): lanes 2 (g % 2) + 4 (g / 4) and one more */
            const int e = 2 * (g % 2) + 4 * (g / 4);
            __m256i scg = _mm256_permutevar8x32_epi32((g / 2) % 2 ? sc_hi : sc_lo,
                                                      _mm256_setr_epi32(e, e, e, e, e + 1, e + 1, e + 1, e + 1));
            __m256i pr = _mm256_maddubs_epi16(u, _mm256_loadu_si256((const __m256i *)(y[i].qs + 32 * g)));
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
            acc = _mm256_dpwssd_epi32(acc, pr, scg);
#else
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pr, scg));
#endif
        }
        sumf += _cvtsh_ss(d) * y[i].d * iq_hsum_i32_f(acc);
    }
    *s = IQ1M_DELTA * sumf;
}
