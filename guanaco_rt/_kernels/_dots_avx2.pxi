# AVX2 + FMA + F16C dot products. Same math as _dots_generic.pxi, 32 bytes at a
# time: integer products with maddubs (u8 x s8 -> pairs of i16) and madd (i16 x
# i16 -> i32), one float FMA per block or sub-block. They agree with the generic
# kernels up to float summation order (tests/test_isa.py).
from guanaco_rt._kernels.avx2_intrin cimport *

cdef inline float hsum_float_8(__m256 x) noexcept nogil:
    cdef __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x))
    r = _mm_add_ps(r, _mm_movehl_ps(r, r))
    r = _mm_add_ss(r, _mm_movehdup_ps(r))
    return _mm_cvtss_f32(r)

cdef inline __m256i bytes_from_nibbles_32(const uint8_t* p) noexcept nogil:
    # 16 bytes -> 32: low nibbles to bytes 0..15, high nibbles to bytes 16..31
    cdef __m128i t = _mm_loadu_si128(<const __m128i*>p)
    cdef __m256i b = _mm256_insertf128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1)
    return _mm256_and_si256(_mm256_set1_epi8(0x0F), b)

cdef inline __m256i bytes_from_bits_32(const uint8_t* p) noexcept nogil:
    # bit j of a little-endian uint32 -> byte j = 0xFF if set, else 0
    cdef uint32_t x32 = load_u32(p)
    cdef __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                          0x0101010101010101, 0x0000000000000000)
    cdef __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32(<int>x32), shuf)
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe))
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1))

cdef inline __m256 sum_i16_pairs_float(__m256i x) noexcept nogil:
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), x))

cdef inline __m256 mul_sum_us8_pairs_float(__m256i ax, __m256i sy) noexcept nogil:
    # unsigned x signed bytes: |sum of a pair| <= 2*255*128 fits i16 only for small ax
    return sum_i16_pairs_float(_mm256_maddubs_epi16(ax, sy))

cdef inline __m256 mul_sum_i8_pairs_float(__m256i x, __m256i y) noexcept nogil:
    # signed x signed: move x's sign onto y (maddubs wants its first operand unsigned);
    # relies on y never being -128 (q8_0 activations are in [-127, 127])
    return mul_sum_us8_pairs_float(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))

cdef inline __m256i scales_pair(int lo, int hi) noexcept nogil:
    # 16 x i16: lo in the low 128-bit lane, hi in the high one
    return _mm256_set_m128i(_mm_set1_epi16(<short>hi), _mm_set1_epi16(<short>lo))

cdef inline __m256i shr16(__m256i x, int n) noexcept nogil:
    return _mm256_srl_epi16(x, _mm_cvtsi32_si128(n))

cdef void vec_dot_q4_0_q8_0_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q4_0* x = <const block_q4_0*>vx
    cdef const block_q8_0* y = <const block_q8_0*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef __m256i off = _mm256_set1_epi8(8)
    cdef __m256i qx
    cdef int i
    for i in range(n // QK8_0):
        qx = _mm256_sub_epi8(bytes_from_nibbles_32(x[i].qs), off)
        acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(x[i].d) * _cvtsh_ss(y[i].d)),
                              mul_sum_i8_pairs_float(qx, _mm256_loadu_si256(<const __m256i*>y[i].qs)), acc)
    s[0] = hsum_float_8(acc)

cdef void vec_dot_q4_1_q8_1_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q4_1* x = <const block_q4_1*>vx
    cdef const block_q8_1* y = <const block_q8_1*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef float summs = 0.0
    cdef int i
    for i in range(n // QK8_1):
        summs += _cvtsh_ss(x[i].m) * y[i].s
        acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(x[i].d) * y[i].d),
                              mul_sum_us8_pairs_float(bytes_from_nibbles_32(x[i].qs),
                                                      _mm256_loadu_si256(<const __m256i*>y[i].qs)), acc)
    s[0] = hsum_float_8(acc) + summs

cdef void vec_dot_q5_0_q8_0_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q5_0* x = <const block_q5_0*>vx
    cdef const block_q8_0* y = <const block_q8_0*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef __m256i hi_off = _mm256_set1_epi8(<char>0xF0)
    cdef __m256i qx
    cdef int i
    for i in range(n // QK8_0):
        # q - 16 = nibble | (high bit ? 0 : 0xF0) read as a signed byte
        qx = _mm256_or_si256(bytes_from_nibbles_32(x[i].qs), _mm256_andnot_si256(bytes_from_bits_32(x[i].qh), hi_off))
        acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(x[i].d) * _cvtsh_ss(y[i].d)),
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
        summs += _cvtsh_ss(x[i].m) * y[i].s
        qx = _mm256_or_si256(bytes_from_nibbles_32(x[i].qs), _mm256_and_si256(bytes_from_bits_32(x[i].qh), bit4))
        acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(x[i].d) * y[i].d),
                              mul_sum_us8_pairs_float(qx, _mm256_loadu_si256(<const __m256i*>y[i].qs)), acc)
    s[0] = hsum_float_8(acc) + summs

