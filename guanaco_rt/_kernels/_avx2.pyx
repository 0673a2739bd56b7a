# cython: language_level=3
"""The AVX2 + FMA + F16C ISA unit; compiled with those flags only.

Import it only after cpuid says the CPU has them (guanaco_rt._kernels.dispatch).
Same math as the generic unit, 32 bytes at a time: integer products with maddubs
(u8 x s8 -> pairs of i16) and madd (i16 x i16 -> i32), one float FMA per block or
sub-block. They agree with the generic kernels up to float summation order
(tests/test_isa.py).
"""
from libc.stdint cimport uint8_t, int8_t, uint16_t, int32_t, int64_t
from cpython.pycapsule cimport PyCapsule_New

from guanaco_rt._kernels.ggml_blocks cimport *
from guanaco_rt._kernels._common cimport fp16_to_fp32, fill_fp16_table, load_u32
from guanaco_rt._kernels._isa cimport isa_kernels_t, ISA_CAPSULE
from guanaco_rt._kernels.avx2_intrin cimport *
from guanaco_rt._kernels._avx2_blocks cimport *

ISA = "avx2"

DEF PREFETCH = 4096

cdef inline const uint8_t* prefetch_until(const uint8_t* pf, const uint8_t* end) noexcept nogil:
    # the lines from pf to PREFETCH past end, each once; returns the next one. A token's pass
    # reads each weight once, and with the hardware prefetcher alone the one-token loops waited
    # on memory: a 7B-size q6_K matrix streamed at 11.5 GB/s on 2 threads, 20.8 with a prefetch
    # (q4_0 16 -> 20.8). Each loop keeps its cursor pf, starting PREFETCH past its first byte:
    # a step is rarely a line (q8_0: 68 bytes a pair; q4_0x8: 144 a block), and asking for
    # every line of each step asked for up to 2.9x the lines read, issue slots for nothing
    # (7B q8_0 generation 3.51 -> 3.75 tok/s, median of 5 alternating pairs, every pair faster)
    while pf < end + PREFETCH:
        _mm_prefetch(<const char*>pf, _MM_HINT_T0)
        pf += 64
    return pf

cdef inline void prefetch_slice(const uint8_t* blk, int64_t size, int idx, int nslices) noexcept nogil:
    # slice idx of nslices of the size bytes at blk, PREFETCH ahead, for the 8-row k-quant
    # blocks (672-1680 bytes): their lines requested a few at a time through the block, not all
    # 11-27 at its start, where they waited on the core's outstanding-miss slots. A lone
    # 7B-size matrix on 2 threads, matmuls per 3 s, 4 alternating rounds: q6_K +12%, q5_K +13%,
    # q4_K +6%, q2_K +2%; 7B q6_K generation 2.46 -> 3.05 tok/s (median of 5 alternating pairs)
    cdef int64_t step = ((size + nslices - 1) // nslices + 63) // 64 * 64
    cdef int64_t lo = idx * step
    if lo < size:
        prefetch_until(blk + lo + PREFETCH, blk + min(lo + step, size))

# f16 -> f32 of the weight scales: the 32-weight block kernels look them up in the
# fp16 table (two loads) rather than vpinsrw + vcvtph2ps (two shuffle/convert uops on the
# busy ports): +8-11% for q4_0/q5_0/q5_1. The k-quants convert one scale per 256 weights
# and use F16C.

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
    cdef const uint8_t* pf = <const uint8_t*>x + PREFETCH
    for i in range(0, nb - 1, 2):
        pf = prefetch_until(pf, <const uint8_t*>&x[i + 2])
        a0 = q4_0_q8_1_block(&x[i], &y[i], a0)
        a1 = q4_0_q8_1_block(&x[i + 1], &y[i + 1], a1)
    if nb % 2:
        a0 = q4_0_q8_1_block(&x[nb - 1], &y[nb - 1], a0)
    s[0] = hsum_float_8(_mm256_add_ps(a0, a1))

cdef inline __m256i unsigned_quants(const uint8_t* xb, bint five) noexcept nogil:
    return q5_1_unsigned(<const block_q5_1*>xb) if five else bytes_from_nibbles_32((<const block_q4_1*>xb).qs)

cdef inline void unsigned_q8_1_block(const uint8_t* xb, bint five, const block_q8_1* y, __m256* acc,
                                     float* sm) noexcept nogil:
    # one q4_1 (five=0) or q5_1 (five=1) block: x = d * q + m with q unsigned; both blocks
    # start with d, m. The float operations every variant repeats, in this order.
    cdef __m256i qx = unsigned_quants(xb, five)
    sm[0] = sm[0] + fp16_to_fp32((<const uint16_t*>xb)[1]) * y.s
    acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32((<const uint16_t*>xb)[0]) * y.d),
                             mul_sum_us8_pairs_float(qx, _mm256_loadu_si256(<const __m256i*>y.qs)), acc[0])

cdef inline void vec_dot_unsigned_q8_1(int n, float* s, const void* vx, int64_t x_size, bint five,
                                       const void* vy) noexcept nogil:
    # even blocks to a0 and sm0, odd to a1 and sm1: two short dependency chains, not one
    # long one (the kernel was bound by the FMA latency)
    cdef const block_q8_1* y = <const block_q8_1*>vy
    cdef const uint8_t* xb = <const uint8_t*>vx
    cdef __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps()
    cdef float sm0 = 0.0, sm1 = 0.0
    cdef int i, nb = n // QK8_1
    cdef const uint8_t* pf = xb + PREFETCH
    for i in range(0, nb - 1, 2):
        pf = prefetch_until(pf, xb + (i + 2) * x_size)
        unsigned_q8_1_block(xb + i * x_size, five, &y[i], &a0, &sm0)
        unsigned_q8_1_block(xb + (i + 1) * x_size, five, &y[i + 1], &a1, &sm1)
    if nb % 2:
        unsigned_q8_1_block(xb + (nb - 1) * x_size, five, &y[nb - 1], &a0, &sm0)
    s[0] = hsum_float_8(_mm256_add_ps(a0, a1)) + (sm0 + sm1)

cdef void vec_dot_q4_1_q8_1_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    vec_dot_unsigned_q8_1(n, s, vx, sizeof(block_q4_1), False, vy)

cdef void vec_dot_q5_1_q8_1_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    vec_dot_unsigned_q8_1(n, s, vx, sizeof(block_q5_1), True, vy)

cdef void vec_dot_q5_0_q8_1_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q5_0* x = <const block_q5_0*>vx
    cdef const block_q8_1* y = <const block_q8_1*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef __m256i hi_off = _mm256_set1_epi8(<char>0xF0)
    cdef __m256i qx
    cdef int i
    cdef const uint8_t* pf = <const uint8_t*>x + PREFETCH
    for i in range(n // QK8_1):
        pf = prefetch_until(pf, <const uint8_t*>&x[i + 1])
        # q - 16 = nibble | (high bit ? 0 : 0xF0) read as a signed byte
        qx = _mm256_or_si256(bytes_from_nibbles_32(x[i].qs), _mm256_andnot_si256(bytes_from_bits_32(x[i].qh), hi_off))
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(x[i].d) * y[i].d),
                              mul_sum_i8_pairs_float(qx, _mm256_loadu_si256(<const __m256i*>y[i].qs)), acc)
    s[0] = hsum_float_8(acc)

cdef void vec_dot_q8_0_q8_1_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q8_0* x = <const block_q8_0*>vx
    cdef const block_q8_1* y = <const block_q8_1*>vy
    cdef __m256 acc0 = _mm256_setzero_ps()
    cdef __m256 acc1 = _mm256_setzero_ps()
    cdef int i, nb = n // QK8_1
    cdef const uint8_t* pf = <const uint8_t*>x + PREFETCH
    for i in range(0, nb - 1, 2):
        pf = prefetch_until(pf, <const uint8_t*>&x[i + 2])
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
    cdef const uint8_t* pf = <const uint8_t*>x + PREFETCH
    for i in range(n // QK_K):
        pf = prefetch_until(pf, <const uint8_t*>&x[i + 1])
        raw = _mm_loadu_si128(<const __m128i*>x[i].scales)
        # mins (high nibbles) against the 16 block sums of the activation
        p = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), m4)),
                              _mm256_loadu_si256(<const __m256i*>y[i].bsums))
        accm = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].dmin)), _mm256_cvtepi32_ps(p), accm)
        scales = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m4))      # 16 x i16
        q2 = <const uint8_t*>&x[i].qs[0]
        q8 = <const int8_t*>&y[i].qs[0]
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
    # chunk c (32 weights: sub-blocks 2c, 2c+1) is bit pair c % 4 of qs half c // 4; every
    # bit index below is a literal (immediate shifts), so the 8 chunks are written out
    cdef __m256i sumi = k_madd(_mm256_shuffle_epi8(lo, shuf[0]),
                               _mm256_or_si256(q2_chunk(q0, 0, m3), q3_hbit4(hbits, 0)), y.qs)
    sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(lo, shuf[1]),
                                         _mm256_or_si256(q2_chunk(q0, 1, m3), q3_hbit4(hbits, 1)), y.qs + 32))
    sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(lo, shuf[2]),
                                         _mm256_or_si256(q2_chunk(q0, 2, m3), q3_hbit4(hbits, 2)), y.qs + 64))
    sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(lo, shuf[3]),
                                         _mm256_or_si256(q2_chunk(q0, 3, m3), q3_hbit4(hbits, 3)), y.qs + 96))
    sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(hi, shuf[0]),
                                         _mm256_or_si256(q2_chunk(q1, 0, m3), q3_hbit4(hbits, 4)), y.qs + 128))
    sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(hi, shuf[1]),
                                         _mm256_or_si256(q2_chunk(q1, 1, m3), q3_hbit4(hbits, 5)), y.qs + 160))
    sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(hi, shuf[2]),
                                         _mm256_or_si256(q2_chunk(q1, 2, m3), q3_hbit4(hbits, 6)), y.qs + 192))
    sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(hi, shuf[3]),
                                         _mm256_or_si256(q2_chunk(q1, 3, m3), q3_hbit4(hbits, 7)), y.qs + 224))
    return _mm256_sub_epi32(sumi, _mm256_slli_epi32(
        _mm256_madd_epi16(scales, _mm256_loadu_si256(<const __m256i*>y.bsums)), 2))

