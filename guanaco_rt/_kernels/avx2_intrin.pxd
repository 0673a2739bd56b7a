# cython: language_level=3
# The AVX2 / FMA / F16C intrinsics the avx2 kernels use. The vector types are
# opaque to Cython (declared as scalars it never operates on); only these
# functions touch them. Include only in modules built with -mavx2 -mfma -mf16c.
cdef extern from "immintrin.h" nogil:
    ctypedef float __m256
    ctypedef float __m128
    ctypedef long long __m256i
    ctypedef long long __m128i

    float _cvtsh_ss(unsigned short)

    __m256 _mm256_setzero_ps()
    __m256 _mm256_set1_ps(float)
    __m256 _mm256_fmadd_ps(__m256, __m256, __m256)
    __m256 _mm256_mul_ps(__m256, __m256)
    __m256 _mm256_add_ps(__m256, __m256)
    __m256 _mm256_cvtepi32_ps(__m256i)
    __m128 _mm256_extractf128_ps(__m256, int)
    __m128 _mm256_castps256_ps128(__m256)
    __m128 _mm_add_ps(__m128, __m128)
    __m128 _mm_add_ss(__m128, __m128)
    __m128 _mm_movehl_ps(__m128, __m128)
    __m128 _mm_movehdup_ps(__m128)
    float _mm_cvtss_f32(__m128)

    __m256i _mm256_setzero_si256()
    __m256i _mm256_loadu_si256(const __m256i*)
    __m128i _mm_loadu_si128(const __m128i*)
    __m256i _mm256_set1_epi8(char)
    __m256i _mm256_set1_epi16(short)
    __m256i _mm256_set1_epi32(int)
    __m256i _mm256_set1_epi64x(long long)
    __m256i _mm256_set_epi64x(long long, long long, long long, long long)
    __m128i _mm_set1_epi16(short)
    __m128i _mm_cvtsi32_si128(int)
    __m256i _mm256_set_m128i(__m128i, __m128i)
    __m256i _mm256_castsi128_si256(__m128i)
    __m256i _mm256_insertf128_si256(__m256i, __m128i, int)
    __m128i _mm_srli_epi16(__m128i, int)
    __m256i _mm256_and_si256(__m256i, __m256i)
    __m256i _mm256_andnot_si256(__m256i, __m256i)
    __m256i _mm256_or_si256(__m256i, __m256i)
    __m256i _mm256_add_epi8(__m256i, __m256i)
    __m256i _mm256_sub_epi8(__m256i, __m256i)
    __m256i _mm256_add_epi32(__m256i, __m256i)
    __m256i _mm256_sub_epi16(__m256i, __m256i)
    __m256i _mm256_srl_epi16(__m256i, __m128i)
    __m256i _mm256_sll_epi16(__m256i, __m128i)
    __m256i _mm256_srli_epi16(__m256i, int)
    __m256i _mm256_slli_epi16(__m256i, int)
    __m256i _mm256_shuffle_epi8(__m256i, __m256i)
    __m256i _mm256_cmpeq_epi8(__m256i, __m256i)
    __m256i _mm256_sign_epi8(__m256i, __m256i)
    __m256i _mm256_maddubs_epi16(__m256i, __m256i)
    __m256i _mm256_madd_epi16(__m256i, __m256i)