cdef void vec_dot_q8_0_q8_0_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q8_0* x = <const block_q8_0*>vx
    cdef const block_q8_0* y = <const block_q8_0*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef int i
    for i in range(n // QK8_0):
        acc = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(x[i].d) * _cvtsh_ss(y[i].d)),
                              mul_sum_i8_pairs_float(_mm256_loadu_si256(<const __m256i*>x[i].qs),
                                                     _mm256_loadu_si256(<const __m256i*>y[i].qs)), acc)
    s[0] = hsum_float_8(acc)

cdef void vec_dot_q2_K_q8_K_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q2_K* x = <const block_q2_K*>vx
    cdef const block_q8_K* y = <const block_q8_K*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef __m256i m3 = _mm256_set1_epi8(3)
    cdef __m256i q2bits, sumi, p
    cdef const uint8_t* q2
    cdef const int8_t* q8
    cdef const uint8_t* sc
    cdef int i, j, k, b, summs
    cdef float mins = 0.0
    for i in range(n // QK_K):
        sc = x[i].scales
        summs = 0
        for j in range(16):
            summs += y[i].bsums[j] * (sc[j] >> 4)
        q2 = x[i].qs
        q8 = y[i].qs
        sumi = _mm256_setzero_si256()
        for j in range(2):
            q2bits = _mm256_loadu_si256(<const __m256i*>q2)
            for k in range(4):
                b = 8 * j + 2 * k
                p = _mm256_maddubs_epi16(_mm256_and_si256(shr16(q2bits, 2 * k), m3),
                                         _mm256_loadu_si256(<const __m256i*>(q8 + 32 * k)))
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scales_pair(sc[b] & 0xF, sc[b + 1] & 0xF), p))
            q2 += 32
            q8 += 128
        mins += y[i].d * _cvtsh_ss(x[i].dmin) * summs
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].d)), _mm256_cvtepi32_ps(sumi), acc)
    s[0] = hsum_float_8(acc) - mins

cdef void vec_dot_q3_K_q8_K_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q3_K* x = <const block_q3_K*>vx
    cdef const block_q8_K* y = <const block_q8_K*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef __m256i m3 = _mm256_set1_epi8(3)
    cdef __m256i four = _mm256_set1_epi8(4)
    cdef __m256i hbits, q3bits, q8v, sumi, p, lowq, hsub
    cdef const uint8_t* q3
    cdef const int8_t* q8
    cdef int8_t sc[16]
    cdef int i, j, k, b, bit
    for i in range(n // QK_K):
        unpack_q3_K_scales(x[i].scales, sc)
        hbits = _mm256_loadu_si256(<const __m256i*>x[i].hmask)
        q3 = x[i].qs
        q8 = y[i].qs
        sumi = _mm256_setzero_si256()
        bit = 0
        for j in range(2):
            q3bits = _mm256_loadu_si256(<const __m256i*>q3)
            for k in range(4):
                b = 8 * j + 2 * k
                lowq = _mm256_and_si256(shr16(q3bits, 2 * k), m3)
                # 4 where the high bit is clear: q = low - 4
                hsub = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, _mm256_set1_epi8(<char>(1 << bit))),
                                                          _mm256_setzero_si256()), four)
                q8v = _mm256_loadu_si256(<const __m256i*>(q8 + 32 * k))
                p = _mm256_sub_epi16(_mm256_maddubs_epi16(lowq, q8v), _mm256_maddubs_epi16(hsub, q8v))
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scales_pair(sc[b], sc[b + 1]), p))
                bit += 1
            q3 += 32
            q8 += 128
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].d)), _mm256_cvtepi32_ps(sumi), acc)
    s[0] = hsum_float_8(acc)

cdef inline int q4_K_mins_dot(const uint8_t* scales, const int16_t* bsums, uint8_t* sc) noexcept nogil:
    # unpack the 8 six-bit scales into sc and return sum_j m_j * (bsums[2j] + bsums[2j+1])
    cdef uint8_t m
    cdef int j, summs = 0
    for j in range(8):
        get_scale_min_k4(j, scales, &sc[j], &m)
        summs += (bsums[2 * j] + bsums[2 * j + 1]) * m
    return summs

