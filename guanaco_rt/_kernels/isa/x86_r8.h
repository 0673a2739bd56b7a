/* The 8-row kernels of the x86 unit (x86.c includes this after its vector layer): dot_r8 and
 * dot_r8_x4 of every weight type, each type's one body instantiated per token count (1, 4) and,
 * through the vector layer, per width. See x86.c for what the layer gives. */
/* the token counts whose kernels prefetch the weights ahead: 1 and 4. A batch of sequences
 * decoding together (a batcher's pass of 4-8 rows) streams the weights as one token does, and
 * without it waited on memory: 7B q4_K_M, 4 rows a pass in 310 ms against 100 for one */
#define R8_PREFETCH_T 4
/* ---- 8-row kernels: the float steps, shared by every type and both widths ------------- */
/* acc + (d8 * dy) * v: a block's 8 rows of integer sums into a float accumulator */
static inline __m256 r8_scaled(__m256 d8, float dy, __m256i v, __m256 acc) {
    return _mm256_fmadd_ps(_mm256_mul_ps(d8, _mm256_set1_ps(dy)), _mm256_cvtepi32_ps(v), acc);
}
static inline __m256 f16x8(const ggml_fp16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
#define Y_ROW(T, vy, y_stride, t) ((const T *)((const uint8_t *)(vy) + (t) * (y_stride)))
/* a and b as the two i16 of one i32 (a low), for a madd against i16 pairs */
static inline int32_t i16_pair(int a, int b) { return (int32_t)((uint32_t)(a & 0xFFFF) | ((uint32_t)b << 16)); }

/* q4_0, q4_1, q5_0, q5_1 (block_q4_0x8 ... block_q5_1x8), T tokens: x = d * q + m with q unsigned
 * (4 bits, or 5 with has_qh), m = -8 d for q4_0, -16 d for q5_0. acc: d * dy * sum(q y) per block;
 * accm, its own chain: m * s (q8_1's s = dy * sum(y)); s = acc + accm. The pair sums stay
 * within i16: 2 * 31 * 127 */
/* per step k (0..3) of q5's 5th bits, lane r (the step's 8 rows, all alike): the 4 bits of the row's
 * qh word (shifted by 8 * (k / 2)) that step k's bytes need, and the multiplier taking bit i of
 * them to bit 4 of byte i (bit i lands at i + 7j + 4 for each j: only j = i hits a bit 4, no two
 * terms overlap, so no carries). Loaded with vi_load_w, as the weights are: each lane gets its step's */
#define Q5_ROW(v) v, v, v, v, v, v, v, v
static const uint32_t q5_mask[4 * 8] = {Q5_ROW(0x0Fu), Q5_ROW(0xF0u), Q5_ROW(0x0Fu), Q5_ROW(0xF0u)};
static const uint32_t q5_mul[4 * 8] = {Q5_ROW(0x02040810u), Q5_ROW(0x00204081u), Q5_ROW(0x02040810u),
                                       Q5_ROW(0x00204081u)};
/* the 5th bits (0x10) of step k's weights: low nibbles' (weights 4k + j: qh bits 4k + j) or high
 * nibbles' (16 + 4k + j) */
static inline vi q5_bits(__m256i qh, int k, int high) {
    vi h = rows_wide(_mm256_srli_epi32(qh, 16 * high + 8 * (k / 2)));
    return vi_and(vi_mullo(vi_and(h, vi_load_w(q5_mask + 8 * k)), vi_load_w(q5_mul + 8 * k)), vi_set1_8(0x10));
}

/* accm + m * s for one block of 8 rows: m their minimums (q4_1, q5_1), or -8 d (q4_0), -16 d (q5_0) */
ALWAYS_INLINE __m256 r8_min_term(const uint8_t *blk, int has_m, int has_qh, float s, __m256 accm) {
    const __m256 m8 = has_m ? f16x8((const ggml_fp16_t *)blk + 8)
                            : _mm256_mul_ps(f16x8((const ggml_fp16_t *)blk), _mm256_set1_ps(has_qh ? -16.0f : -8.0f));
    return _mm256_fmadd_ps(m8, _mm256_set1_ps(s), accm);
}

ALWAYS_INLINE void r8_q4(int T, int has_m, int has_qh, int n, float *s, int64_t s_stride, const void *vx,
                         const void *vy, int64_t y_stride) {
    const int64_t x_size = has_qh ? (has_m ? sizeof(block_q5_1x8) : sizeof(block_q5_0x8))
                                  : (has_m ? sizeof(block_q4_1x8) : sizeof(block_q4_0x8));
    const int64_t qs_off = (has_m ? 32 : 16) + (has_qh ? 32 : 0);    /* qh (if any) right before qs */
    const int64_t l2 = l2_ahead(T, x_size * (n / QK8_1));
    const block_q8_1 *y[4];
    __m256 acc[4], accm[4];
    const vi m4 = vi_set1_8(0x0F);
    const uint8_t *pf = (const uint8_t *)vx + PREFETCH;
    for (int t = 0; t < T; t++) {
        y[t] = Y_ROW(block_q8_1, vy, y_stride, t);
        acc[t] = accm[t] = _mm256_setzero_ps();
    }
    for (int i = 0; i < n / QK8_1; i++) {
        const uint8_t *blk = (const uint8_t *)vx + i * x_size, *qs = blk + qs_off;
        const __m256i qh = has_qh ? _mm256_loadu_si256((const __m256i *)(qs - 32)) : _mm256_setzero_si256();
        vi sum[4];              /* per token: low nibbles (weights 4k+j) and high (16+4k+j) */
        __m256 d8;
        if (T <= R8_PREFETCH_T)
            pf = prefetch_until(pf, blk + x_size, l2);
        for (int t = 0; t < T; t++)
            sum[t] = vi_zero();
        UNROLL
        for (int k = 0; k < 4; k += STEPS) {
            vi p = vi_load_w(qs + 32 * k), pl = vi_and(p, m4), ph = vi_and(vi_srli16(p, 4), m4);
            if (has_qh) {
                pl = vi_or(pl, q5_bits(qh, k, 0));
                ph = vi_or(ph, q5_bits(qh, k, 1));
            }
            for (int t = 0; t < T; t++) {     /* 4 bits: 8 steps in i16 (SMALL_STEPS(15)); 5: i32 */
                const vi yl = bcast_step(y[t][i].qs + 4 * k), yh = bcast_step(y[t][i].qs + 16 + 4 * k);
                sum[t] = has_qh ? dpbusd(dpbusd(sum[t], pl, yl), ph, yh) : dp_small(dp_small(sum[t], pl, yl), ph, yh);
            }
        }
        if (!has_qh)
            for (int t = 0; t < T; t++)
                sum[t] = small_i32(sum[t]);
        d8 = f16x8((const ggml_fp16_t *)blk);
        for (int t = 0; t < T; t++)
            acc[t] = r8_scaled(d8, y[t][i].d, rows8(sum[t]), acc[t]);
        if (T == 1)
            accm[0] = r8_min_term(blk, has_m, has_qh, y[0][i].s, accm[0]);
    }
    /* 4 tokens: the minimums' term in a second pass over the (now cached) scales, with fewer live
     * registers (the same chain, so the same bits); one token has them to spare, and a second pass
     * would leave the memory idle (nothing prefetched while it ran) */
    for (int i = 0; T > 1 && i < n / QK8_1; i++)
        for (int t = 0; t < T; t++)
            accm[t] = r8_min_term((const uint8_t *)vx + i * x_size, has_m, has_qh, y[t][i].s, accm[t]);
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(s + t * s_stride, _mm256_add_ps(acc[t], accm[t]));
}

/* q8_0 (block_q8_0x8): signed weights, so |w| against y with w's sign (q8_1 holds no -128) */
ALWAYS_INLINE void r8_q8(int T, int n, float *s, int64_t s_stride, const void *vx, const void *vy, int64_t y_stride) {
    const int64_t l2 = l2_ahead(T, sizeof(block_q8_0x8) * (n / QK8_0));
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
            if (T <= R8_PREFETCH_T)
                pf = prefetch_until(pf, (const uint8_t *)(b->qs + 32 * k + 32 * STEPS), l2);
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
 * minimums through the q8_K block sums, per pair of sub-blocks */
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
    return i16_pair(y->bsums[2 * j] + y->bsums[2 * j + 1], y->bsums[2 * j + 2] + y->bsums[2 * j + 3]);
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
/* bit b of every byte of h at bit 4 (a 5-bit weight's top bit); the 16-bit shifts carry bits
 * across bytes, but the mask keeps only each byte's own */
static inline vi fifth_bit(vi h, int b) {
    return vi_and(b <= 4 ? vi_slli16(h, 4 - b) : vi_srli16(h, b - 4), vi_set1_8(0x10));
}

/* q4_K, and q5_K (five: the 5th bit of sub-block b from bit b of the qh byte at the weight's
 * place; weights up to 31, pair sums 2 * 31 * 128 within i16) */
ALWAYS_INLINE void r8_q4_K(int T, int five, int n, float *s, int64_t s_stride, const void *vx, const void *vy,
                           int64_t y_stride) {
    const int64_t x_size = five ? sizeof(block_q5_Kx8) : sizeof(block_q4_Kx8), l2 = l2_ahead(T, x_size * (n / QK_K));
    const int grp = five ? SMALL_STEPS(31) : SMALL_STEPS(15);
    const block_q8_K *y[4];
    __m256 acc[4], accm[4];
    const vi m4 = vi_set1_8(0x0F);
    for (int t = 0; t < T; t++) {
        y[t] = Y_ROW(block_q8_K, vy, y_stride, t);
        acc[t] = accm[t] = _mm256_setzero_ps();
    }
    for (int i = 0; i < n / QK_K; i++) {
        /* d, dmin and scales sit alike in both layouts */
        const block_q4_Kx8 *b = (const block_q4_Kx8 *)((const uint8_t *)vx + i * x_size);
        const uint8_t *qh = ((const block_q5_Kx8 *)b)->qh, *qs = five ? ((const block_q5_Kx8 *)b)->qs : b->qs;
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
                if (T <= R8_PREFETCH_T)
                    prefetch_slice(b, x_size, 2 * c + h, 8, l2);
                const vi scb = scale_of(sc, 2 * (c % 2) + h);
                /* the sub-block's 8 steps in groups whose pair sums stay within i16 at 256 bits:
                 * q4_K all 8 (8 * 2 * 15 * 128), q5_K 4 (4 * 2 * 31 * 128) */
                UNROLL
                for (int g = 0; g < 8; g += grp) {
                    vi s32[4];
                    for (int t = 0; t < T; t++)
                        s32[t] = vi_zero();
                    UNROLL
                    for (int k = g; k < g + grp; k += STEPS) {
                        vi p = vi_load_w(qs + 256 * c + 32 * k);
                        p = vi_and(h ? vi_srli16(p, 4) : p, m4);
                        if (five)
                            p = vi_or(p, fifth_bit(vi_load_w(qh + 32 * k), 2 * c + h));
                        for (int t = 0; t < T; t++)
                            s32[t] = dp_small(s32[t], p, bcast_step(y[t][i].qs + 64 * c + 32 * h + 4 * k));
                    }
                    /* q4_K's lanes at 512 bits: 4 steps' 16 products, |sum| <= 16 * 15 * 128 */
                    for (int t = 0; t < T; t++)
                        sumi[t] = five ? vi_add32(sumi[t], scaled_sum(s32[t], scb))
                                       : add_scaled_i16(sumi[t], s32[t], scb);
                }
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
    const int64_t l2 = l2_ahead(T, sizeof(block_q6_Kx8) * (n / QK_K));
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
                    if (T <= R8_PREFETCH_T)       /* 16 slices: 4 were 2x slower (measured at 512 and 256 bits) */
                        prefetch_slice(b, sizeof(block_q6_Kx8), 8 * h + 4 * e + qd, 16, l2);
                    const vi sc = scale_of16(q6_r8_pair(b, 4 * h + qd), e);
                    vi s16[4];
                    for (int t = 0; t < T; t++)
                        s16[t] = vi_zero();
                    UNROLL
                    for (int k = 4 * e; k < 4 * e + 4; k += STEPS) {
                        vi w = q6_r8_quarter(vi_load_w(b->ql + 32 * (16 * h + 8 * (qd % 2) + k)),
                                             vi_load_w(b->qh + 32 * (8 * h + k)), qd);
                        for (int t = 0; t < T; t++)
                            s16[t] = dp_small(s16[t], w, bcast_step(y[t][i].qs + 128 * h + 32 * qd + 4 * k));
                        /* weights < 64: widen every SMALL_STEPS(63) steps and at the sub-block's end (a group
                         * loop as r8_q4_K's measured 0.6-0.75x here at 8 tokens: gcc spilled) */
                        if ((k + STEPS) % SMALL_STEPS(63) == 0 || k + STEPS == 4 * e + 4) {
                            for (int t = 0; t < T; t++) {
                                wide[t] = vi_add32(wide[t], scaled_sum(s16[t], sc));
                                s16[t] = vi_zero();
                            }
                        }
                    }
                }
            }
        }
        for (int t = 0; t < T; t++)
            acc[t] = r8_scaled(f16x8(b->d), y[t][i].d, _mm256_add_epi32(sumi[t], rows8(wide[t])), acc[t]);
    }
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(s + t * s_stride, acc[t]);
}

