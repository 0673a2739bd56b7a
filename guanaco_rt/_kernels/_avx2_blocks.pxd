# cython: language_level=3
# AVX2 building blocks of the avx2 unit: horizontal sums, nibble and bit unpacking,
# integer multiply-adds and the per-format decoders, as inline functions. Cimport only
# from modules built with -mavx2 -mfma -mf16c.
from libc.stdint cimport uint8_t, int8_t, uint32_t, int64_t

from guanaco_rt._kernels.ggml_blocks cimport block_q5_0, block_q5_1
from guanaco_rt._kernels._common cimport load_u32
from guanaco_rt._kernels.avx2_intrin cimport *


cdef inline float hsum_float_8(__m256 x) noexcept nogil:
    cdef __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x))
    r = _mm_add_ps(r, _mm_movehl_ps(r, r))
    r = _mm_add_ss(r, _mm_movehdup_ps(r))
    return _mm_cvtss_f32(r)

cdef inline int hsum_i32_8(__m256i x) noexcept nogil:
    cdef __m128i r = _mm_add_epi32(_mm256_extracti128_si256(x, 1), _mm256_castsi256_si128(x))
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0x4E))
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0xB1))
    return _mm_cvtsi128_si32(r)

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

cdef inline __m256i q2_chunk(__m256i bits, int k, __m256i m3) noexcept nogil:
    # the 2-bit values at bit pair k of 32 bytes (k is a literal at every call: immediate shifts)
    if k == 0:
        return _mm256_and_si256(bits, m3)
    if k == 1:
        return _mm256_and_si256(_mm256_srli_epi16(bits, 2), m3)
    if k == 2:
        return _mm256_and_si256(_mm256_srli_epi16(bits, 4), m3)
    return _mm256_and_si256(_mm256_srli_epi16(bits, 6), m3)

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

cdef inline __m256i q6_chunk(__m256i ql1, __m256i ql2, __m256i qh, int k, __m256i m4, __m256i m2) noexcept nogil:
    # 6-bit values (0..63) of weights 32k.. of a 128-half (k a literal at every call)
    if k == 0:
        return _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4))
    if k == 1:
        return _mm256_or_si256(_mm256_and_si256(ql2, m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4))
    if k == 2:
        return _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4))
    return _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql2, 4), m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4))

cdef inline __m256i q5_0_signed(const block_q5_0* x) noexcept nogil:
    # q - 16 = nibble | (high bit ? 0 : 0xF0) read as a signed byte
    return _mm256_or_si256(bytes_from_nibbles_32(x.qs),
                           _mm256_andnot_si256(bytes_from_bits_32(x.qh), _mm256_set1_epi8(<char>0xF0)))

cdef inline __m256i q5_1_unsigned(const block_q5_1* x) noexcept nogil:
    return _mm256_or_si256(bytes_from_nibbles_32(x.qs),
                           _mm256_and_si256(bytes_from_bits_32(x.qh), _mm256_set1_epi8(0x10)))