cdef void vec_dot_q3_K_q8_K_avx2(int n, float* s, const void* vx, const void* vy) noexcept nogil:
    cdef const block_q3_K* x = <const block_q3_K*>vx
    cdef const block_q8_K* y = <const block_q8_K*>vy
    cdef __m256 acc = _mm256_setzero_ps()
    cdef __m256i shuf[4]
    cdef int i, k
    for k in range(4):
        shuf[k] = pair_shuffle(k)
    cdef const uint8_t* pf = <const uint8_t*>x + PREFETCH
    for i in range(n // QK_K):
        pf = prefetch_until(pf, <const uint8_t*>&x[i + 1])
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].d)),
                              _mm256_cvtepi32_ps(q3_K_block_sumi(&x[i], &y[i], shuf)), acc)
    s[0] = hsum_float_8(acc)

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
    cdef const uint8_t* pf = <const uint8_t*>x + PREFETCH
    for i in range(n // QK_K):
        pf = prefetch_until(pf, <const uint8_t*>&x[i + 1])
        mins16 = unpack_k4_scales(x[i].scales, &sc16)
        accm = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].dmin)),
                               _mm256_cvtepi32_ps(_mm256_madd_epi16(mins16,
                                                                    _mm256_loadu_si256(<const __m256i*>y[i].bsums))),
                               accm)
        q4 = <const uint8_t*>&x[i].qs[0]
        q8 = <const int8_t*>&y[i].qs[0]
        sumi = _mm256_setzero_si256()
        for j in range(4):
            q4bits = _mm256_loadu_si256(<const __m256i*>(q4 + 32 * j))
            sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(sc16, shuf[2 * j]), _mm256_and_si256(q4bits, m4),
                                                 q8 + 64 * j))
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
    cdef const uint8_t* pf = <const uint8_t*>x + PREFETCH
    for i in range(n // QK_K):
        pf = prefetch_until(pf, <const uint8_t*>&x[i + 1])
        mins16 = unpack_k4_scales(x[i].scales, &sc16)
        accm = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].dmin)),
                               _mm256_cvtepi32_ps(_mm256_madd_epi16(mins16,
                                                                    _mm256_loadu_si256(<const __m256i*>y[i].bsums))),
                               accm)
        hbits = _mm256_loadu_si256(<const __m256i*>x[i].qh)
        q5 = <const uint8_t*>&x[i].qs[0]
        q8 = <const int8_t*>&y[i].qs[0]
        sumi = _mm256_setzero_si256()
        for j in range(4):
            q5bits = _mm256_loadu_si256(<const __m256i*>q5)
            # 16 where bit 2j (resp. 2j+1) of qh is set
            hl = _mm256_andnot_si256(
                _mm256_cmpeq_epi8(_mm256_and_si256(hbits, _mm256_set1_epi8(<char>(1 << (2 * j)))), zero), bit4)
            hh = _mm256_andnot_si256(
                _mm256_cmpeq_epi8(_mm256_and_si256(hbits, _mm256_set1_epi8(<char>(2 << (2 * j)))), zero), bit4)
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
        # the chunk index is a literal at each q6_chunk call (immediate shifts)
        sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(half, shuf[0]), q6_chunk(ql1, ql2, qh, 0, m4, m2),
                                             y.qs + 128 * j))
        sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(half, shuf[1]), q6_chunk(ql1, ql2, qh, 1, m4, m2),
                                             y.qs + 128 * j + 32))
        sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(half, shuf[2]), q6_chunk(ql1, ql2, qh, 2, m4, m2),
                                             y.qs + 128 * j + 64))
        sumi = _mm256_add_epi32(sumi, k_madd(_mm256_shuffle_epi8(half, shuf[3]), q6_chunk(ql1, ql2, qh, 3, m4, m2),
                                             y.qs + 128 * j + 96))
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
    cdef const uint8_t* pf = <const uint8_t*>x + PREFETCH
    for i in range(n // QK_K):
        pf = prefetch_until(pf, <const uint8_t*>&x[i + 1])
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[i].d * _cvtsh_ss(x[i].d)),
                              _mm256_cvtepi32_ps(q6_K_block_sumi(&x[i], &y[i], shuf, m4, m2)), acc)
    s[0] = hsum_float_8(acc)


# ---- four activation rows at once (prompt batches) --------------------------------------
# One weight row against 4 activation rows: the weight block is decoded once and used
# 4 times. Each token's float operations happen in the same order as in the one-row
# kernel above, so batched and token-by-token evaluation give identical bits.
# s[t * s_stride] = <x, y_t>, y_t = y + t * y_stride bytes, t = 0..3. The loops over t
# have a constant trip count: the compiler unrolls them and keeps acc[] in registers.

cdef inline void rows4(const void* vy, int64_t y_stride, const void** y) noexcept nogil:
    cdef int t
    for t in range(4):
        y[t] = <const uint8_t*>vy + t * y_stride

cdef inline void zero4(__m256* acc) noexcept nogil:
    cdef int t
    for t in range(4):
        acc[t] = _mm256_setzero_ps()

cdef inline void store4(float* s, int64_t s_stride, const __m256* a, const __m256* b) noexcept nogil:
    # s_t = hsum(a_t + b_t): the one-row kernels' final reduction of their two accumulators
    cdef int t
    for t in range(4):
        s[t * s_stride] = hsum_float_8(_mm256_add_ps(a[t], b[t]))

cdef inline __m256 x4_scales(float dx, const float* ds) noexcept nogil:
    # dx * [d0 d1 d2 d3] (twice) from a block's packed [d0..d3 s0..s3] (pack_q8_1_x4): one load
    # and one multiply for the 4 tokens' scales, the same products as dx * y[t].d
    return _mm256_mul_ps(_mm256_set1_ps(dx), _mm256_broadcast_ps(<const __m128*>ds))

cdef inline void fma4(__m256* acc, __m256 sc, __m256 p0, __m256 p1, __m256 p2, __m256 p3) noexcept nogil:
    # acc[t] += scale t * p_t, each scale spread to 8 lanes by a permute (not a multiply-port op)
    acc[0] = _mm256_fmadd_ps(_mm256_permute_ps(sc, 0x00), p0, acc[0])
    acc[1] = _mm256_fmadd_ps(_mm256_permute_ps(sc, 0x55), p1, acc[1])
    acc[2] = _mm256_fmadd_ps(_mm256_permute_ps(sc, 0xAA), p2, acc[2])
    acc[3] = _mm256_fmadd_ps(_mm256_permute_ps(sc, 0xFF), p3, acc[3])

cdef inline __m256 q4_0_x4_pair(__m256i qx, const block_q8_1* y) noexcept nogil:
    return sum_i16_pairs_float(q4_0_pairs(qx, _mm256_loadu_si256(<const __m256i*>y.qs)))

cdef inline void q4_0_x4_block(const block_q4_0* x, const block_q8_1** y, int i, const float* ds,
                               __m256* acc) noexcept nogil:
    cdef __m256i qx = bytes_from_nibbles_32(x.qs)
    fma4(acc, x4_scales(fp16_to_fp32(x.d), ds), q4_0_x4_pair(qx, &y[0][i]), q4_0_x4_pair(qx, &y[1][i]),
         q4_0_x4_pair(qx, &y[2][i]), q4_0_x4_pair(qx, &y[3][i]))

cdef inline const float* x4_packed(const void* vy, int nb) noexcept nogil:
    # where the group's packed scales start: after the first row's nb blocks (_isa.pxd)
    return <const float*>(<const uint8_t*>vy + nb * sizeof(block_q8_1))

cdef void vec_dot_q4_0_q8_1_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    cdef const block_q4_0* x = <const block_q4_0*>vx
    cdef const block_q8_1* y[4]
    cdef __m256 a0[4]
    cdef __m256 a1[4]
    cdef int i, nb = n // QK8_1
    rows4(vy, y_stride, <const void**>y)
    zero4(a0)
    zero4(a1)
    cdef const float* ds = x4_packed(vy, nb)
    for i in range(0, nb - 1, 2):      # even blocks to a0, odd to a1, as the one-row kernel
        q4_0_x4_block(&x[i], y, i, ds + 8 * i, a0)
        q4_0_x4_block(&x[i + 1], y, i + 1, ds + 8 * (i + 1), a1)
    if nb % 2:
        q4_0_x4_block(&x[nb - 1], y, nb - 1, ds + 8 * (nb - 1), a0)
    store4(s, s_stride, a0, a1)

cdef inline __m256 signed_x4_pair(__m256i ax, __m256i qx, const block_q8_1* y) noexcept nogil:
    return mul_sum_us8_pairs_float(ax, _mm256_sign_epi8(_mm256_loadu_si256(<const __m256i*>y.qs), qx))

cdef inline void signed_x4_block(__m256i qx, float dx, const block_q8_1** y, int i, const float* ds,
                                 __m256* acc) noexcept nogil:
    # signed weights qx (q8_0, q5_0 - 16): the sign trick of mul_sum_i8_pairs_float, |qx| once
    cdef __m256i ax = _mm256_sign_epi8(qx, qx)
    fma4(acc, x4_scales(dx, ds), signed_x4_pair(ax, qx, &y[0][i]), signed_x4_pair(ax, qx, &y[1][i]),
         signed_x4_pair(ax, qx, &y[2][i]), signed_x4_pair(ax, qx, &y[3][i]))