/* q2_K and q3_K (block_q2_Kx8, block_q3_Kx8): 16 sub-blocks of 16, each weight's 2 low bits in qs
 * (bit pair bp of step 8h + k: weight 128h + 32bp + 4k + j, sub-block 8h + 2bp + k / 4), q3_K's
 * third in hmask (bit 4h + bp of step k). Per sub-block each row's sum, times its scale. q2_K: x =
 * d sc q - dmin m, the minimums through the q8_K block sums on a chain of their own; q3_K:
 * x = d (sc - 32) (u - 4) with u = low2 + 4 hbit (0..7), the -4 through the block sums times each
 * sub-block's (sc - 32), first, as q6_K's -32 */
static inline __m256i q2_r8_pair(const block_q2_Kx8 *b, int p) {
    /* lane r: row r's scale bytes (sc | m << 4) of sub-blocks 2p and 2p+1 as two u16 */
    return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(b->scales + 16 * p)));
}
/* the 6-bit scales of sub-blocks 4g..4g+3 of 8 rows less 32, as signed bytes: low nibbles from word
 * g % 2 (nibble g / 2), high bits from word 2 (bits 2g, 2g+1): block_q3_K's packing, 8 rows at once */
static inline __m256i k3_r8_scales(const block_q3_Kx8 *b, int g) {
    __m256i lo = _mm256_srli_epi32(_mm256_loadu_si256((const __m256i *)(b->scales + 32 * (g % 2))), 4 * (g / 2));
    __m256i hi = _mm256_srli_epi32(_mm256_loadu_si256((const __m256i *)(b->scales + 64)), 2 * g);
    hi = _mm256_slli_epi32(_mm256_and_si256(hi, _mm256_set1_epi8(3)), 4);
    return _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(lo, _mm256_set1_epi8(0x0F)), hi), _mm256_set1_epi8(32));
}

