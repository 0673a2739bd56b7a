/* What Cython cannot say: whether OpenMP was compiled in, cpuid, and storage that each
 * compiled module keeps for itself. */
#ifndef GUANACO_RT_PLATFORM_H
#define GUANACO_RT_PLATFORM_H
#ifdef _OPENMP
#include <omp.h>
static inline int gr_openmp_enabled(void) { return 1; }
static inline int gr_omp_max_threads(void) { return omp_get_max_threads(); }
#else
static inline int gr_openmp_enabled(void) { return 0; }
static inline int gr_omp_max_threads(void) { return 1; }
#endif

/* AVX2 + FMA + F16C usable (gcc's runtime also checks the OS saves YMM state). */
static inline int gr_cpu_has_avx2(void) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

/* fp16 -> fp32 lookup table, 256 KiB, one per compiled module (static): filled by
 * fill_fp16_table() in _common.pxd when the module is imported. */
__attribute__((unused)) static float gr_fp16_table[65536];
#endif
