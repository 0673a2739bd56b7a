/* What Cython cannot say: whether OpenMP was compiled in, and cpuid. */
#ifndef GUANACO_RT_PLATFORM_H
#define GUANACO_RT_PLATFORM_H
#ifdef _OPENMP
#include <omp.h>
static int gr_openmp_enabled(void) { return 1; }
static int gr_omp_max_threads(void) { return omp_get_max_threads(); }
#else
static int gr_openmp_enabled(void) { return 0; }
static int gr_omp_max_threads(void) { return 1; }
#endif

/* AVX2 + FMA + F16C usable (gcc's runtime also checks the OS saves YMM state). */
static int gr_cpu_has_avx2(void) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}
#endif
