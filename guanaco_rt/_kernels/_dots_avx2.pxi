# AVX2 + FMA + F16C dot products. Same math as _dots_generic.pxi, 32 bytes at a
# time: integer products with maddubs (u8 x s8 -> pairs of i16) and madd (i16 x
# i16 -> i32), one float FMA per block or sub-block. They agree with the generic
# kernels up to float summation order (tests/test_isa.py).
from guanaco_rt._kernels.avx2_intrin cimport *

# f16 -> f32 of the weight scales: the 32-weight block kernels look them up in the
# FP16_TABLE (two loads) rather than vpinsrw + vcvtph2ps (two shuffle/convert µops on the
# busy ports): +8-11% for q4_0/q5_0/q5_1. The k-quants convert one scale per 256 weights
# and use F16C.

cdef inline float hsum_float_8(__m256 x) noexcept nogil:
    cdef __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x))
    r = _mm_add_ps(r, _mm_movehl_ps(r, r))
    r = _mm_add_ss(r, _mm_movehdup_ps(r))
    return _mm_cvtss_f32(r)

cdef inline __m256i bytes_from_nibbles_32(const uint8_t* p) noexcept nogil:
    # 16 bytes -> 32: low nibbles to bytes 0..15, high nibbles to bytes 16..31. The
    # 16 bytes go to both lanes with one broadcast load; the high lane is shifted by 4.
    cdef __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128(<const __m128i*>p))
    b = _mm256_srlv_epi64(b, _mm256_set_epi64x(4, 4, 0, 0))
    return _mm256_and_si256(_mm256_set1_epi8(0x0F), b)

cdef inline __m256i bytes_from_bits_32(const uint8_t* p) noexcept nogil:
    # bit j of a little-endian uint32 -> byte j = 0xFF if set, else 0
    cdef __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                          0x0101010101010101, 0x0000000000000000)
    # broadcast the 4 bytes straight from memory (a load, no shuffle port)
    cdef __m256i b = _mm256_shuffle_epi8(_mm256_castps_si256(_mm256_broadcast_ss(<const float*>p)), shuf)
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe))
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1))

cdef inline __m256 sum_i16_pairs_float(__m256i x) noexcept nogil:
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), x))

cdef inline __m256 mul_sum_us8_pairs_float(__m256i ax, __m256i sy) noexcept nogil:
    # unsigned x signed bytes: |sum of a pair| <= 2*255*128 fits i16 only for small ax
    return sum_i16_pairs_float(_mm256_maddubs_epi16(ax, sy))

cdef inline __m256 mul_sum_i8_pairs_float(__m256i x, __m256i y) noexcept nogil:
    # signed x signed: move x's sign onto y (maddubs wants its first operand unsigned);
    # relies on y never being -128 (q8_0 and q8_1 activations are in [-127, 127])
    return mul_sum_us8_pairs_float(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))

cdef inline __m256i k_madd(__m256i scale, __m256i q, const int8_t* y) noexcept nogil:
    return _mm256_madd_epi16(scale, _mm256_maddubs_epi16(q, _mm256_loadu_si256(<const __m256i*>y)))

cdef inline __m256i pair_shuffle(int k) noexcept nogil:
    # broadcasts i16 element 2k to the low 128-bit lane and 2k+1 to the high one
    return _mm256_set_m128i(_mm_set1_epi16(<short>(((4 * k + 3) << 8) | (4 * k + 2))),
                            _mm_set1_epi16(<short>(((4 * k + 1) << 8) | (4 * k))))

cdef inline __m256i q4_0_pairs(__m256i q, __m256i y) noexcept nogil:
    # i16 pair sums of (q - 8) * y from unsigned nibbles: maddubs(q, y) - maddubs(8, y).
    # The same integers as the sign trick with one instruction less; |pair| <= 3840.
    return _mm256_sub_epi16(_mm256_maddubs_epi16(q, y), _mm256_maddubs_epi16(_mm256_set1_epi8(8), y))

cdef inline __m256 q4_0_q8_1_block(const block_q4_0* x, const block_q8_1* y, __m256 acc) noexcept nogil:
    # one block: the float operations every q4_0 variant repeats, in this order
    return _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(x.d) * y.d),
                           sum_i16_pairs_float(q4_0_pairs(bytes_from_nibbles_32(x.qs),
                                                          _mm256_loadu_si256(<const __m256i*>y.qs))), acc)

cdef void vec_dot_q4_0_q8_1_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q4_0* x = <const block_q4_0*>vx
    cdef const block_q8_1* y = <const block_q8_1*>vy
    cdef __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps()
    cdef int i, nb = n // QK8_1
    # even and odd blocks in two accumulators (shorter FMA dependency chains)
    for i in range(0, nb - 1, 2):
        a0 = q4_0_q8_1_block(&x[i], &y[i], a0)
        a1 = q4_0_q8_1_block(&x[i + 1], &y[i + 1], a1)
    if nb % 2:
        a0 = q4_0_q8_1_block(&x[nb - 1], &y[nb - 1], a0)
    s[0] = hsum_float_8(_mm256_add_ps(a0, a1))

cdef void vec_dot_q4_1_q8_1_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q4_1* x = <const block_q4_1*>vx
    cdef const block_q8_1* y = <const block_q8_1*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef float summs = 0.0
    cdef int i
    for i in range(n // QK8_1):
        summs += fp16_to_fp32(x[i].m) * y[i].s
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(x[i].d) * y[i].d),
                              mul_sum_us8_pairs_float(bytes_from_nibbles_32(x[i].qs),
                                                      _mm256_loadu_si256(<const __m256i*>y[i].qs)), acc)
    s[0] = hsum_float_8(acc) + summs