cdef void vec_dot_q8_0_q8_1_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    cdef const block_q8_0* x = <const block_q8_0*>vx
    cdef const block_q8_1* y[4]
    cdef __m256 a0[4]
    cdef __m256 a1[4]
    cdef int i, nb = n // QK8_1
    rows4(vy, y_stride, <const void**>y)
    zero4(a0)
    zero4(a1)
    cdef const float* ds = x4_packed(vy, nb)
    for i in range(0, nb - 1, 2):      # even blocks to a0, odd to a1, as the one-row kernel
        signed_x4_block(_mm256_loadu_si256(<const __m256i*>x[i].qs), fp16_to_fp32(x[i].d), y, i, ds + 8 * i, a0)
        signed_x4_block(_mm256_loadu_si256(<const __m256i*>x[i + 1].qs), fp16_to_fp32(x[i + 1].d), y, i + 1,
                        ds + 8 * (i + 1), a1)
    if nb % 2:
        signed_x4_block(_mm256_loadu_si256(<const __m256i*>x[nb - 1].qs), fp16_to_fp32(x[nb - 1].d), y, nb - 1,
                        ds + 8 * (nb - 1), a0)
    store4(s, s_stride, a0, a1)

cdef void vec_dot_q5_0_q8_1_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    cdef const block_q5_0* x = <const block_q5_0*>vx
    cdef const block_q8_1* y[4]
    cdef __m256 acc[4]
    cdef int i, t
    cdef const float* ds = x4_packed(vy, n // QK8_1)
    rows4(vy, y_stride, <const void**>y)
    zero4(acc)
    for i in range(n // QK8_1):
        signed_x4_block(q5_0_signed(&x[i]), fp16_to_fp32(x[i].d), y, i, ds + 8 * i, acc)
    for t in range(4):
        s[t * s_stride] = hsum_float_8(acc[t])

cdef inline __m256 unsigned_x4_pair(__m256i qx, const block_q8_1* y) noexcept nogil:
    return mul_sum_us8_pairs_float(qx, _mm256_loadu_si256(<const __m256i*>y.qs))

cdef inline void unsigned_x4_block(const uint8_t* xb, bint five, const block_q8_1** y, int i, const float* ds,
                                   __m256* acc, __m128* sm) noexcept nogil:
    # unsigned_q8_1_block for 4 tokens: the scales from the packed [d0..d3 s0..s3] (x4_scales),
    # and the 4 tokens' m * s terms in one register
    cdef __m256i qx = unsigned_quants(xb, five)
    sm[0] = _mm_add_ps(sm[0], _mm_mul_ps(_mm_set1_ps(fp16_to_fp32((<const uint16_t*>xb)[1])),
                                         _mm_loadu_ps(ds + 4)))
    fma4(acc, x4_scales(fp16_to_fp32((<const uint16_t*>xb)[0]), ds), unsigned_x4_pair(qx, &y[0][i]),
         unsigned_x4_pair(qx, &y[1][i]), unsigned_x4_pair(qx, &y[2][i]), unsigned_x4_pair(qx, &y[3][i]))

cdef inline void vec_dot_unsigned_q8_1_x4(int n, float* s, int64_t s_stride, const void* vx, int64_t x_size,
                                          bint five, const void* vy, int64_t y_stride) noexcept nogil:
    # vec_dot_unsigned_q8_1 for 4 tokens, the same even/odd split
    cdef const uint8_t* xb = <const uint8_t*>vx
    cdef const block_q8_1* y[4]
    cdef __m256 a0[4]
    cdef __m256 a1[4]
    cdef __m128 sm0 = _mm_setzero_ps(), sm1 = _mm_setzero_ps()
    cdef float sms[4]
    cdef int i, t, nb = n // QK8_1
    cdef const float* ds = x4_packed(vy, nb)
    rows4(vy, y_stride, <const void**>y)
    zero4(a0)
    zero4(a1)
    for i in range(0, nb - 1, 2):
        unsigned_x4_block(xb + i * x_size, five, y, i, ds + 8 * i, a0, &sm0)
        unsigned_x4_block(xb + (i + 1) * x_size, five, y, i + 1, ds + 8 * (i + 1), a1, &sm1)
    if nb % 2:
        unsigned_x4_block(xb + (nb - 1) * x_size, five, y, nb - 1, ds + 8 * (nb - 1), a0, &sm0)
    _mm_storeu_ps(sms, _mm_add_ps(sm0, sm1))
    for t in range(4):
        s[t * s_stride] = hsum_float_8(_mm256_add_ps(a0[t], a1[t])) + sms[t]

cdef void vec_dot_q4_1_q8_1_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    vec_dot_unsigned_q8_1_x4(n, s, s_stride, vx, sizeof(block_q4_1), False, vy, y_stride)

cdef void vec_dot_q5_1_q8_1_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    vec_dot_unsigned_q8_1_x4(n, s, s_stride, vx, sizeof(block_q5_1), True, vy, y_stride)

# ---- 8 weight rows at once: the row-interleaved copies (ggml_blocks.h, block_q4_0x8) -----
# Lane r of every register is row r: 4 weights of the row against 4 activation bytes
# broadcast to all lanes, so the sums need no horizontal reduction and one float FMA covers
# 8 rows. The same inline body serves 1 and 4 tokens (T is a literal at each call), giving
# each (row, token) the same operations in the same order.

cdef inline __m256i bcast4(const int8_t* p) noexcept nogil:
    # 4 activation bytes into every 32-bit lane
    return _mm256_set1_epi32(<int>load_u32(<const uint8_t*>p))

cdef inline __m256 r8_scaled(__m256 d8, float dy, __m256i v, __m256 acc) noexcept nogil:
    # acc + (d8 * dy) * v: a block's 8 rows of integer sums into a float accumulator
    return _mm256_fmadd_ps(_mm256_mul_ps(d8, _mm256_set1_ps(dy)), _mm256_cvtepi32_ps(v), acc)

cdef inline void r8_sums(const uint8_t* qs, const block_q8_1** y, int i, int T, __m256i* sum16) noexcept nogil:
    # sum16[t] (16 x i16, lanes 2r and 2r+1 from row r) adds up to row r's sum of q * y_t over
    # block i. i16 holds it: 8 maddubs lanes of at most 2 * 15 * 127 each
    cdef __m256i m4 = _mm256_set1_epi8(0x0F)
    cdef __m256i p, lo, hi
    cdef int k, t
    for t in range(T):
        sum16[t] = _mm256_setzero_si256()
    for k in range(4):
        p = _mm256_loadu_si256(<const __m256i*>(qs + 32 * k))
        lo = _mm256_and_si256(p, m4)                         # weights 4k..4k+3 of each row
        hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4)   # weights 16+4k..16+4k+3
        for t in range(T):
            sum16[t] = _mm256_add_epi16(sum16[t], _mm256_add_epi16(
                _mm256_maddubs_epi16(lo, bcast4(y[t][i].qs + 4 * k)),
                _mm256_maddubs_epi16(hi, bcast4(y[t][i].qs + 16 + 4 * k))))

# The token count as a type: Cython emits one C function per member of a fused type, and
# in each T = sizeof(tokens) is a constant the loops unroll on, with sums and accumulators
# in registers. (With T an argument, gcc made one clone for both counts and kept them in
# memory.)
ctypedef struct tokens1:
    char t[1]
ctypedef struct tokens4:
    char t[4]
ctypedef fused tokens:
    tokens1
    tokens4

cdef inline void r8_min_term(const uint8_t* blk, bint has_m, const block_q8_1** y, int i, int T,
                             __m256* accm) noexcept nogil:
    # accm[t] += m * s_t for block i (blk) of 8 rows: m its minimums (q4_1), or -8 d (q4_0)
    cdef __m256 m8
    cdef int t
    if has_m:
        m8 = _mm256_cvtph_ps(_mm_loadu_si128(<const __m128i*>(blk + 16)))
    else:
        m8 = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(<const __m128i*>blk)), _mm256_set1_ps(-8.0))
    for t in range(T):
        accm[t] = _mm256_fmadd_ps(m8, _mm256_set1_ps(y[t][i].s), accm[t])

cdef inline void dot_r8_tokens(const tokens* count, int n, float* s, int64_t s_stride, const uint8_t* xb,
                               int64_t x_size, bint has_m, const void* vy, int64_t y_stride) noexcept nogil:
    # x = d * q + m with q unsigned 4-bit: q4_1 (has_m), or q4_0 with m = -8 d.
    # acc: d * dy * sum(q y) per block; accm, its own chain: m * s (s = dy * sum(y), q8_1).
    cdef int T = sizeof(tokens)
    cdef const block_q8_1* y[4]
    cdef __m256i sum16[4]
    cdef __m256 acc[4]
    cdef __m256 accm[4]
    cdef __m256i ones = _mm256_set1_epi16(1)
    cdef __m256 d8
    cdef const uint8_t* blk
    cdef int64_t qs_off = 32 if has_m else 16
    cdef int i, t, nb = n // QK8_1
    for t in range(T):
        y[t] = <const block_q8_1*>(<const uint8_t*>vy + t * y_stride)
        acc[t] = _mm256_setzero_ps()
        accm[t] = _mm256_setzero_ps()
    cdef const uint8_t* pf = xb + PREFETCH
    for i in range(nb):
        blk = xb + i * x_size
        if T == 1:
            pf = prefetch_until(pf, blk + x_size)
        r8_sums(blk + qs_off, y, i, T, sum16)
        d8 = _mm256_cvtph_ps(_mm_loadu_si128(<const __m128i*>blk))
        for t in range(T):
            acc[t] = r8_scaled(d8, y[t][i].d, _mm256_madd_epi16(sum16[t], ones), acc[t])
        if T == 1:
            r8_min_term(blk, has_m, y, i, T, accm)
    # 4 tokens: the minimum's term in a second pass over the (now cached) scales, with fewer
    # live registers. One token has them to spare, and a second pass left the memory idle
    # (nothing prefetched while it ran)
    if T > 1:
        for i in range(nb):
            r8_min_term(xb + i * x_size, has_m, y, i, T, accm)
    for t in range(T):
        _mm256_storeu_ps(s + t * s_stride, _mm256_add_ps(acc[t], accm[t]))

