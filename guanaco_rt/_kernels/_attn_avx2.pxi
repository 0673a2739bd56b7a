# Attention inner loops for AVX2 + F16C: 8 lanes at a time, f16 rows converted with
# vcvtph2ps. head_dim is a multiple of 8 for every LLaMA shape; a scalar tail covers
# the rest.

cdef inline float kv_dot(const float* q, const void* kv, int64_t off, int n, int f16) noexcept nogil:
    cdef __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps()
    cdef int i = 0
    cdef float acc
    cdef const float* kf
    cdef const uint16_t* kh
    if f16:
        kh = (<const uint16_t*>kv) + off
        while i + 16 <= n:
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_cvtph_ps(_mm_loadu_si128(<const __m128i*>(kh + i))), a0)
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_cvtph_ps(_mm_loadu_si128(<const __m128i*>(kh + i + 8))), a1)
            i += 16
        acc = hsum_float_8(_mm256_add_ps(a0, a1))
        while i < n:
            acc += q[i] * fp16_to_fp32(kh[i])
            i += 1
    else:
        kf = (<const float*>kv) + off
        while i + 16 <= n:
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(kf + i), a0)
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(kf + i + 8), a1)
            i += 16
        acc = hsum_float_8(_mm256_add_ps(a0, a1))
        while i < n:
            acc += q[i] * kf[i]
            i += 1
    return acc

cdef inline void kv_axpy(float* out, float a, const void* kv, int64_t off, int n, int f16) noexcept nogil:
    cdef __m256 va = _mm256_set1_ps(a)
    cdef int i = 0
    cdef const float* vf
    cdef const uint16_t* vh
    if f16:
        vh = (<const uint16_t*>kv) + off
        while i + 8 <= n:
            _mm256_storeu_ps(out + i, _mm256_fmadd_ps(va, _mm256_cvtph_ps(_mm_loadu_si128(<const __m128i*>(vh + i))),
                                                      _mm256_loadu_ps(out + i)))
            i += 8
        while i < n:
            out[i] += a * fp16_to_fp32(vh[i])
            i += 1
    else:
        vf = (<const float*>kv) + off
        while i + 8 <= n:
            _mm256_storeu_ps(out + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(vf + i), _mm256_loadu_ps(out + i)))
            i += 8
        while i < n:
            out[i] += a * vf[i]
            i += 1