cdef void vec_dot_q5_0_q8_1_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q5_0* x = <const block_q5_0*>vx
    cdef const block_q8_1* y = <const block_q8_1*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef __m256i hi_off = _mm256_set1_epi8(<char>0xF0)
    cdef __m256i qx
    cdef int i
    for i in range(n // QK8_1):
        # q - 16 = nibble | (high bit ? 0 : 0xF0) read as a signed byte
        qx = _mm256_or_si256(bytes_from_nibbles_32(x[i].qs), _mm256_andnot_si256(bytes_from_bits_32(x[i].qh), hi_off))
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(x[i].d) * y[i].d),
                              mul_sum_i8_pairs_float(qx, _mm256_loadu_si256(<const __m256i*>y[i].qs)), acc)
    s[0] = hsum_float_8(acc)

cdef void vec_dot_q5_1_q8_1_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q5_1* x = <const block_q5_1*>vx
    cdef const block_q8_1* y = <const block_q8_1*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef __m256i bit4 = _mm256_set1_epi8(0x10)
    cdef __m256i qx
    cdef float summs = 0.0
    cdef int i
    for i in range(n // QK8_1):
        summs += fp16_to_fp32(x[i].m) * y[i].s
        qx = _mm256_or_si256(bytes_from_nibbles_32(x[i].qs), _mm256_and_si256(bytes_from_bits_32(x[i].qh), bit4))
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(x[i].d) * y[i].d),
                              mul_sum_us8_pairs_float(qx, _mm256_loadu_si256(<const __m256i*>y[i].qs)), acc)
    s[0] = hsum_float_8(acc) + summs

cdef void vec_dot_q8_0_q8_1_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q8_0* x = <const block_q8_0*>vx
    cdef const block_q8_1* y = <const block_q8_1*>vy
    cdef __m256 acc0 = _mm256_setzero_ps()
    cdef __m256 acc1 = _mm256_setzero_ps()
    cdef int i, nb = n // QK8_1
    for i in range(0, nb - 1, 2):
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(x[i].d) * y[i].d),
                               mul_sum_i8_pairs_float(_mm256_loadu_si256(<const __m256i*>x[i].qs),
                                                      _mm256_loadu_si256(<const __m256i*>y[i].qs)), acc0)
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(x[i + 1].d) * y[i + 1].d),
                               mul_sum_i8_pairs_float(_mm256_loadu_si256(<const __m256i*>x[i + 1].qs),
                                                      _mm256_loadu_si256(<const __m256i*>y[i + 1].qs)), acc1)
    if nb % 2:
        i = nb - 1
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(x[i].d) * y[i].d),
                               mul_sum_i8_pairs_float(_mm256_loadu_si256(<const __m256i*>x[i].qs),
                                                      _mm256_loadu_si256(<const __m256i*>y[i].qs)), acc0)
    s[0] = hsum_float_8(_mm256_add_ps(acc0, acc1))

cdef inline __m256i q2_chunk(__m256i bits, int k, __m256i m3) noexcept nogil:
    # the 2-bit values at bit pair k of 32 bytes (k is a literal at every call: immediate shifts)
    if k == 0:
        return _mm256_and_si256(bits, m3)
    if k == 1:
        return _mm256_and_si256(_mm256_srli_epi16(bits, 2), m3)
    if k == 2:
        return _mm256_and_si256(_mm256_srli_epi16(bits, 4), m3)
    return _mm256_and_si256(_mm256_srli_epi16(bits, 6), m3)

cdef void vec_dot_q2_K_q8_K_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q2_K* x = <const block_q2_K*>vx
    cdef const block_q8_K* y = <const block_q8_K*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef __m256 accm = _mm256_setzero_ps()
    cdef __m256i m3 = _mm256_set1_epi8(3)
    cdef __m128i m4 = _mm_set1_epi8(0xF)
    cdef __m256i shuf[4]
    cdef __m256i q2bits, sumi, scales, half, p
    cdef __m128i raw
    cdef const uint8_t* q2
    cdef const int8_t* q8
    cdef int i, j, k
    for k in range(4):
        shuf[k] = pair_shuffle(k)
    for i in range(n // QK_K):
        raw = _mm_loadu_si128(<const __m128i*>x[i].scales)
        # mins (high nibbles) against the 16 block sums of the activation
        p = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), m4)),
                              _mm256_loadu_si256(<const __m256i*>y[i].bsums))
        accm = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].dmin)), _mm256_cvtepi32_ps(p), accm)
        scales = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m4))      # 16 x i16
        q2 = x[i].qs
        q8 = y[i].qs
        sumi = _mm256_setzero_si256()
        for j in range(2):
            # both lanes hold the 8 scales of this half
            if j == 0:
                half = _mm256_set_m128i(_mm256_castsi256_si128(scales), _mm256_castsi256_si128(scales))
            else:
                half = _mm256_set_m128i(_mm256_extracti128_si256(scales, 1), _mm256_extracti128_si256(scales, 1))
            q2bits = _mm256_loadu_si256(<const __m256i*>q2)
            p = _mm256_maddubs_epi16(q2_chunk(q2bits, 0, m3), _mm256_loadu_si256(<const __m256i*>q8))
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_shuffle_epi8(half, shuf[0]), p))
            p = _mm256_maddubs_epi16(q2_chunk(q2bits, 1, m3), _mm256_loadu_si256(<const __m256i*>(q8 + 32)))
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_shuffle_epi8(half, shuf[1]), p))
            p = _mm256_maddubs_epi16(q2_chunk(q2bits, 2, m3), _mm256_loadu_si256(<const __m256i*>(q8 + 64)))
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_shuffle_epi8(half, shuf[2]), p))
            p = _mm256_maddubs_epi16(q2_chunk(q2bits, 3, m3), _mm256_loadu_si256(<const __m256i*>(q8 + 96)))
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_shuffle_epi8(half, shuf[3]), p))
            q2 += 32
            q8 += 128
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].d)), _mm256_cvtepi32_ps(sumi), acc)
    s[0] = hsum_float_8(acc) - hsum_float_8(accm)