cdef void dot_r8_q4_0_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                           int64_t y_stride) noexcept nogil:
    dot_r8_tokens(<const tokens1*>NULL, n, s, s_stride, <const uint8_t*>vx, sizeof(block_q4_0x8), False, vy, y_stride)

cdef void dot_r8_x4_q4_0_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                              int64_t y_stride) noexcept nogil:
    dot_r8_tokens(<const tokens4*>NULL, n, s, s_stride, <const uint8_t*>vx, sizeof(block_q4_0x8), False, vy, y_stride)

cdef void dot_r8_q4_1_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                           int64_t y_stride) noexcept nogil:
    dot_r8_tokens(<const tokens1*>NULL, n, s, s_stride, <const uint8_t*>vx, sizeof(block_q4_1x8), True, vy, y_stride)

cdef void dot_r8_x4_q4_1_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                              int64_t y_stride) noexcept nogil:
    dot_r8_tokens(<const tokens4*>NULL, n, s, s_stride, <const uint8_t*>vx, sizeof(block_q4_1x8), True, vy, y_stride)

# q8_0, 8 rows at once (block_q8_0x8): the 8 rows' d (f16), then their qs in steps of 4
# bytes, so vector k holds bytes 4k..4k+3 of every row, all against the same 4 activation
# bytes. The sign trick of the one-row kernel (|qx| x sign(y, qx): at most 2 * 128 * 127 in
# an i16 lane) and a madd per vector, so each i32 lane sums one row. The float work (scale,
# convert, FMA) and the horizontal sum that the one-row kernel pays per row are shared by
# 8 rows: 7B q8_0 prompt 10.4 -> 14.9 tok/s, generation 3.41 -> 3.88 (alternating pairs).
# One token asks for the block's lines as its vectors go (as prefetch_slice), not 4-5 at once.

cdef inline void dot_r8_q8_tokens(const tokens* count, int n, float* s, int64_t s_stride, const uint8_t* xb,
                                  const void* vy, int64_t y_stride) noexcept nogil:
    cdef int T = sizeof(tokens)
    cdef const block_q8_1* y[4]
    cdef __m256i sum32[4]
    cdef __m256 acc[4]
    cdef __m256i ones = _mm256_set1_epi16(1)
    cdef __m256i w, aw
    cdef __m256 d8
    cdef const uint8_t* blk
    cdef int64_t x_size = sizeof(block_q8_0x8)
    cdef int i, k, t, nb = n // QK8_0
    for t in range(T):
        y[t] = <const block_q8_1*>(<const uint8_t*>vy + t * y_stride)
        acc[t] = _mm256_setzero_ps()
    cdef const uint8_t* pf = xb + PREFETCH
    for i in range(nb):
        blk = xb + i * x_size
        for t in range(T):
            sum32[t] = _mm256_setzero_si256()
        for k in range(8):
            if T == 1:
                pf = prefetch_until(pf, blk + 48 + 32 * k)
            w = _mm256_loadu_si256(<const __m256i*>(blk + 16 + 32 * k))
            aw = _mm256_sign_epi8(w, w)
            for t in range(T):
                sum32[t] = _mm256_add_epi32(sum32[t], _mm256_madd_epi16(
                    _mm256_maddubs_epi16(aw, _mm256_sign_epi8(bcast4(y[t][i].qs + 4 * k), w)), ones))
        d8 = _mm256_cvtph_ps(_mm_loadu_si128(<const __m128i*>blk))
        for t in range(T):
            acc[t] = r8_scaled(d8, y[t][i].d, sum32[t], acc[t])
    for t in range(T):
        _mm256_storeu_ps(s + t * s_stride, acc[t])

cdef void dot_r8_q8_0_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                           int64_t y_stride) noexcept nogil:
    dot_r8_q8_tokens(<const tokens1*>NULL, n, s, s_stride, <const uint8_t*>vx, vy, y_stride)

cdef void dot_r8_x4_q8_0_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                              int64_t y_stride) noexcept nogil:
    dot_r8_q8_tokens(<const tokens4*>NULL, n, s, s_stride, <const uint8_t*>vx, vy, y_stride)

# q4_K and q5_K, 8 rows at once (block_q4_Kx8, block_q5_Kx8): per sub-block the integer sums as above, then each
# row's 6-bit scale (from the 8 rows' packed scales, unpacked 8 at a time) in its two i16
# lanes for one madd; the minimums through the q8_K block sums, per pair of sub-blocks.

cdef inline __m256i lane_bytes(int b0, int b1) noexcept nogil:
    # pshufb mask: in every 32-bit lane, its byte b0 and byte b1 as two u16
    cdef int v[4]
    cdef int p
    for p in range(4):
        v[p] = (4 * p + b0) | 0x8000 | ((4 * p + b1) << 16) | <int>0x80000000
    return _mm256_setr_epi32(v[0], v[1], v[2], v[3], v[0], v[1], v[2], v[3])

cdef inline int32_t bsum_pair(const block_q8_K* y, int j) noexcept nogil:
    # the q8_K sums of sub-blocks j and j+1 (32 weights each) as two i16 in one i32
    cdef int a = y.bsums[2 * j] + y.bsums[2 * j + 1], b = y.bsums[2 * j + 2] + y.bsums[2 * j + 3]
    return <int32_t>((a & 0xFFFF) | (b << 16))

cdef inline __m256i min_pair(__m256i mins, int b, const block_q8_K* y, int j) noexcept nogil:
    # per row: m_j * sum_j + m_j+1 * sum_j+1, the mins at bytes b, b+1 of each row's lane
    return _mm256_madd_epi16(_mm256_shuffle_epi8(mins, lane_bytes(b, b + 1)), _mm256_set1_epi32(bsum_pair(y, j)))

cdef inline __m256i k4_r8_scales(__m256i w0, __m256i w2, int c) noexcept nogil:
    # the 6-bit scales of sub-blocks 2c, 2c+1 of 8 rows: bytes 2c % 4 and 2c % 4 + 1 of word 0
    # (c < 2) or of word 2 with word 0's top bits (unpack_k4_scales, 8 rows at a time)
    if c < 2:
        return _mm256_and_si256(w0, _mm256_set1_epi32(0x3f3f3f3f))
    return _mm256_or_si256(_mm256_and_si256(w2, _mm256_set1_epi32(0x0f0f0f0f)), _mm256_slli_epi32(
        _mm256_and_si256(_mm256_srli_epi32(w0, 6), _mm256_set1_epi32(0x03030303)), 4))

cdef inline __m256i k4_r8_mins(__m256i w1, __m256i w2, const block_q8_K* y) noexcept nogil:
    # per row: sum_j m_j * bsums of sub-block j (the minimums' term of block_q4_Kx8 / q5_Kx8)
    cdef __m256i k1 = _mm256_set1_epi32(0x3f3f3f3f), k2 = _mm256_set1_epi32(0x0f0f0f0f)
    cdef __m256i mn_lo = _mm256_and_si256(w1, k1)
    cdef __m256i mn_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(w2, 4), k2), _mm256_slli_epi32(
        _mm256_and_si256(_mm256_srli_epi32(w1, 6), _mm256_set1_epi32(0x03030303)), 4))
    return _mm256_add_epi32(_mm256_add_epi32(min_pair(mn_lo, 0, y, 0), min_pair(mn_lo, 2, y, 2)),
                            _mm256_add_epi32(min_pair(mn_hi, 0, y, 4), min_pair(mn_hi, 2, y, 6)))

cdef inline void q4k_r8_chunk(const uint8_t* blk, __m256i sc, int c, const block_q8_K** y, int i, int T,
                              __m256i* sumi) noexcept nogil:
    # q4_K: weights up to 15, so a sub-block's 8 maddubs add up in i16 (2 * 15 * 128 each).
    # One sub-block at a time (the low nibbles of chunk c, then the high): one i16 sum per
    # token, so 4 tokens fit the registers and share each decoding
    cdef __m256i s16[4]
    cdef __m256i m4 = _mm256_set1_epi8(0x0F)
    cdef __m256i p, scb
    cdef int b, k, t
    for b in range(2):
        scb = _mm256_shuffle_epi8(sc, lane_bytes(2 * (c % 2) + b, 2 * (c % 2) + b))
        for t in range(T):
            s16[t] = _mm256_setzero_si256()
        for k in range(8):
            p = _mm256_loadu_si256(<const __m256i*>(blk + 128 + 256 * c + 32 * k))
            p = _mm256_and_si256(_mm256_srli_epi16(p, 4) if b else p, m4)
            for t in range(T):
                s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(p, bcast4(y[t][i].qs + 64 * c + 32 * b + 4 * k)))
        for t in range(T):
            sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(s16[t], scb))

cdef inline __m256i fifth_bit(__m256i h, int b) noexcept nogil:
    # bit b of every byte of h, moved to bit 4 (its value in a 5-bit weight); 16-bit shifts
    # carry bits across bytes, but the mask keeps only the byte's own
    if b <= 4:
        h = _mm256_slli_epi16(h, 4 - b)
    else:
        h = _mm256_srli_epi16(h, b - 4)
    return _mm256_and_si256(h, _mm256_set1_epi8(0x10))