ALWAYS_INLINE void r8_q2_K(int T, int three, int n, float *s, int64_t s_stride, const void *vx, const void *vy,
                           int64_t y_stride) {
    const int64_t x_size = three ? sizeof(block_q3_Kx8) : sizeof(block_q2_Kx8), l2 = l2_ahead(T, x_size * (n / QK_K));
    const block_q8_K *y[4];
    __m256 acc[4], accm[4];
    for (int t = 0; t < T; t++) {
        y[t] = Y_ROW(block_q8_K, vy, y_stride, t);
        acc[t] = accm[t] = _mm256_setzero_ps();
    }
    for (int i = 0; i < n / QK_K; i++) {
        const block_q2_Kx8 *b2 = (const block_q2_Kx8 *)((const uint8_t *)vx + i * x_size);
        const block_q3_Kx8 *b3 = (const block_q3_Kx8 *)b2;
        const uint8_t *qs = three ? b3->qs : b2->qs;
        __m256i sc3[4], sumi[4];
        vi wide[4];            /* per token, unreduced: the sub-blocks' scaled sums */
        for (int t = 0; t < T; t++) {
            sumi[t] = _mm256_setzero_si256();
            wide[t] = vi_zero();
        }
        if (three) {           /* the offset first: -4 * sum_j (sc_j - 32) bsums_j */
            UNROLL
            for (int g = 0; g < 4; g++) {
                sc3[g] = k3_r8_scales(b3, g);
                /* i16 lanes: bytes 0 and 2 of each row's lane (sub-blocks 4g, 4g+2), bytes 1 and 3 */
                __m256i ev = _mm256_srai_epi16(_mm256_slli_epi16(sc3[g], 8), 8), od = _mm256_srai_epi16(sc3[g], 8);
                for (int t = 0; t < T; t++) {
                    const int16_t *bs = y[t][i].bsums + 4 * g;
                    sumi[t] = _mm256_sub_epi32(sumi[t], _mm256_add_epi32(
                        _mm256_madd_epi16(ev, _mm256_set1_epi32(i16_pair(bs[0], bs[2]))),
                        _mm256_madd_epi16(od, _mm256_set1_epi32(i16_pair(bs[1], bs[3])))));
                }
            }
            for (int t = 0; t < T; t++)
                sumi[t] = _mm256_slli_epi32(sumi[t], 2);
        }
        /* the sub-blocks of BPG bit pairs from each load of a step: 4 for one token (1.1-1.2x), 1 for
         * four (4 at 512 bits: 0.87x; the 4 written out at 256 bits: gcc interleaved and spilled) */
        const int BPG = T == 1 ? 4 : 1;
        NO_UNROLL
        for (int h = 0; h < 2; h++) {
            NO_UNROLL
            for (int bg = 0; bg < 4; bg += BPG) {
                UNROLL
                for (int e = 0; e < 2; e++) {        /* sub-blocks 8h + 2bp + e: steps 4e..4e+3 */
                    if (T <= R8_PREFETCH_T)
                        prefetch_slice(b2, x_size, 2 * ((4 * h + bg) / BPG) + e, 32 / BPG, l2);
                    vi s32[4][4];
                    for (int u = 0; u < BPG; u++)
                        for (int t = 0; t < T; t++)
                            s32[u][t] = vi_zero();
                    UNROLL
                    for (int k = 4 * e; k < 4 * e + 4; k += STEPS) {
                        const vi q = vi_load_w(qs + 32 * (8 * h + k));
                        const vi hm = three ? vi_load_w(b3->hmask + 32 * k) : vi_zero();
                        UNROLL
                        for (int u = 0; u < BPG; u++) {
                            const int bp = bg + u;
                            vi w = vi_and(vi_srli16(q, 2 * bp), vi_set1_8(3));
                            if (three)  /* hmask bit 4h + bp to bit 2 (of the same byte: 4h + bp < 8) */
                                w = vi_or(w, vi_and(vi_slli16(vi_srli16(hm, 4 * h + bp), 2), vi_set1_8(4)));
                            for (int t = 0; t < T; t++)   /* 4 steps' pair sums: 4 * 2 * 7 * 128 at most */
                                s32[u][t] = dp_small(s32[u][t], w, bcast_step(y[t][i].qs + 128 * h + 32 * bp + 4 * k));
                        }
                    }
                    UNROLL
                    for (int u = 0; u < BPG; u++) {
                        const int bp = bg + u;
                        vi sc = three ? scale_of(sc3[2 * h + bp / 2], 2 * (bp % 2) + e)
                                      : scale_of(_mm256_and_si256(q2_r8_pair(b2, 4 * h + bp), _mm256_set1_epi16(0x0F)), 2 * e);
                        for (int t = 0; t < T; t++)
                            wide[t] = vi_add32(wide[t], scaled_sum(s32[u][t], sc));
                    }
                }
            }
        }
        const __m256 d8 = f16x8(three ? b3->d : b2->d);
        for (int t = 0; t < T; t++) {
            acc[t] = r8_scaled(d8, y[t][i].d, _mm256_add_epi32(sumi[t], rows8(wide[t])), acc[t]);
            if (!three) {      /* the minimums: sum_j m_j bsums_j */
                __m256i msum = _mm256_setzero_si256();
                UNROLL
                for (int p = 0; p < 8; p++)
                    msum = _mm256_add_epi32(msum, _mm256_madd_epi16(_mm256_srli_epi16(q2_r8_pair(b2, p), 4),
                                                                    _mm256_set1_epi32(load_i32(y[t][i].bsums + 2 * p))));
                accm[t] = r8_scaled(f16x8(b2->dmin), y[t][i].d, msum, accm[t]);
            }
        }
    }
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(s + t * s_stride, _mm256_sub_ps(acc[t], accm[t]));
}