cdef inline __m256i q3_K_scales16(const uint8_t* sc) noexcept nogil:
    # the 16 six-bit scales of a q3_K block, minus 32, as i16 (layout at block_q3_K)
    cdef uint32_t a0 = load_u32(sc), a1 = load_u32(sc + 4), t = load_u32(sc + 8)
    cdef uint32_t s0 = (a0 & 0x0f0f0f0f) | ((t & 0x03030303) << 4)
    cdef uint32_t s1 = (a1 & 0x0f0f0f0f) | (((t >> 2) & 0x03030303) << 4)
    cdef uint32_t s2 = ((a0 >> 4) & 0x0f0f0f0f) | (((t >> 4) & 0x03030303) << 4)
    cdef uint32_t s3 = ((a1 >> 4) & 0x0f0f0f0f) | (((t >> 6) & 0x03030303) << 4)
    return _mm256_cvtepi8_epi16(_mm_sub_epi8(_mm_set_epi32(<int>s3, <int>s2, <int>s1, <int>s0), _mm_set1_epi8(32)))

cdef inline __m256i q3_hbit4(__m256i hbits, int b) noexcept nogil:
    # 4 where bit b (a literal at every call) of the hmask byte is set, else 0
    cdef __m256i one = _mm256_set1_epi8(1)
    if b == 0:
        return _mm256_slli_epi16(_mm256_and_si256(hbits, one), 2)
    if b == 1:
        return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 1), one), 2)
    if b == 2:
        return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 2), one), 2)
    if b == 3:
        return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 3), one), 2)
    if b == 4:
        return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 4), one), 2)
    if b == 5:
        return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 5), one), 2)
    if b == 6:
        return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 6), one), 2)
    return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 7), one), 2)

cdef inline __m256i q3_K_block_sumi(const block_q3_K* x, const block_q8_K* y, const __m256i* shuf) noexcept nogil:
    # sum_j sc_j sum_l q_l y_l as i32 lanes with q = low 2 bits + 4 * high bit - 4; the
    # -4 goes through the q8_K block sums (4 * sum_j sc_j bsums_j)
    cdef __m256i m3 = _mm256_set1_epi8(3)
    cdef __m256i scales = q3_K_scales16(x.scales)
    cdef __m256i hbits = _mm256_loadu_si256(<const __m256i*>x.hmask)
    cdef __m256i lo = _mm256_permute2x128_si256(scales, scales, 0x00)
    cdef __m256i hi = _mm256_permute2x128_si256(scales, scales, 0x11)
    cdef __m256i q0 = _mm256_loadu_si256(<const __m256i*>x.qs)
    cdef __m256i q1 = _mm256_loadu_si256(<const __m256i*>(x.qs + 32))
    cdef __m256i sumi = k_madd(_mm256_shuffle_epi8(lo, shuf[0]), _mm256_or_si256(q2_chunk(q0, 0, m3), q3_hbit4(hbits, 0)), y.qs)
    sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(lo, shuf[1]), _mm256_or_si256(q2_chunk(q0, 1, m3), q3_hbit4(hbits, 1)), y.qs + 32))
    sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(lo, shuf[2]), _mm256_or_si256(q2_chunk(q0, 2, m3), q3_hbit4(hbits, 2)), y.qs + 64))
    sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(lo, shuf[3]), _mm256_or_si256(q2_chunk(q0, 3, m3), q3_hbit4(hbits, 3)), y.qs + 96))
    sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(hi, shuf[0]), _mm256_or_si256(q2_chunk(q1, 0, m3), q3_hbit4(hbits, 4)), y.qs + 128))
    sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(hi, shuf[1]), _mm256_or_si256(q2_chunk(q1, 1, m3), q3_hbit4(hbits, 5)), y.qs + 160))
    sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(hi, shuf[2]), _mm256_or_si256(q2_chunk(q1, 2, m3), q3_hbit4(hbits, 6)), y.qs + 192))
    sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(hi, shuf[3]), _mm256_or_si256(q2_chunk(q1, 3, m3), q3_hbit4(hbits, 7)), y.qs + 224))
    return _mm256_sub_epi32(sumi, _mm256_slli_epi32(_mm256_madd_epi16(scales, _mm256_loadu_si256(<const __m256i*>y.bsums)), 2))

cdef void vec_dot_q3_K_q8_K_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q3_K* x = <const block_q3_K*>vx
    cdef const block_q8_K* y = <const block_q8_K*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef __m256i shuf[4]
    cdef int i, k
    for k in range(4):
        shuf[k] = pair_shuffle(k)
    for i in range(n // QK_K):
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].d)),
                              _mm256_cvtepi32_ps(q3_K_block_sumi(&x[i], &y[i], shuf)), acc)
    s[0] = hsum_float_8(acc)

cdef inline __m256i unpack_k4_scales(const uint8_t* scales, __m256i* sc16) noexcept nogil:
    # the 8 six-bit scales as i16 in both 128-bit lanes into sc16; returns the 8 mins as
    # 16 x i16, each twice ([m0 m0 m1 m1 ...]) to pair with the 16 bsums of a q8_K block
    cdef uint32_t u0 = load_u32(scales), u1 = load_u32(scales + 4), u2 = load_u32(scales + 8)
    cdef uint32_t s_lo = u0 & 0x3f3f3f3f
    cdef uint32_t s_hi = (u2 & 0x0f0f0f0f) | (((u0 >> 6) & 0x03030303) << 4)
    cdef uint32_t m_lo = u1 & 0x3f3f3f3f
    cdef uint32_t m_hi = ((u2 >> 4) & 0x0f0f0f0f) | (((u1 >> 6) & 0x03030303) << 4)
    cdef __m256i both = _mm256_cvtepu8_epi16(_mm_set_epi32(<int>m_hi, <int>m_lo, <int>s_hi, <int>s_lo))
    cdef __m128i m8 = _mm256_extracti128_si256(both, 1)
    sc16[0] = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(both))
    return _mm256_set_m128i(_mm_unpackhi_epi16(m8, m8), _mm_unpacklo_epi16(m8, m8))