cdef inline void q5k_r8_chunk(const uint8_t* blk, __m256i sc, int c, const block_q8_K** y, int i, int T,
                              __m256i* sumi) noexcept nogil:
    # q5_K: the weights reach 31 and the decoding costs more, so each maddubs goes straight to
    # i32 with its scale (one madd), leaving only the i32 sums live and 4 tokens per decoding
    cdef __m256i m4 = _mm256_set1_epi8(0x0F)
    cdef __m256i sl = _mm256_shuffle_epi8(sc, lane_bytes(2 * (c % 2), 2 * (c % 2)))
    cdef __m256i sh = _mm256_shuffle_epi8(sc, lane_bytes(2 * (c % 2) + 1, 2 * (c % 2) + 1))
    cdef __m256i p, h, lo, hi
    cdef const int8_t* q8
    cdef int k, t
    for k in range(8):
        p = _mm256_loadu_si256(<const __m256i*>(blk + 384 + 256 * c + 32 * k))
        h = _mm256_loadu_si256(<const __m256i*>(blk + 128 + 32 * k))
        lo = _mm256_or_si256(_mm256_and_si256(p, m4), fifth_bit(h, 2 * c))
        hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(p, 4), m4), fifth_bit(h, 2 * c + 1))
        for t in range(T):
            q8 = y[t][i].qs + 64 * c + 4 * k
            sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(
                _mm256_madd_epi16(_mm256_maddubs_epi16(lo, bcast4(q8)), sl),
                _mm256_madd_epi16(_mm256_maddubs_epi16(hi, bcast4(q8 + 32)), sh)))

# the block kind as a type too, for the same reason as the token count
ctypedef struct kind_q4_K:
    char q[4]
ctypedef struct kind_q5_K:
    char q[5]
ctypedef fused k4kind:
    kind_q4_K
    kind_q5_K

cdef inline void dot_r8_k4_tokens(const k4kind* kind, const tokens* count, int n, float* s, int64_t s_stride,
                                  const uint8_t* xb, const void* vy, int64_t y_stride) noexcept nogil:
    # q4_K and q5_K: per chunk of 2 sub-blocks the integer sums (q4k_r8_chunk, q5k_r8_chunk),
    # then the block's float steps and the minimums' term, shared
    cdef int T = sizeof(tokens)
    cdef bint five = sizeof(k4kind) == 5
    cdef int64_t x_size = sizeof(block_q5_Kx8) if five else sizeof(block_q4_Kx8)
    cdef const block_q8_K* y[4]
    cdef __m256 acc[4]
    cdef __m256 accm[4]
    cdef __m256i sumi[4]
    cdef __m256i w0, w1, w2
    cdef __m256 d8, dm8
    cdef const uint8_t* blk
    cdef int i, c, t
    for t in range(T):
        y[t] = <const block_q8_K*>(<const uint8_t*>vy + t * y_stride)
        acc[t] = _mm256_setzero_ps()
        accm[t] = _mm256_setzero_ps()
    for i in range(n // QK_K):
        blk = xb + i * x_size
        w0 = _mm256_loadu_si256(<const __m256i*>(blk + 32))
        w1 = _mm256_loadu_si256(<const __m256i*>(blk + 64))
        w2 = _mm256_loadu_si256(<const __m256i*>(blk + 96))
        for t in range(T):
            sumi[t] = _mm256_setzero_si256()
        for c in range(4):
            if T == 1:
                prefetch_slice(blk, x_size, c, 4)
            if five:
                q5k_r8_chunk(blk, k4_r8_scales(w0, w2, c), c, y, i, T, sumi)
            else:
                q4k_r8_chunk(blk, k4_r8_scales(w0, w2, c), c, y, i, T, sumi)
        d8 = _mm256_cvtph_ps(_mm_loadu_si128(<const __m128i*>blk))
        dm8 = _mm256_cvtph_ps(_mm_loadu_si128(<const __m128i*>(blk + 16)))
        for t in range(T):
            acc[t] = r8_scaled(d8, y[t][i].d, sumi[t], acc[t])
            accm[t] = r8_scaled(dm8, y[t][i].d, k4_r8_mins(w1, w2, y[t] + i), accm[t])
    for t in range(T):
        _mm256_storeu_ps(s + t * s_stride, _mm256_sub_ps(acc[t], accm[t]))

cdef void dot_r8_q4_K_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                           int64_t y_stride) noexcept nogil:
    dot_r8_k4_tokens(<const kind_q4_K*>NULL, <const tokens1*>NULL, n, s, s_stride, <const uint8_t*>vx, vy, y_stride)

cdef void dot_r8_x4_q4_K_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                              int64_t y_stride) noexcept nogil:
    dot_r8_k4_tokens(<const kind_q4_K*>NULL, <const tokens4*>NULL, n, s, s_stride, <const uint8_t*>vx, vy, y_stride)

cdef void dot_r8_q5_K_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                           int64_t y_stride) noexcept nogil:
    dot_r8_k4_tokens(<const kind_q5_K*>NULL, <const tokens1*>NULL, n, s, s_stride, <const uint8_t*>vx, vy, y_stride)

cdef void dot_r8_x4_q5_K_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                              int64_t y_stride) noexcept nogil:
    dot_r8_k4_tokens(<const kind_q5_K*>NULL, <const tokens4*>NULL, n, s, s_stride, <const uint8_t*>vx, vy, y_stride)

# q6_K, 8 rows at once (block_q6_Kx8). Weights reach 63, so each maddubs goes straight to i32
# with its sub-block's scale (one madd); the -32 goes through the q8_K block sums, per pair of
# sub-blocks, as in the one-row kernel. Tokens 1 or 4 (the tokens type above).
cdef inline __m256i word_dup(int e) noexcept nogil:
    # pshufb mask: in every 32-bit lane, its i16 number e (0 or 1) twice
    cdef int v[4]
    cdef int p, b
    for p in range(4):
        b = 4 * p + 2 * e
        v[p] = b | (b + 1) << 8 | b << 16 | (b + 1) << 24
    return _mm256_setr_epi32(v[0], v[1], v[2], v[3], v[0], v[1], v[2], v[3])

cdef inline __m256i q6_r8_pair(const uint8_t* blk, int p) noexcept nogil:
    # lane r: row r's scales of sub-blocks 2p and 2p+1 as two i16
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(<const __m128i*>(blk + 1536 + 16 * p)))

cdef inline __m256i q6_r8_quarter(__m256i ql, __m256i qh, int qd) noexcept nogil:
    # the 6-bit weights of quarter qd (0..3: ql low nibble with qh bits 0-1, ...) of 4
    # consecutive positions of each row
    cdef __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30)
    cdef __m256i lo = _mm256_and_si256(ql if qd < 2 else _mm256_srli_epi16(ql, 4), m4)
    if qd == 0:
        qh = _mm256_slli_epi16(qh, 4)
    elif qd == 1:
        qh = _mm256_slli_epi16(qh, 2)
    elif qd == 3:
        qh = _mm256_srli_epi16(qh, 2)
    return _mm256_or_si256(lo, _mm256_and_si256(qh, m30))

cdef inline void dot_r8_q6_tokens(const tokens* count, int n, float* s, int64_t s_stride, const uint8_t* xb,
                                  const void* vy, int64_t y_stride) noexcept nogil:
    cdef int T = sizeof(tokens)
    cdef const block_q8_K* y[4]
    cdef __m256 acc[4]
    cdef __m256i sumi[4]
    cdef __m256i sc[4]
    cdef __m256i ql0, ql1, qh, w
    cdef __m256 d8
    cdef __m256i dup0 = word_dup(0), dup1 = word_dup(1)
    cdef const uint8_t* blk
    cdef int i, h, e, k, qd, p, t, pos
    for t in range(T):
        y[t] = <const block_q8_K*>(<const uint8_t*>vy + t * y_stride)
        acc[t] = _mm256_setzero_ps()
    for i in range(n // QK_K):
        blk = xb + i * sizeof(block_q6_Kx8)
        # the offset first: sumi = -sum_j sc_j bsums_j, times 32 below
        for t in range(T):
            sumi[t] = _mm256_setzero_si256()
            for p in range(8):
                sumi[t] = _mm256_sub_epi32(sumi[t], _mm256_madd_epi16(
                    q6_r8_pair(blk, p), _mm256_set1_epi32(<int>load_u32(<const uint8_t*>(y[t][i].bsums + 2 * p)))))
            sumi[t] = _mm256_slli_epi32(sumi[t], 5)
        for h in range(2):
            for e in range(2):
                # positions 16e..16e+15 of each quarter of half h: sub-block 8h + 2qd + e
                for qd in range(4):
                    sc[qd] = _mm256_shuffle_epi8(q6_r8_pair(blk, 4 * h + qd), dup1 if e else dup0)
                for k in range(4 * e, 4 * e + 4):
                    if T == 1:
                        prefetch_slice(blk, sizeof(block_q6_Kx8), 8 * h + k, 16)
                    ql0 = _mm256_loadu_si256(<const __m256i*>(blk + 32 * (16 * h + k)))
                    ql1 = _mm256_loadu_si256(<const __m256i*>(blk + 32 * (16 * h + 8 + k)))
                    qh = _mm256_loadu_si256(<const __m256i*>(blk + 1024 + 32 * (8 * h + k)))
                    for qd in range(4):
                        w = q6_r8_quarter(ql0 if qd % 2 == 0 else ql1, qh, qd)
                        pos = 128 * h + 32 * qd + 4 * k
                        for t in range(T):
                            sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(
                                _mm256_maddubs_epi16(w, bcast4(y[t][i].qs + pos)), sc[qd]))
        d8 = _mm256_cvtph_ps(_mm_loadu_si128(<const __m128i*>(blk + 1664)))
        for t in range(T):
            acc[t] = r8_scaled(d8, y[t][i].d, sumi[t], acc[t])
    for t in range(T):
        _mm256_storeu_ps(s + t * s_stride, acc[t])