cdef void vec_dot_q4_K_q8_K_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q4_K* x = <const block_q4_K*>vx
    cdef const block_q8_K* y = <const block_q8_K*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef __m256i m4 = _mm256_set1_epi8(0xF)
    cdef __m256i q4bits, sumi, pl, ph
    cdef const uint8_t* q4
    cdef const int8_t* q8
    cdef uint8_t sc[8]
    cdef int i, j, summs
    cdef float mins = 0.0
    for i in range(n // QK_K):
        summs = q4_K_mins_dot(x[i].scales, y[i].bsums, sc)
        mins += y[i].d * _cvtsh_ss(x[i].dmin) * summs
        q4 = x[i].qs
        q8 = y[i].qs
        sumi = _mm256_setzero_si256()
        for j in range(4):
            q4bits = _mm256_loadu_si256(<const __m256i*>q4)
            pl = _mm256_maddubs_epi16(_mm256_and_si256(q4bits, m4), _mm256_loadu_si256(<const __m256i*>q8))
            ph = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4),
                                      _mm256_loadu_si256(<const __m256i*>(q8 + 32)))
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_set1_epi16(sc[2 * j]), pl))
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_set1_epi16(sc[2 * j + 1]), ph))
            q4 += 32
            q8 += 64
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].d)), _mm256_cvtepi32_ps(sumi), acc)
    s[0] = hsum_float_8(acc) - mins

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
    cdef uint8_t sc[8]
    cdef int i, j, summs
    cdef float mins = 0.0
    for i in range(n // QK_K):
        summs = q4_K_mins_dot(x[i].scales, y[i].bsums, sc)
        mins += y[i].d * _cvtsh_ss(x[i].dmin) * summs
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
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_set1_epi16(sc[2 * j]), pl))
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_set1_epi16(sc[2 * j + 1]), ph))
            q5 += 32
            q8 += 64
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].d)), _mm256_cvtepi32_ps(sumi), acc)
    s[0] = hsum_float_8(acc) - mins

cdef void vec_dot_q6_K_q8_K_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q6_K* x = <const block_q6_K*>vx
    cdef const block_q8_K* y = <const block_q8_K*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef __m256i m4 = _mm256_set1_epi8(0xF)
    cdef __m256i m2 = _mm256_set1_epi8(3)
    cdef __m256i m32s = _mm256_set1_epi8(32)
    cdef __m256i qh, ql1, ql2, q8v, sumi, p, q
    cdef const uint8_t* ql
    cdef const uint8_t* qhp
    cdef const int8_t* q8
    cdef const int8_t* sc
    cdef int i, j, k
    for i in range(n // QK_K):
        ql = x[i].ql
        qhp = x[i].qh
        q8 = y[i].qs
        sc = x[i].scales
        sumi = _mm256_setzero_si256()
        for j in range(2):
            qh = _mm256_loadu_si256(<const __m256i*>qhp)
            ql1 = _mm256_loadu_si256(<const __m256i*>ql)
            ql2 = _mm256_loadu_si256(<const __m256i*>(ql + 32))
            for k in range(4):
                # k = 0..3: weights 32k.. of this half; low 4 bits from ql1/ql2 low or
                # high nibbles, high 2 bits from qh bit pair k, moved to bits 4-5
                if k == 0:
                    q = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4))
                elif k == 1:
                    q = _mm256_or_si256(_mm256_and_si256(ql2, m4),
                                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4))
                elif k == 2:
                    q = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4))
                else:
                    q = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql2, 4), m4),
                                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4))
                q8v = _mm256_loadu_si256(<const __m256i*>(q8 + 32 * k))
                # (q - 32) * y = q*y - 32*y, both through maddubs (q <= 63 keeps i16 safe)
                p = _mm256_sub_epi16(_mm256_maddubs_epi16(q, q8v), _mm256_maddubs_epi16(m32s, q8v))
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scales_pair(sc[2 * k], sc[2 * k + 1]), p))
            ql += 64
            qhp += 32
            q8 += 128
            sc += 8
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].d)), _mm256_cvtepi32_ps(sumi), acc)
    s[0] = hsum_float_8(acc)

cdef void init_avx2_traits() noexcept nogil:
    VEC_DOT[GGML_TYPE_Q4_0] = vec_dot_q4_0_q8_0_avx2
    VEC_DOT[GGML_TYPE_Q4_1] = vec_dot_q4_1_q8_1_avx2
    VEC_DOT[GGML_TYPE_Q5_0] = vec_dot_q5_0_q8_0_avx2
    VEC_DOT[GGML_TYPE_Q5_1] = vec_dot_q5_1_q8_1_avx2
    VEC_DOT[GGML_TYPE_Q8_0] = vec_dot_q8_0_q8_0_avx2
    VEC_DOT[GGML_TYPE_Q2_K] = vec_dot_q2_K_q8_K_avx2
    VEC_DOT[GGML_TYPE_Q3_K] = vec_dot_q3_K_q8_K_avx2
    VEC_DOT[GGML_TYPE_Q4_K] = vec_dot_q4_K_q8_K_avx2
    VEC_DOT[GGML_TYPE_Q5_K] = vec_dot_q5_K_q8_K_avx2
    VEC_DOT[GGML_TYPE_Q6_K] = vec_dot_q6_K_q8_K_avx2