cdef inline __m256i elem_shuffle(int m) noexcept nogil:
    # broadcasts i16 element m of each 128-bit lane to the whole lane
    return _mm256_set1_epi16(<short>(((2 * m + 1) << 8) | (2 * m)))

cdef void vec_dot_q4_K_q8_K_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q4_K* x = <const block_q4_K*>vx
    cdef const block_q8_K* y = <const block_q8_K*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef __m256 accm = _mm256_setzero_ps()
    cdef __m256i m4 = _mm256_set1_epi8(0xF)
    cdef __m256i shuf[8]
    cdef __m256i mins16, sc16, q4bits, sumi
    cdef const uint8_t* q4
    cdef const int8_t* q8
    cdef int i, j
    for j in range(8):
        shuf[j] = elem_shuffle(j)
    for i in range(n // QK_K):
        mins16 = unpack_k4_scales(x[i].scales, &sc16)
        accm = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].dmin)),
                               _mm256_cvtepi32_ps(_mm256_madd_epi16(mins16, _mm256_loadu_si256(<const __m256i*>y[i].bsums))),
                               accm)
        q4 = x[i].qs
        q8 = y[i].qs
        sumi = _mm256_setzero_si256()
        for j in range(4):
            q4bits = _mm256_loadu_si256(<const __m256i*>(q4 + 32 * j))
            sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(sc16, shuf[2 * j]), _mm256_and_si256(q4bits, m4), q8 + 64 * j))
            sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(sc16, shuf[2 * j + 1]),
                                                 _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4), q8 + 64 * j + 32))
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].d)), _mm256_cvtepi32_ps(sumi), acc)
    s[0] = hsum_float_8(acc) - hsum_float_8(accm)

cdef void vec_dot_q5_K_q8_K_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q5_K* x = <const block_q5_K*>vx
    cdef const block_q8_K* y = <const block_q8_K*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef __m256i m4 = _mm256_set1_epi8(0xF)
    cdef __m256i bit4 = _mm256_set1_epi8(0x10)
    cdef __m256i zero = _mm256_setzero_si256()
    cdef __m256i hbits, q5bits, sumi, pl, ph, hl, hh
    cdef const uint8_t* q5
    cdef const int8_t* q8
    cdef __m256 accm = _mm256_setzero_ps()
    cdef __m256i mins16
    cdef __m256i sc16
    cdef __m256i shuf[8]
    cdef int i, j
    for j in range(8):
        shuf[j] = elem_shuffle(j)
    for i in range(n // QK_K):
        mins16 = unpack_k4_scales(x[i].scales, &sc16)
        accm = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].dmin)),
                               _mm256_cvtepi32_ps(_mm256_madd_epi16(mins16, _mm256_loadu_si256(<const __m256i*>y[i].bsums))),
                               accm)
        hbits = _mm256_loadu_si256(<const __m256i*>x[i].qh)
        q5 = x[i].qs
        q8 = y[i].qs
        sumi = _mm256_setzero_si256()
        for j in range(4):
            q5bits = _mm256_loadu_si256(<const __m256i*>q5)
            # 16 where bit 2j (resp. 2j+1) of qh is set
            hl = _mm256_andnot_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, _mm256_set1_epi8(<char>(1 << (2 * j)))), zero), bit4)
            hh = _mm256_andnot_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, _mm256_set1_epi8(<char>(2 << (2 * j)))), zero), bit4)
            pl = _mm256_maddubs_epi16(_mm256_or_si256(_mm256_and_si256(q5bits, m4), hl),
                                      _mm256_loadu_si256(<const __m256i*>q8))
            ph = _mm256_maddubs_epi16(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q5bits, 4), m4), hh),
                                      _mm256_loadu_si256(<const __m256i*>(q8 + 32)))
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_shuffle_epi8(sc16, shuf[2 * j]), pl))
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_shuffle_epi8(sc16, shuf[2 * j + 1]), ph))
            q5 += 32
            q8 += 64
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].d)), _mm256_cvtepi32_ps(sumi), acc)
    s[0] = hsum_float_8(acc) - hsum_float_8(accm)


cdef inline __m256i q6_chunk(__m256i ql1, __m256i ql2, __m256i qh, int k, __m256i m4, __m256i m2) noexcept nogil:
    # 6-bit values (0..63) of weights 32k.. of a 128-half (k a literal at every call)
    if k == 0:
        return _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4))
    if k == 1:
        return _mm256_or_si256(_mm256_and_si256(ql2, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4))
    if k == 2:
        return _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4))
    return _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql2, 4), m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4))


cdef inline __m256i q6_K_block_sumi(const block_q6_K* x, const block_q8_K* y, const __m256i* shuf,
                                    __m256i m4, __m256i m2) noexcept nogil:
    # sum_j sc_j sum_l (q_l - 32) y_l as i32 lanes: the -32 goes through the block sums of
    # y (32 * sum_j sc_j bsums_j) instead of a second maddubs per chunk
    cdef __m256i scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(<const __m128i*>x.scales))   # 16 x i16
    cdef __m256i corr = _mm256_madd_epi16(scales, _mm256_loadu_si256(<const __m256i*>y.bsums))
    cdef __m256i sumi = _mm256_setzero_si256()
    cdef __m256i half, qh, ql1, ql2
    cdef int j
    for j in range(2):
        half = _mm256_permute2x128_si256(scales, scales, 0x00 if j == 0 else 0x11)
        qh = _mm256_loadu_si256(<const __m256i*>(x.qh + 32 * j))
        ql1 = _mm256_loadu_si256(<const __m256i*>(x.ql + 64 * j))
        ql2 = _mm256_loadu_si256(<const __m256i*>(x.ql + 64 * j + 32))
        sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(half, shuf[0]), q6_chunk(ql1, ql2, qh, 0, m4, m2), y.qs + 128 * j))
        sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(half, shuf[1]), q6_chunk(ql1, ql2, qh, 1, m4, m2), y.qs + 128 * j + 32))
        sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(half, shuf[2]), q6_chunk(ql1, ql2, qh, 2, m4, m2), y.qs + 128 * j + 64))
        sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(half, shuf[3]), q6_chunk(ql1, ql2, qh, 3, m4, m2), y.qs + 128 * j + 96))
    return _mm256_sub_epi32(sumi, _mm256_slli_epi32(corr, 5))