cdef void dot_r8_q6_K_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                           int64_t y_stride) noexcept nogil:
    dot_r8_q6_tokens(<const tokens1*>NULL, n, s, s_stride, <const uint8_t*>vx, vy, y_stride)

cdef void dot_r8_x4_q6_K_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                              int64_t y_stride) noexcept nogil:
    dot_r8_q6_tokens(<const tokens4*>NULL, n, s, s_stride, <const uint8_t*>vx, vy, y_stride)

# q2_K, 8 rows at once (block_q2_Kx8). Weights 0..3: a sub-block's 4 maddubs add up in i16
# (4 * 2 * 3 * 128 at most), then one madd with each row's 4-bit scale; the minimums go
# through the q8_K block sums, per pair of sub-blocks. Tokens 1 or 4.
cdef inline __m256i q2_r8_pair(const uint8_t* blk, int p) noexcept nogil:
    # lane r: row r's scale bytes (scale | min << 4) of sub-blocks 2p and 2p+1 as two u16
    return _mm256_cvtepu8_epi16(_mm_loadu_si128(<const __m128i*>(blk + 16 * p)))

cdef inline void dot_r8_q2_tokens(const tokens* count, int n, float* s, int64_t s_stride, const uint8_t* xb,
                                  const void* vy, int64_t y_stride) noexcept nogil:
    cdef int T = sizeof(tokens)
    cdef const block_q8_K* y[4]
    cdef __m256 acc[4]
    cdef __m256 accm[4]
    cdef __m256i sumi[4]
    cdef __m256i s16[4]
    cdef __m256i m3 = _mm256_set1_epi8(3), low4 = _mm256_set1_epi16(0x0F)
    cdef __m256i dup0 = word_dup(0), dup1 = word_dup(1)
    cdef __m256i w, sc, msum
    cdef __m256 d8, dm8
    cdef const uint8_t* blk
    cdef int i, h, b, e, k, p, t
    for t in range(T):
        y[t] = <const block_q8_K*>(<const uint8_t*>vy + t * y_stride)
        acc[t] = _mm256_setzero_ps()
        accm[t] = _mm256_setzero_ps()
    for i in range(n // QK_K):
        blk = xb + i * sizeof(block_q2_Kx8)
        for t in range(T):
            sumi[t] = _mm256_setzero_si256()
        for h in range(2):
            for b in range(4):
                # bit pair b of each byte of half h: positions 32b..32b+31, sub-blocks 2p and 2p+1
                p = 4 * h + b
                for e in range(2):
                    if T == 1:
                        prefetch_slice(blk, sizeof(block_q2_Kx8), 2 * p + e, 16)
                    sc = _mm256_shuffle_epi8(_mm256_and_si256(q2_r8_pair(blk, p), low4), dup1 if e else dup0)
                    for t in range(T):
                        s16[t] = _mm256_setzero_si256()
                    for k in range(4 * e, 4 * e + 4):
                        w = _mm256_and_si256(_mm256_srli_epi16(
                            _mm256_loadu_si256(<const __m256i*>(blk + 128 + 32 * (8 * h + k))), 2 * b), m3)
                        for t in range(T):
                            s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(
                                w, bcast4(y[t][i].qs + 128 * h + 32 * b + 4 * k)))
                    for t in range(T):
                        sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(s16[t], sc))
        d8 = _mm256_cvtph_ps(_mm_loadu_si128(<const __m128i*>(blk + 640)))
        dm8 = _mm256_cvtph_ps(_mm_loadu_si128(<const __m128i*>(blk + 656)))
        for t in range(T):
            msum = _mm256_setzero_si256()
            for p in range(8):
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(
                    _mm256_srli_epi16(q2_r8_pair(blk, p), 4),
                    _mm256_set1_epi32(<int>load_u32(<const uint8_t*>(y[t][i].bsums + 2 * p)))))
            acc[t] = r8_scaled(d8, y[t][i].d, sumi[t], acc[t])
            accm[t] = r8_scaled(dm8, y[t][i].d, msum, accm[t])
    for t in range(T):
        _mm256_storeu_ps(s + t * s_stride, _mm256_sub_ps(acc[t], accm[t]))

cdef void dot_r8_q2_K_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                           int64_t y_stride) noexcept nogil:
    dot_r8_q2_tokens(<const tokens1*>NULL, n, s, s_stride, <const uint8_t*>vx, vy, y_stride)

cdef void dot_r8_x4_q2_K_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                              int64_t y_stride) noexcept nogil:
    dot_r8_q2_tokens(<const tokens4*>NULL, n, s, s_stride, <const uint8_t*>vx, vy, y_stride)

# The 4-token k-quant kernels share their per-block float steps, each token's in the order of
# the one-row kernel: mins_x4 (the minimums' term; zeroes the integer sums), offset_x4 (a
# constant weight offset), sums_x4 (the block's scaled sums), store4_diff (the final reductions).
cdef inline void mins_x4(__m256i mins16, float dmx, const block_q8_K** y, int i, __m256* accm,
                         __m256i* sumi) noexcept nogil:
    # accm[t] += (y_t.d * dmin) * (mins16 . bsums of token t's block i); sumi[t] = 0
    cdef int t
    for t in range(4):
        accm[t] = _mm256_fmadd_ps(_mm256_set1_ps(y[t][i].d * dmx), _mm256_cvtepi32_ps(
            _mm256_madd_epi16(mins16, _mm256_loadu_si256(<const __m256i*>y[t][i].bsums))), accm[t])
        sumi[t] = _mm256_setzero_si256()

cdef inline void sums_x4(float dx, const block_q8_K** y, int i, const __m256i* sumi, __m256* acc) noexcept nogil:
    # acc[t] += (y_t.d * d) * sumi[t]
    cdef int t
    for t in range(4):
        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(y[t][i].d * dx), _mm256_cvtepi32_ps(sumi[t]), acc[t])

cdef inline void offset_x4(__m256i scales, int shift, const block_q8_K** y, int i, __m256i* sumi) noexcept nogil:
    # sumi[t] -= (scales . bsums of token t's block i) << shift: a constant offset of the
    # weights (q3_K's -4, q6_K's -32) through the block sums
    cdef int t
    for t in range(4):
        sumi[t] = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(
            _mm256_madd_epi16(scales, _mm256_loadu_si256(<const __m256i*>y[t][i].bsums)), shift))

cdef inline void store4_diff(float* s, int64_t s_stride, const __m256* acc, const __m256* accm) noexcept nogil:
    # s_t = hsum(acc_t) - hsum(accm_t)
    cdef int t
    for t in range(4):
        s[t * s_stride] = hsum_float_8(acc[t]) - hsum_float_8(accm[t])

cdef void vec_dot_q4_K_q8_K_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    cdef const block_q4_K* x = <const block_q4_K*>vx
    cdef const block_q8_K* y[4]
    cdef __m256 acc[4]
    cdef __m256 accm[4]
    cdef __m256i sumi[4]
    cdef __m256i m4 = _mm256_set1_epi8(0xF)
    cdef __m256i shuf[8]
    cdef __m256i sc16, q4bits, ql, qh, sl, sh
    cdef float dx
    cdef int i, j, t
    rows4(vy, y_stride, <const void**>y)
    zero4(acc)
    zero4(accm)
    for j in range(8):
        shuf[j] = elem_shuffle(j)
    for i in range(n // QK_K):
        mins_x4(unpack_k4_scales(x[i].scales, &sc16), _cvtsh_ss(x[i].dmin), y, i, accm, sumi)
        dx = _cvtsh_ss(x[i].d)
        for j in range(4):
            q4bits = _mm256_loadu_si256(<const __m256i*>(x[i].qs + 32 * j))
            ql = _mm256_and_si256(q4bits, m4)
            qh = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4)
            sl = _mm256_shuffle_epi8(sc16, shuf[2 * j])
            sh = _mm256_shuffle_epi8(sc16, shuf[2 * j + 1])
            for t in range(4):
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(k_madd(sl, ql, y[t][i].qs + 64 * j),
                                                                     k_madd(sh, qh, y[t][i].qs + 64 * j + 32)))
        sums_x4(dx, y, i, sumi, acc)
    store4_diff(s, s_stride, acc, accm)

cdef inline void k_madd4(__m256i sc, __m256i q, const block_q8_K** y, int i, int off, __m256i* sumi) noexcept nogil:
    # sumi[t] += k_madd(sc, q, bytes off.. of token t's block i), t = 0..3
    cdef int t
    for t in range(4):
        sumi[t] = _mm256_add_epi32(sumi[t], k_madd(sc, q, y[t][i].qs + off))

cdef void vec_dot_q2_K_q8_K_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    # vec_dot_q2_K_q8_K_avx2 for 4 tokens: each 2-bit chunk and its scales decoded once
    cdef const block_q2_K* x = <const block_q2_K*>vx
    cdef const block_q8_K* y[4]
    cdef __m256 acc[4]
    cdef __m256 accm[4]
    cdef __m256i sumi[4]
    cdef __m256i m3 = _mm256_set1_epi8(3)
    cdef __m128i m4 = _mm_set1_epi8(0xF)
    cdef __m256i shuf[4]
    cdef __m256i q2bits, scales, mins, half
    cdef __m128i raw
    cdef float dx
    cdef int i, j, k
    rows4(vy, y_stride, <const void**>y)
    zero4(acc)
    zero4(accm)
    for k in range(4):
        shuf[k] = pair_shuffle(k)
    for i in range(n // QK_K):
        raw = _mm_loadu_si128(<const __m128i*>x[i].scales)
        mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), m4))
        scales = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m4))
        dx = _cvtsh_ss(x[i].d)
        mins_x4(mins, _cvtsh_ss(x[i].dmin), y, i, accm, sumi)
        for j in range(2):
            if j == 0:
                half = _mm256_set_m128i(_mm256_castsi256_si128(scales), _mm256_castsi256_si128(scales))
            else:
                half = _mm256_set_m128i(_mm256_extracti128_si256(scales, 1), _mm256_extracti128_si256(scales, 1))
            q2bits = _mm256_loadu_si256(<const __m256i*>(x[i].qs + 32 * j))
            k_madd4(_mm256_shuffle_epi8(half, shuf[0]), q2_chunk(q2bits, 0, m3), y, i, 128 * j, sumi)
            k_madd4(_mm256_shuffle_epi8(half, shuf[1]), q2_chunk(q2bits, 1, m3), y, i, 128 * j + 32, sumi)
            k_madd4(_mm256_shuffle_epi8(half, shuf[2]), q2_chunk(q2bits, 2, m3), y, i, 128 * j + 64, sumi)
            k_madd4(_mm256_shuffle_epi8(half, shuf[3]), q2_chunk(q2bits, 3, m3), y, i, 128 * j + 96, sumi)
        sums_x4(dx, y, i, sumi, acc)
    store4_diff(s, s_stride, acc, accm)