/* iq4_nl and iq4_xs (block_iq4_nlx8, block_iq4_xsx8): each nibble indexes kvalues_iq4nl, looked up
 * with a byte shuffle (the table in every 128-bit lane). Weights and activations are both signed and
 * q8_K can hold -128, so |y| is the unsigned operand and w with y's sign the signed one: |y| <= 128
 * fits a u8, |w| <= 127 negates safely, and avx2's pair sums (2 * 128 * 127) stay within i16 */
static inline vi sdot(vi acc, vi w, vi y) { return dpbusd(acc, abs8(y), sign_by(w, y)); }
/* the 32 weights of step k (and k + 1 at 512 bits) of 8 rows: low nibbles (weights 4k + j) and high
 * (16 + 4k + j) of a sub-block's 16 bytes, looked up */
static inline void iq4_step(vi lut, const uint8_t *qs, vi *wl, vi *wh) {
    const vi p = vi_load_w(qs), m4 = vi_set1_8(0x0F);
    *wl = vi_shuffle8(lut, vi_and(p, m4));
    *wh = vi_shuffle8(lut, vi_and(vi_srli16(p, 4), m4));
}

ALWAYS_INLINE void r8_iq4_nl(int T, int n, float *s, int64_t s_stride, const void *vx, const void *vy,
                             int64_t y_stride) {
    const int64_t l2 = l2_ahead(T, sizeof(block_iq4_nlx8) * (n / QK4_NL));
    const block_q8_1 *y[4];
    __m256 acc[4];
    const vi lut = vi_bcast16(kvalues_iq4nl);
    const uint8_t *pf = (const uint8_t *)vx + PREFETCH;
    for (int t = 0; t < T; t++) {
        y[t] = Y_ROW(block_q8_1, vy, y_stride, t);
        acc[t] = _mm256_setzero_ps();
    }
    for (int i = 0; i < n / QK4_NL; i++) {
        const block_iq4_nlx8 *b = (const block_iq4_nlx8 *)vx + i;
        vi sum[4];
        if (T <= R8_PREFETCH_T)
            pf = prefetch_until(pf, (const uint8_t *)(b + 1), l2);
        for (int t = 0; t < T; t++)
            sum[t] = vi_zero();
        UNROLL
        for (int k = 0; k < 4; k += STEPS) {
            vi wl, wh;
            iq4_step(lut, b->qs + 32 * k, &wl, &wh);
            for (int t = 0; t < T; t++) {
                const int8_t *q8 = y[t][i].qs + 4 * k;
                sum[t] = sdot(sdot(sum[t], wl, bcast_step(q8)), wh, bcast_step(q8 + 16));
            }
        }
        const __m256 d8 = f16x8(b->d);
        for (int t = 0; t < T; t++)
            acc[t] = r8_scaled(d8, y[t][i].d, rows8(sum[t]), acc[t]);
    }
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(s + t * s_stride, acc[t]);
}