cdef void vec_dot_q6_K_q8_K_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q6_K* x = <const block_q6_K*>vx
    cdef const block_q8_K* y = <const block_q8_K*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef __m256i m4 = _mm256_set1_epi8(0xF)
    cdef __m256i m2 = _mm256_set1_epi8(3)
    cdef __m256i shuf[4]
    cdef int i, k
    for k in range(4):
        shuf[k] = pair_shuffle(k)
    for i in range(n // QK_K):
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].d)),
                              _mm256_cvtepi32_ps(q6_K_block_sumi(&x[i], &y[i], shuf, m4, m2)), acc)
    s[0] = hsum_float_8(acc)

cdef void init_avx2_traits() noexcept nogil:
    VEC_DOT[GGML_TYPE_Q4_0] = vec_dot_q4_0_q8_1_avx2
    VEC_DOT[GGML_TYPE_Q4_1] = vec_dot_q4_1_q8_1_avx2
    VEC_DOT[GGML_TYPE_Q5_0] = vec_dot_q5_0_q8_1_avx2
    VEC_DOT[GGML_TYPE_Q5_1] = vec_dot_q5_1_q8_1_avx2
    VEC_DOT[GGML_TYPE_Q8_0] = vec_dot_q8_0_q8_1_avx2
    VEC_DOT[GGML_TYPE_Q2_K] = vec_dot_q2_K_q8_K_avx2
    VEC_DOT[GGML_TYPE_Q3_K] = vec_dot_q3_K_q8_K_avx2
    VEC_DOT[GGML_TYPE_Q4_K] = vec_dot_q4_K_q8_K_avx2
    VEC_DOT[GGML_TYPE_Q5_K] = vec_dot_q5_K_q8_K_avx2
    VEC_DOT[GGML_TYPE_Q6_K] = vec_dot_q6_K_q8_K_avx2

# ---- four activation rows at once (prompt batches) --------------------------------------
# One weight row against 4 activation rows: the weight block is decoded once and used
# 4 times. Each token's float operations happen in the same order as in the one-row
# kernel above, so batched and token-by-token evaluation give identical bits.
# s[t * s_stride] = <x, y_t>, y_t = y + t * y_stride bytes, t = 0..3.

cdef void vec_dot_q4_0_q8_1_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    cdef const block_q4_0* x = <const block_q4_0*>vx
    cdef const block_q8_1* y0 = <const block_q8_1*>vy
    cdef const block_q8_1* y1 = <const block_q8_1*>(<const uint8_t*>vy + y_stride)
    cdef const block_q8_1* y2 = <const block_q8_1*>(<const uint8_t*>vy + 2 * y_stride)
    cdef const block_q8_1* y3 = <const block_q8_1*>(<const uint8_t*>vy + 3 * y_stride)
    cdef __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps()
    cdef __m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps()
    cdef __m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps()
    cdef __m256 a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps()
    cdef __m256i qx
    cdef float dx
    cdef int i, nb = n // QK8_1
    for i in range(nb):
        qx = bytes_from_nibbles_32(x[i].qs)
        dx = fp16_to_fp32(x[i].d)
        if i % 2 == 0 or i == nb - 1 and nb % 2:
            # even blocks (and an odd last one) go to the first accumulator, as in the 1-row kernel
            a00 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y0[i].d), sum_i16_pairs_float(q4_0_pairs(qx, _mm256_loadu_si256(<const __m256i*>y0[i].qs))), a00)
            a10 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y1[i].d), sum_i16_pairs_float(q4_0_pairs(qx, _mm256_loadu_si256(<const __m256i*>y1[i].qs))), a10)
            a20 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y2[i].d), sum_i16_pairs_float(q4_0_pairs(qx, _mm256_loadu_si256(<const __m256i*>y2[i].qs))), a20)
            a30 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y3[i].d), sum_i16_pairs_float(q4_0_pairs(qx, _mm256_loadu_si256(<const __m256i*>y3[i].qs))), a30)
        else:
            a01 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y0[i].d), sum_i16_pairs_float(q4_0_pairs(qx, _mm256_loadu_si256(<const __m256i*>y0[i].qs))), a01)
            a11 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y1[i].d), sum_i16_pairs_float(q4_0_pairs(qx, _mm256_loadu_si256(<const __m256i*>y1[i].qs))), a11)
            a21 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y2[i].d), sum_i16_pairs_float(q4_0_pairs(qx, _mm256_loadu_si256(<const __m256i*>y2[i].qs))), a21)
            a31 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y3[i].d), sum_i16_pairs_float(q4_0_pairs(qx, _mm256_loadu_si256(<const __m256i*>y3[i].qs))), a31)
    s[0] = hsum_float_8(_mm256_add_ps(a00, a01))
    s[s_stride] = hsum_float_8(_mm256_add_ps(a10, a11))
    s[2 * s_stride] = hsum_float_8(_mm256_add_ps(a20, a21))
    s[3 * s_stride] = hsum_float_8(_mm256_add_ps(a30, a31))