cdef void vec_dot_q3_K_q8_K_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    # q3_K_block_sumi for 4 tokens: each chunk of 3-bit weights and its scales decoded once
    cdef const block_q3_K* x = <const block_q3_K*>vx
    cdef const block_q8_K* y[4]
    cdef __m256 acc[4]
    cdef __m256i sumi[4]
    cdef __m256i m3 = _mm256_set1_epi8(3)
    cdef __m256i shuf[4]
    cdef __m256i scales, hbits, lo, hi, q0, q1
    cdef int i, k, t
    rows4(vy, y_stride, <const void**>y)
    zero4(acc)
    for k in range(4):
        shuf[k] = pair_shuffle(k)
    for i in range(n // QK_K):
        scales = q3_K_scales16(x[i].scales)
        hbits = _mm256_loadu_si256(<const __m256i*>x[i].hmask)
        lo = _mm256_permute2x128_si256(scales, scales, 0x00)
        hi = _mm256_permute2x128_si256(scales, scales, 0x11)
        q0 = _mm256_loadu_si256(<const __m256i*>x[i].qs)
        q1 = _mm256_loadu_si256(<const __m256i*>(x[i].qs + 32))
        for t in range(4):
            sumi[t] = _mm256_setzero_si256()
        # the 8 chunks as in q3_K_block_sumi (literal bit indices)
        k_madd4(_mm256_shuffle_epi8(lo, shuf[0]), _mm256_or_si256(q2_chunk(q0, 0, m3), q3_hbit4(hbits, 0)), y, i, 0,
                sumi)
        k_madd4(_mm256_shuffle_epi8(lo, shuf[1]), _mm256_or_si256(q2_chunk(q0, 1, m3), q3_hbit4(hbits, 1)), y, i, 32,
                sumi)
        k_madd4(_mm256_shuffle_epi8(lo, shuf[2]), _mm256_or_si256(q2_chunk(q0, 2, m3), q3_hbit4(hbits, 2)), y, i, 64,
                sumi)
        k_madd4(_mm256_shuffle_epi8(lo, shuf[3]), _mm256_or_si256(q2_chunk(q0, 3, m3), q3_hbit4(hbits, 3)), y, i, 96,
                sumi)
        k_madd4(_mm256_shuffle_epi8(hi, shuf[0]), _mm256_or_si256(q2_chunk(q1, 0, m3), q3_hbit4(hbits, 4)), y, i, 128,
                sumi)
        k_madd4(_mm256_shuffle_epi8(hi, shuf[1]), _mm256_or_si256(q2_chunk(q1, 1, m3), q3_hbit4(hbits, 5)), y, i, 160,
                sumi)
        k_madd4(_mm256_shuffle_epi8(hi, shuf[2]), _mm256_or_si256(q2_chunk(q1, 2, m3), q3_hbit4(hbits, 6)), y, i, 192,
                sumi)
        k_madd4(_mm256_shuffle_epi8(hi, shuf[3]), _mm256_or_si256(q2_chunk(q1, 3, m3), q3_hbit4(hbits, 7)), y, i, 224,
                sumi)
        offset_x4(scales, 2, y, i, sumi)
        sums_x4(_cvtsh_ss(x[i].d), y, i, sumi, acc)
    for t in range(4):
        s[t * s_stride] = hsum_float_8(acc[t])

cdef void vec_dot_q5_K_q8_K_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    # vec_dot_q5_K_q8_K_avx2 for 4 tokens: the 5-bit weights and their scales built once per
    # chunk, each token's float operations as in the one-row kernel
    cdef const block_q5_K* x = <const block_q5_K*>vx
    cdef const block_q8_K* y[4]
    cdef __m256 acc[4]
    cdef __m256 accm[4]
    cdef __m256i sumi[4]
    cdef __m256i m4 = _mm256_set1_epi8(0xF)
    cdef __m256i bit4 = _mm256_set1_epi8(0x10)
    cdef __m256i zero = _mm256_setzero_si256()
    cdef __m256i shuf[8]
    cdef __m256i sc16, hbits, q5bits, ql, qh, sl, sh
    cdef float dx
    cdef int i, j, t
    rows4(vy, y_stride, <const void**>y)
    zero4(acc)
    zero4(accm)
    for j in range(8):
        shuf[j] = elem_shuffle(j)
    for i in range(n // QK_K):
        mins_x4(unpack_k4_scales(x[i].scales, &sc16), _cvtsh_ss(x[i].dmin), y, i, accm, sumi)
        dx = _cvtsh_ss(x[i].d)
        hbits = _mm256_loadu_si256(<const __m256i*>x[i].qh)
        for j in range(4):
            q5bits = _mm256_loadu_si256(<const __m256i*>(x[i].qs + 32 * j))
            # the 5th bit: 16 where bit 2j (resp. 2j+1) of qh is set
            ql = _mm256_or_si256(_mm256_and_si256(q5bits, m4), _mm256_andnot_si256(
                _mm256_cmpeq_epi8(_mm256_and_si256(hbits, _mm256_set1_epi8(<char>(1 << (2 * j)))), zero), bit4))
            qh = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q5bits, 4), m4), _mm256_andnot_si256(
                _mm256_cmpeq_epi8(_mm256_and_si256(hbits, _mm256_set1_epi8(<char>(2 << (2 * j)))), zero), bit4))
            sl = _mm256_shuffle_epi8(sc16, shuf[2 * j])
            sh = _mm256_shuffle_epi8(sc16, shuf[2 * j + 1])
            for t in range(4):
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(k_madd(sl, ql, y[t][i].qs + 64 * j),
                                                                     k_madd(sh, qh, y[t][i].qs + 64 * j + 32)))
        sums_x4(dx, y, i, sumi, acc)
    store4_diff(s, s_stride, acc, accm)

cdef void vec_dot_q6_K_q8_K_x4_avx2(int n, float* s, int64_t s_stride, const void* vx, const void* vy,
                                    int64_t y_stride) noexcept nogil:
    cdef const block_q6_K* x = <const block_q6_K*>vx
    cdef const block_q8_K* y[4]
    cdef __m256 acc[4]
    cdef __m256i sumi[4]
    cdef __m256i m4 = _mm256_set1_epi8(0xF)
    cdef __m256i m2 = _mm256_set1_epi8(3)
    cdef __m256i shuf[4]
    cdef __m256i scales, half, qh, ql1, ql2, q, sc
    cdef int i, j, k, t
    rows4(vy, y_stride, <const void**>y)
    zero4(acc)
    for k in range(4):
        shuf[k] = pair_shuffle(k)
    for i in range(n // QK_K):
        scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(<const __m128i*>x[i].scales))
        for t in range(4):
            sumi[t] = _mm256_setzero_si256()
        for j in range(2):
            half = _mm256_permute2x128_si256(scales, scales, 0x00 if j == 0 else 0x11)
            qh = _mm256_loadu_si256(<const __m256i*>(x[i].qh + 32 * j))
            ql1 = _mm256_loadu_si256(<const __m256i*>(x[i].ql + 64 * j))
            ql2 = _mm256_loadu_si256(<const __m256i*>(x[i].ql + 64 * j + 32))
            for k in range(4):
                q = q6_chunk(ql1, ql2, qh, k, m4, m2)
                sc = _mm256_shuffle_epi8(half, shuf[k])
                for t in range(4):
                    sumi[t] = _mm256_add_epi32(sumi[t], k_madd(sc, q, y[t][i].qs + 128 * j + 32 * k))
        offset_x4(scales, 5, y, i, sumi)      # the -32 offset, as q6_K_block_sumi
        sums_x4(_cvtsh_ss(x[i].d), y, i, sumi, acc)
    for t in range(4):
        s[t * s_stride] = hsum_float_8(acc[t])


# ---- attention inner loops: 8 lanes at a time, f16 rows converted with vcvtph2ps -------
# head_dim is a multiple of 8 for every LLaMA shape; a scalar tail covers the rest.


cdef inline __m256 kv_row8(const void* kv, int64_t at, int f16) noexcept nogil:
    # 8 values of a cache row from element at, as floats
    if f16:
        return _mm256_cvtph_ps(_mm_loadu_si128(<const __m128i*>((<const uint16_t*>kv) + at)))
    return _mm256_loadu_ps((<const float*>kv) + at)

cdef inline float kv_at(const void* kv, int64_t at, int f16) noexcept nogil:
    # one value of a cache row, as a float (the scalar tails)
    if f16:
        return fp16_to_fp32((<const uint16_t*>kv)[at])
    return (<const float*>kv)[at]