/* iq4_xs: per sub-block each row's sum (in i32: at most 32 * 127 * 128), times its ls - 32 */
ALWAYS_INLINE void r8_iq4_xs(int T, int n, float *s, int64_t s_stride, const void *vx, const void *vy,
                             int64_t y_stride) {
    const int64_t l2 = l2_ahead(T, sizeof(block_iq4_xsx8) * (n / QK_K));
    const block_q8_K *y[4];
    __m256 acc[4];
    const vi lut = vi_bcast16(kvalues_iq4nl);
    for (int t = 0; t < T; t++) {
        y[t] = Y_ROW(block_q8_K, vy, y_stride, t);
        acc[t] = _mm256_setzero_ps();
    }
    for (int i = 0; i < n / QK_K; i++) {
        const block_iq4_xsx8 *b = (const block_iq4_xsx8 *)vx + i;
        /* lane r: row r's scales_l as a uint32 (nibble j: sub-block j's low 4 bits), its scales_h */
        const __m256i sl = _mm256_loadu_si256((const __m256i *)b->scales_l);
        const __m256i sh = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)b->scales_h));
        vi sumi[4];            /* per token, unreduced: the sub-blocks' scaled sums */
        for (int t = 0; t < T; t++)
            sumi[t] = vi_zero();
        NO_UNROLL
        for (int ib = 0; ib < 8; ib++) {
            if (T <= R8_PREFETCH_T)
                prefetch_slice(b, sizeof(block_iq4_xsx8), ib, 8, l2);
            const __m256i ls = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi32(sl, 4 * ib), _mm256_set1_epi32(0x0F)),
                _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(sh, 2 * ib), _mm256_set1_epi32(3)), 4));
            const vi sc = rows_wide(_mm256_sub_epi32(ls, _mm256_set1_epi32(32)));
            vi s32[4];
            for (int t = 0; t < T; t++)
                s32[t] = vi_zero();
            UNROLL
            for (int k = 0; k < 4; k += STEPS) {
                vi wl, wh;
                iq4_step(lut, b->qs + 32 * (4 * ib + k), &wl, &wh);
                for (int t = 0; t < T; t++) {
                    const int8_t *q8 = y[t][i].qs + 32 * ib + 4 * k;
                    s32[t] = sdot(sdot(s32[t], wl, bcast_step(q8)), wh, bcast_step(q8 + 16));
                }
            }
            for (int t = 0; t < T; t++)
                sumi[t] = vi_add32(sumi[t], vi_mullo(s32[t], sc));
        }
        const __m256 d8 = f16x8(b->d);
        for (int t = 0; t < T; t++)
            acc[t] = r8_scaled(d8, y[t][i].d, rows8(sumi[t]), acc[t]);
    }
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(s + t * s_stride, acc[t]);
}