cdef void vec_dot_q8_0_q8_1_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    cdef const block_q8_0* x = <const block_q8_0*>vx
    cdef const block_q8_1* y0 = <const block_q8_1*>vy
    cdef const block_q8_1* y1 = <const block_q8_1*>(<const uint8_t*>vy + y_stride)
    cdef const block_q8_1* y2 = <const block_q8_1*>(<const uint8_t*>vy + 2 * y_stride)
    cdef const block_q8_1* y3 = <const block_q8_1*>(<const uint8_t*>vy + 3 * y_stride)
    cdef __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps()
    cdef __m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps()
    cdef __m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps()
    cdef __m256 a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps()
    cdef __m256i qx, ax
    cdef float dx
    cdef int i, nb = n // QK8_1
    for i in range(nb):
        qx = _mm256_loadu_si256(<const __m256i*>x[i].qs)
        ax = _mm256_sign_epi8(qx, qx)
        dx = fp16_to_fp32(x[i].d)
        if i % 2 == 0 or i == nb - 1 and nb % 2:
            a00 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y0[i].d), mul_sum_us8_pairs_float(ax, _mm256_sign_epi8(_mm256_loadu_si256(<const __m256i*>y0[i].qs), qx)), a00)
            a10 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y1[i].d), mul_sum_us8_pairs_float(ax, _mm256_sign_epi8(_mm256_loadu_si256(<const __m256i*>y1[i].qs), qx)), a10)
            a20 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y2[i].d), mul_sum_us8_pairs_float(ax, _mm256_sign_epi8(_mm256_loadu_si256(<const __m256i*>y2[i].qs), qx)), a20)
            a30 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y3[i].d), mul_sum_us8_pairs_float(ax, _mm256_sign_epi8(_mm256_loadu_si256(<const __m256i*>y3[i].qs), qx)), a30)
        else:
            a01 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y0[i].d), mul_sum_us8_pairs_float(ax, _mm256_sign_epi8(_mm256_loadu_si256(<const __m256i*>y0[i].qs), qx)), a01)
            a11 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y1[i].d), mul_sum_us8_pairs_float(ax, _mm256_sign_epi8(_mm256_loadu_si256(<const __m256i*>y1[i].qs), qx)), a11)
            a21 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y2[i].d), mul_sum_us8_pairs_float(ax, _mm256_sign_epi8(_mm256_loadu_si256(<const __m256i*>y2[i].qs), qx)), a21)
            a31 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y3[i].d), mul_sum_us8_pairs_float(ax, _mm256_sign_epi8(_mm256_loadu_si256(<const __m256i*>y3[i].qs), qx)), a31)
    s[0] = hsum_float_8(_mm256_add_ps(a00, a01))
    s[s_stride] = hsum_float_8(_mm256_add_ps(a10, a11))
    s[2 * s_stride] = hsum_float_8(_mm256_add_ps(a20, a21))
    s[3 * s_stride] = hsum_float_8(_mm256_add_ps(a30, a31))


cdef void vec_dot_q4_K_q8_K_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    cdef const block_q4_K* x = <const block_q4_K*>vx
    cdef const block_q8_K* y0 = <const block_q8_K*>vy
    cdef const block_q8_K* y1 = <const block_q8_K*>(<const uint8_t*>vy + y_stride)
    cdef const block_q8_K* y2 = <const block_q8_K*>(<const uint8_t*>vy + 2 * y_stride)
    cdef const block_q8_K* y3 = <const block_q8_K*>(<const uint8_t*>vy + 3 * y_stride)
    cdef __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps()
    cdef __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps(), m2 = _mm256_setzero_ps(), m3 = _mm256_setzero_ps()
    cdef __m256i m4 = _mm256_set1_epi8(0xF)
    cdef __m256i mins16, q4bits, ql, qh, sl, sh, s0, s1, s2, s3
    cdef __m256i sc16
    cdef __m256i shuf[8]
    cdef const uint8_t* q4
    cdef float dx, dmx
    cdef int i, j, o
    for j in range(8):
        shuf[j] = elem_shuffle(j)
    for i in range(n // QK_K):
        mins16 = unpack_k4_scales(x[i].scales, &sc16)
        dx = _cvtsh_ss(x[i].d)
        dmx = _cvtsh_ss(x[i].dmin)
        m0 = _mm256_fmadd_ps(_mm256_set1_ps(y0[i].d * dmx), _mm256_cvtepi32_ps(_mm256_madd_epi16(mins16, _mm256_loadu_si256(<const __m256i*>y0[i].bsums))), m0)
        m1 = _mm256_fmadd_ps(_mm256_set1_ps(y1[i].d * dmx), _mm256_cvtepi32_ps(_mm256_madd_epi16(mins16, _mm256_loadu_si256(<const __m256i*>y1[i].bsums))), m1)
        m2 = _mm256_fmadd_ps(_mm256_set1_ps(y2[i].d * dmx), _mm256_cvtepi32_ps(_mm256_madd_epi16(mins16, _mm256_loadu_si256(<const __m256i*>y2[i].bsums))), m2)
        m3 = _mm256_fmadd_ps(_mm256_set1_ps(y3[i].d * dmx), _mm256_cvtepi32_ps(_mm256_madd_epi16(mins16, _mm256_loadu_si256(<const __m256i*>y3[i].bsums))), m3)
        q4 = x[i].qs
        s0 = _mm256_setzero_si256()
        s1 = _mm256_setzero_si256()
        s2 = _mm256_setzero_si256()
        s3 = _mm256_setzero_si256()
        for j in range(4):
            q4bits = _mm256_loadu_si256(<const __m256i*>(q4 + 32 * j))
            ql = _mm256_and_si256(q4bits, m4)
            qh = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4)
            sl = _mm256_shuffle_epi8(sc16, shuf[2 * j])
            sh = _mm256_shuffle_epi8(sc16, shuf[2 * j + 1])
            o = 64 * j
            s0 = _mm256_add_epi32(s0, _mm256_add_epi32(k_madd(sl, ql, y0[i].qs + o), k_madd(sh, qh, y0[i].qs + o + 32)))
            s1 = _mm256_add_epi32(s1, _mm256_add_epi32(k_madd(sl, ql, y1[i].qs + o), k_madd(sh, qh, y1[i].qs + o + 32)))
            s2 = _mm256_add_epi32(s2, _mm256_add_epi32(k_madd(sl, ql, y2[i].qs + o), k_madd(sh, qh, y2[i].qs + o + 32)))
            s3 = _mm256_add_epi32(s3, _mm256_add_epi32(k_madd(sl, ql, y3[i].qs + o), k_madd(sh, qh, y3[i].qs + o + 32)))
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(y0[i].d * dx), _mm256_cvtepi32_ps(s0), a0)
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(y1[i].d * dx), _mm256_cvtepi32_ps(s1), a1)
        a2 = _mm256_fmadd_ps(_mm256_set1_ps(y2[i].d * dx), _mm256_cvtepi32_ps(s2), a2)
        a3 = _mm256_fmadd_ps(_mm256_set1_ps(y3[i].d * dx), _mm256_cvtepi32_ps(s3), a3)
    s[0] = hsum_float_8(a0) - hsum_float_8(m0)
    s[s_stride] = hsum_float_8(a1) - hsum_float_8(m1)
    s[2 * s_stride] = hsum_float_8(a2) - hsum_float_8(m2)
    s[3 * s_stride] = hsum_float_8(a3) - hsum_float_8(m3)