cdef inline float kv_dot(const float* q, const void* kv, int64_t off, int n, int f16) noexcept nogil:
    cdef __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps()
    cdef int i = 0
    cdef float acc
    while i + 16 <= n:
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), kv_row8(kv, off + i, f16), a0)
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), kv_row8(kv, off + i + 8, f16), a1)
        i += 16
    acc = hsum_float_8(_mm256_add_ps(a0, a1))
    while i < n:
        acc += q[i] * kv_at(kv, off + i, f16)
        i += 1
    return acc

DEF KV_AHEAD = 8

cdef inline void kv_prefetch(const void* kv, int64_t at, int n, int f16) noexcept nogil:
    # the lines of a cache row from element at, n elements (rows of one head are n_embd_kv
    # apart: a page or more, where the hardware prefetcher does not follow)
    cdef const char* b = <const char*>kv + at * (2 if f16 else 4)
    cdef int k
    for k in range(0, n * (2 if f16 else 4), 64):
        _mm_prefetch(b + k, _MM_HINT_T0)

cdef void kv_scores(float* a, const float* q, const void* kv, int64_t off, int64_t stride, int n_pos, int n,
                    float scale, int f16) noexcept nogil:
    # one call per head and token, not per position: the dot products inline, with no
    # indirect call between them
    cdef int p
    for p in range(n_pos):
        if p + KV_AHEAD < n_pos:
            kv_prefetch(kv, off + (p + KV_AHEAD) * stride, n, f16)
        a[p] = kv_dot(q, kv, off + p * stride, n, f16) * scale

cdef void kv_mix(float* out, const float* a, const void* kv, int64_t off, int64_t stride, int n_pos, int n,
                 int f16) noexcept nogil:
    # 64 output lanes at a time held in 8 registers across all positions: per element the same
    # fma from p = 0 up as adding a * row p into out one position at a time, without loading
    # and storing out at every position
    cdef __m256 acc[8]
    cdef __m256 va
    cdef int i = 0, j, p
    cdef float x
    while i + 64 <= n:
        for j in range(8):
            acc[j] = _mm256_setzero_ps()
        for p in range(n_pos):
            if p + KV_AHEAD < n_pos:
                kv_prefetch(kv, off + (p + KV_AHEAD) * stride + i, 64, f16)
            va = _mm256_set1_ps(a[p])
            for j in range(8):
                acc[j] = _mm256_fmadd_ps(va, kv_row8(kv, off + p * stride + i + 8 * j, f16), acc[j])
        for j in range(8):
            _mm256_storeu_ps(out + i + 8 * j, acc[j])
        i += 64
    while i + 8 <= n:
        acc[0] = _mm256_setzero_ps()
        for p in range(n_pos):
            acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(a[p]), kv_row8(kv, off + p * stride + i, f16), acc[0])
        _mm256_storeu_ps(out + i, acc[0])
        i += 8
    while i < n:
        x = 0.0
        for p in range(n_pos):
            x += a[p] * kv_at(kv, off + p * stride + i, f16)
        out[i] = x
        i += 1


# ---- activation quantizer ------------------------------------------------------------
cdef inline __m256 round_half_away(__m256 v) noexcept nogil:
    # roundf, 8 at a time: truncate, then step away from zero where the dropped part is >= 0.5
    # (v - trunc(v) is exact). _mm256_round_ps's nearest mode would round ties to even.
    cdef __m256 sign = _mm256_set1_ps(-0.0)
    cdef __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC)
    cdef __m256 far = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(v, t)), _mm256_set1_ps(0.5), _CMP_GE_OQ)
    return _mm256_add_ps(t, _mm256_and_ps(far, _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0))))

cdef void quantize_row_q8_1_avx2(const float* x, void* vy, int64_t k) noexcept nogil:
    # the bytes of _quants.quantize_row_q8_1 (tests/test_isa.py): d = amax/127, q = roundf(x/d)
    # with the same float product x * (1/d), s = d * sum(q)
    cdef block_q8_1* y = <block_q8_1*>vy
    cdef __m256 sign = _mm256_set1_ps(-0.0)
    cdef __m256 v[4]
    cdef __m256i q[4]
    cdef __m256 m, mul
    cdef __m128 h
    cdef __m256i p, qsum
    cdef float amax, d, id_
    cdef int64_t i
    cdef int j
    for i in range(k // QK8_1):
        for j in range(4):
            v[j] = _mm256_loadu_ps(x + i * QK8_1 + 8 * j)
        m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                          _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])))
        h = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m))
        h = _mm_max_ps(h, _mm_movehl_ps(h, h))
        h = _mm_max_ss(h, _mm_movehdup_ps(h))
        amax = _mm_cvtss_f32(h)
        d = amax / <float>127.0
        id_ = <float>1.0 / d if d != 0.0 else <float>0.0
        y[i].d = d
        mul = _mm256_set1_ps(id_)
        for j in range(4):
            q[j] = _mm256_cvttps_epi32(round_half_away(_mm256_mul_ps(v[j], mul)))
        qsum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]))
        # i32 -> i8: the two packs interleave the 128-bit lanes; the permute restores the order
        p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]))
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
        _mm256_storeu_si256(<__m256i*>y[i].qs, p)
        y[i].s = d * hsum_i32_8(qsum)


# ---- the table: what this unit specialises; the generic unit fills the rest ------------
cdef isa_kernels_t TABLE
TABLE.name = b"avx2"
TABLE.types[GGML_TYPE_Q4_0].vec_dot = vec_dot_q4_0_q8_1_avx2
TABLE.types[GGML_TYPE_Q4_0].vec_dot_x4 = vec_dot_q4_0_q8_1_x4_avx2
TABLE.types[GGML_TYPE_Q4_1].vec_dot = vec_dot_q4_1_q8_1_avx2
TABLE.types[GGML_TYPE_Q4_1].vec_dot_x4 = vec_dot_q4_1_q8_1_x4_avx2
TABLE.types[GGML_TYPE_Q4_0].dot_r8 = dot_r8_q4_0_avx2
TABLE.types[GGML_TYPE_Q4_0].dot_r8_x4 = dot_r8_x4_q4_0_avx2
TABLE.types[GGML_TYPE_Q4_1].dot_r8 = dot_r8_q4_1_avx2
TABLE.types[GGML_TYPE_Q4_1].dot_r8_x4 = dot_r8_x4_q4_1_avx2
TABLE.types[GGML_TYPE_Q8_0].dot_r8 = dot_r8_q8_0_avx2
TABLE.types[GGML_TYPE_Q8_0].dot_r8_x4 = dot_r8_x4_q8_0_avx2
TABLE.types[GGML_TYPE_Q5_0].vec_dot = vec_dot_q5_0_q8_1_avx2
TABLE.types[GGML_TYPE_Q5_0].vec_dot_x4 = vec_dot_q5_0_q8_1_x4_avx2
TABLE.types[GGML_TYPE_Q5_1].vec_dot = vec_dot_q5_1_q8_1_avx2
TABLE.types[GGML_TYPE_Q5_1].vec_dot_x4 = vec_dot_q5_1_q8_1_x4_avx2
TABLE.types[GGML_TYPE_Q8_0].vec_dot = vec_dot_q8_0_q8_1_avx2
TABLE.types[GGML_TYPE_Q8_0].vec_dot_x4 = vec_dot_q8_0_q8_1_x4_avx2
TABLE.types[GGML_TYPE_Q2_K].vec_dot = vec_dot_q2_K_q8_K_avx2
TABLE.types[GGML_TYPE_Q2_K].vec_dot_x4 = vec_dot_q2_K_q8_K_x4_avx2
TABLE.types[GGML_TYPE_Q2_K].dot_r8 = dot_r8_q2_K_avx2
TABLE.types[GGML_TYPE_Q2_K].dot_r8_x4 = dot_r8_x4_q2_K_avx2
TABLE.types[GGML_TYPE_Q3_K].vec_dot = vec_dot_q3_K_q8_K_avx2
TABLE.types[GGML_TYPE_Q3_K].vec_dot_x4 = vec_dot_q3_K_q8_K_x4_avx2
TABLE.types[GGML_TYPE_Q4_K].vec_dot = vec_dot_q4_K_q8_K_avx2
TABLE.types[GGML_TYPE_Q4_K].vec_dot_x4 = vec_dot_q4_K_q8_K_x4_avx2
TABLE.types[GGML_TYPE_Q4_K].dot_r8 = dot_r8_q4_K_avx2
TABLE.types[GGML_TYPE_Q4_K].dot_r8_x4 = dot_r8_x4_q4_K_avx2
TABLE.types[GGML_TYPE_Q5_K].vec_dot = vec_dot_q5_K_q8_K_avx2
TABLE.types[GGML_TYPE_Q5_K].vec_dot_x4 = vec_dot_q5_K_q8_K_x4_avx2
TABLE.types[GGML_TYPE_Q5_K].dot_r8 = dot_r8_q5_K_avx2
TABLE.types[GGML_TYPE_Q5_K].dot_r8_x4 = dot_r8_x4_q5_K_avx2
TABLE.types[GGML_TYPE_Q6_K].vec_dot = vec_dot_q6_K_q8_K_avx2
TABLE.types[GGML_TYPE_Q6_K].vec_dot_x4 = vec_dot_q6_K_q8_K_x4_avx2
TABLE.types[GGML_TYPE_Q6_K].dot_r8 = dot_r8_q6_K_avx2
TABLE.types[GGML_TYPE_Q6_K].dot_r8_x4 = dot_r8_x4_q6_K_avx2
TABLE.types[GGML_TYPE_Q8_1].quantize = quantize_row_q8_1_avx2
TABLE.kv_scores = kv_scores
TABLE.kv_mix = kv_mix
fill_fp16_table()


def kernel_table():
    """This unit's kernel table, as a capsule for guanaco_rt._kernels._engine.KernelSet."""
    return PyCapsule_New(&TABLE, ISA_CAPSULE, NULL)