/* ---- one function per (type, token count), each a body above --------------------------- */
#define R8_PAIR(name, call)                                                                                     \
    static void dot_r8_##name(int n, float *s, int64_t s_stride, const void *vx, const void *vy, int64_t ys) {  \
        call(1, n, s, s_stride, vx, vy, ys);                                                                    \
    }                                                                                                           \
    static void dot_r8_x4_##name(int n, float *s, int64_t s_stride, const void *vx, const void *vy, int64_t ys) { \
        call(4, n, s, s_stride, vx, vy, ys);                                                                    \
    }
#define R8_Q4_0(T, ...) r8_q4(T, 0, 0, __VA_ARGS__)
#define R8_Q4_1(T, ...) r8_q4(T, 1, 0, __VA_ARGS__)
#define R8_Q5_0(T, ...) r8_q4(T, 0, 1, __VA_ARGS__)
#define R8_Q5_1(T, ...) r8_q4(T, 1, 1, __VA_ARGS__)
R8_PAIR(q4_0, R8_Q4_0)
R8_PAIR(q4_1, R8_Q4_1)
R8_PAIR(q5_0, R8_Q5_0)
R8_PAIR(q5_1, R8_Q5_1)
R8_PAIR(q8_0, r8_q8)
#define R8_Q4_K(T, ...) r8_q4_K(T, 0, __VA_ARGS__)
#define R8_Q5_K(T, ...) r8_q4_K(T, 1, __VA_ARGS__)
R8_PAIR(q4_K, R8_Q4_K)
R8_PAIR(q5_K, R8_Q5_K)
R8_PAIR(q6_K, r8_q6_K)
#define R8_Q2_K(T, ...) r8_q2_K(T, 0, __VA_ARGS__)
#define R8_Q3_K(T, ...) r8_q2_K(T, 1, __VA_ARGS__)
R8_PAIR(q2_K, R8_Q2_K)
R8_PAIR(q3_K, R8_Q3_K)
R8_PAIR(iq4_nl, r8_iq4_nl)
R8_PAIR(iq4_xs, r8_iq4_xs)