cdef void vec_dot_q6_K_q8_K_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    cdef const block_q6_K* x = <const block_q6_K*>vx
    cdef const block_q8_K* y0 = <const block_q8_K*>vy
    cdef const block_q8_K* y1 = <const block_q8_K*>(<const uint8_t*>vy + y_stride)
    cdef const block_q8_K* y2 = <const block_q8_K*>(<const uint8_t*>vy + 2 * y_stride)
    cdef const block_q8_K* y3 = <const block_q8_K*>(<const uint8_t*>vy + 3 * y_stride)
    cdef __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps()
    cdef __m256i m4 = _mm256_set1_epi8(0xF)
    cdef __m256i m2 = _mm256_set1_epi8(3)
    cdef __m256i shuf[4]
    cdef __m256i scales, half, qh, ql1, ql2, q, sc, s0, s1, s2, s3
    cdef float dx
    cdef int i, j, k, o
    for k in range(4):
        shuf[k] = pair_shuffle(k)
    for i in range(n // QK_K):
        dx = _cvtsh_ss(x[i].d)
        scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(<const __m128i*>x[i].scales))
        s0 = _mm256_setzero_si256()
        s1 = _mm256_setzero_si256()
        s2 = _mm256_setzero_si256()
        s3 = _mm256_setzero_si256()
        for j in range(2):
            half = _mm256_permute2x128_si256(scales, scales, 0x00 if j == 0 else 0x11)
            qh = _mm256_loadu_si256(<const __m256i*>(x[i].qh + 32 * j))
            ql1 = _mm256_loadu_si256(<const __m256i*>(x[i].ql + 64 * j))
            ql2 = _mm256_loadu_si256(<const __m256i*>(x[i].ql + 64 * j + 32))
            for k in range(4):
                if k == 0:
                    q = q6_chunk(ql1, ql2, qh, 0, m4, m2)
                elif k == 1:
                    q = q6_chunk(ql1, ql2, qh, 1, m4, m2)
                elif k == 2:
                    q = q6_chunk(ql1, ql2, qh, 2, m4, m2)
                else:
                    q = q6_chunk(ql1, ql2, qh, 3, m4, m2)
                sc = _mm256_shuffle_epi8(half, shuf[k])
                o = 128 * j + 32 * k
                s0 = _mm256_add_epi32(s0, k_madd(sc, q, y0[i].qs + o))
                s1 = _mm256_add_epi32(s1, k_madd(sc, q, y1[i].qs + o))
                s2 = _mm256_add_epi32(s2, k_madd(sc, q, y2[i].qs + o))
                s3 = _mm256_add_epi32(s3, k_madd(sc, q, y3[i].qs + o))
        s0 = _mm256_sub_epi32(s0, _mm256_slli_epi32(_mm256_madd_epi16(scales, _mm256_loadu_si256(<const __m256i*>y0[i].bsums)), 5))
        s1 = _mm256_sub_epi32(s1, _mm256_slli_epi32(_mm256_madd_epi16(scales, _mm256_loadu_si256(<const __m256i*>y1[i].bsums)), 5))
        s2 = _mm256_sub_epi32(s2, _mm256_slli_epi32(_mm256_madd_epi16(scales, _mm256_loadu_si256(<const __m256i*>y2[i].bsums)), 5))
        s3 = _mm256_sub_epi32(s3, _mm256_slli_epi32(_mm256_madd_epi16(scales, _mm256_loadu_si256(<const __m256i*>y3[i].bsums)), 5))
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(y0[i].d * dx), _mm256_cvtepi32_ps(s0), a0)
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(y1[i].d * dx), _mm256_cvtepi32_ps(s1), a1)
        a2 = _mm256_fmadd_ps(_mm256_set1_ps(y2[i].d * dx), _mm256_cvtepi32_ps(s2), a2)
        a3 = _mm256_fmadd_ps(_mm256_set1_ps(y3[i].d * dx), _mm256_cvtepi32_ps(s3), a3)
    s[0] = hsum_float_8(a0)
    s[s_stride] = hsum_float_8(a1)
    s[2 * s_stride] = hsum_float_8(a2)
    s[3 * s_stride] = hsum_float_8(a3)

cdef inline __m256i q5_0_signed(const block_q5_0* x) noexcept nogil:
    # q - 16 = nibble | (high bit ? 0 : 0xF0) read as a signed byte
    return _mm256_or_si256(bytes_from_nibbles_32(x.qs), _mm256_andnot_si256(bytes_from_bits_32(x.qh), _mm256_set1_epi8(<char>0xF0)))

cdef inline __m256i q5_1_unsigned(const block_q5_1* x) noexcept nogil:
    return _mm256_or_si256(bytes_from_nibbles_32(x.qs), _mm256_and_si256(bytes_from_bits_32(x.qh), _mm256_set1_epi8(0x10)))

cdef void vec_dot_q5_0_q8_1_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    cdef const block_q5_0* x = <const block_q5_0*>vx
    cdef const block_q8_1* y0 = <const block_q8_1*>vy
    cdef const block_q8_1* y1 = <const block_q8_1*>(<const uint8_t*>vy + y_stride)
    cdef const block_q8_1* y2 = <const block_q8_1*>(<const uint8_t*>vy + 2 * y_stride)
    cdef const block_q8_1* y3 = <const block_q8_1*>(<const uint8_t*>vy + 3 * y_stride)
    cdef __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps()
    cdef __m256i qx, ax
    cdef float dx
    cdef int i
    for i in range(n // QK8_1):
        qx = q5_0_signed(&x[i])
        ax = _mm256_sign_epi8(qx, qx)
        dx = fp16_to_fp32(x[i].d)
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y0[i].d), mul_sum_us8_pairs_float(ax, _mm256_sign_epi8(_mm256_loadu_si256(<const __m256i*>y0[i].qs), qx)), a0)
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y1[i].d), mul_sum_us8_pairs_float(ax, _mm256_sign_epi8(_mm256_loadu_si256(<const __m256i*>y1[i].qs), qx)), a1)
        a2 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y2[i].d), mul_sum_us8_pairs_float(ax, _mm256_sign_epi8(_mm256_loadu_si256(<const __m256i*>y2[i].qs), qx)), a2)
        a3 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y3[i].d), mul_sum_us8_pairs_float(ax, _mm256_sign_epi8(_mm256_loadu_si256(<const __m256i*>y3[i].qs), qx)), a3)
    s[0] = hsum_float_8(a0)
    s[s_stride] = hsum_float_8(a1)
    s[2 * s_stride] = hsum_float_8(a2)
    s[3 * s_stride] = hsum_float_8(a3)

cdef inline void min_x4(float m, const block_q8_1* y0, const block_q8_1* y1, const block_q8_1* y2,
                        const block_q8_1* y3, float* sm) noexcept nogil:
    sm[0] += m * y0.s
    sm[1] += m * y1.s
    sm[2] += m * y2.s
    sm[3] += m * y3.s

cdef void vec_dot_unsigned_q8_1_x4(int n, float* s, int64_t s_stride, const void* vx, int64_t x_size, int five,
                                   const void* vy, int64_t y_stride) noexcept nogil:
    # q4_1 (five=0) and q5_1 (five=1): x = d * q + m, q unsigned; blocks start with d, m
    cdef const uint8_t* xb
    cdef const block_q8_1* y0 = <const block_q8_1*>vy
    cdef const block_q8_1* y1 = <const block_q8_1*>(<const uint8_t*>vy + y_stride)
    cdef const block_q8_1* y2 = <const block_q8_1*>(<const uint8_t*>vy + 2 * y_stride)
    cdef const block_q8_1* y3 = <const block_q8_1*>(<const uint8_t*>vy + 3 * y_stride)
    cdef __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps()
    cdef float sm[4]
    cdef __m256i qx
    cdef float dx
    cdef int i
    sm[0] = sm[1] = sm[2] = sm[3] = 0.0
    for i in range(n // QK8_1):
        xb = <const uint8_t*>vx + i * x_size
        if five:
            qx = q5_1_unsigned(<const block_q5_1*>xb)
        else:
            qx = bytes_from_nibbles_32((<const block_q4_1*>xb).qs)
        dx = fp16_to_fp32((<const uint16_t*>xb)[0])
        min_x4(fp16_to_fp32((<const uint16_t*>xb)[1]), &y0[i], &y1[i], &y2[i], &y3[i], sm)
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y0[i].d), mul_sum_us8_pairs_float(qx, _mm256_loadu_si256(<const __m256i*>y0[i].qs)), a0)
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y1[i].d), mul_sum_us8_pairs_float(qx, _mm256_loadu_si256(<const __m256i*>y1[i].qs)), a1)
        a2 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y2[i].d), mul_sum_us8_pairs_float(qx, _mm256_loadu_si256(<const __m256i*>y2[i].qs)), a2)
        a3 = _mm256_fmadd_ps(_mm256_set1_ps(dx * y3[i].d), mul_sum_us8_pairs_float(qx, _mm256_loadu_si256(<const __m256i*>y3[i].qs)), a3)
    s[0] = hsum_float_8(a0) + sm[0]
    s[s_stride] = hsum_float_8(a1) + sm[1]
    s[2 * s_stride] = hsum_float_8(a2) + sm[2]
    s[3 * s_stride] = hsum_float_8(a3) + sm[3]

cdef void vec_dot_q4_1_q8_1_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    vec_dot_unsigned_q8_1_x4(n, s, s_stride, vx, sizeof(block_q4_1), 0, vy, y_stride)

cdef void vec_dot_q5_1_q8_1_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    vec_dot_unsigned_q8_1_x4(n, s, s_stride, vx, sizeof(block_q5_1), 1, vy, y_stride)

cdef void init_avx2_x4_traits() noexcept nogil:
    VEC_DOT_X4[GGML_TYPE_Q4_0] = vec_dot_q4_0_q8_1_x4_avx2
    VEC_DOT_X4[GGML_TYPE_Q8_0] = vec_dot_q8_0_q8_1_x4_avx2
    VEC_DOT_X4[GGML_TYPE_Q4_1] = vec_dot_q4_1_q8_1_x4_avx2
    VEC_DOT_X4[GGML_TYPE_Q5_0] = vec_dot_q5_0_q8_1_x4_avx2
    VEC_DOT_X4[GGML_TYPE_Q5_1] = vec_dot_q5_1_q8_1_x4_avx2
    VEC_DOT_X4[GGML_TYPE_Q4_K] = vec_dot_q4_K_q8_K_x4_avx2
    VEC_DOT_X4[GGML_TYPE_Q6_K] = vec_dot_q6_K_q8_K_x4_avx2
