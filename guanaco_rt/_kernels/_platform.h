/* What Cython cannot say: whether OpenMP was compiled in, cpuid, and storage that each
 * compiled module keeps for itself. */
#ifndef GUANACO_RT_PLATFORM_H
#define GUANACO_RT_PLATFORM_H
#ifdef _OPENMP
#include <omp.h>
static inline int gr_openmp_enabled(void) { return 1; }
static inline int gr_omp_max_threads(void) { return omp_get_max_threads(); }
/* Free the calling thread's pool of OpenMP worker threads (libgomp keeps one per thread that
 * ever started a parallel region, and counts all of them: once they outnumber the cores, every
 * team spins only briefly at its barriers and sleeps, a futex wake-up per fork). 0: done, or
 * nothing to free; not inside a parallel region. */
static inline int gr_omp_release(void) { return omp_pause_resource_all(omp_pause_soft); }
#else
static inline int gr_openmp_enabled(void) { return 0; }
static inline int gr_omp_max_threads(void) { return 1; }
static inline int gr_omp_release(void) { return 0; }
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

/* The features the ISA units need (isa_list.py). On x86 usable only where the CPU has them
 * and the OS saves their registers (xgetbv: XCR0 bits 1-2 for YMM, 5-7 for the AVX-512
 * opmask and ZMM state); on aarch64 Advanced SIMD is always there, dotprod and i8mm are
 * optional (getauxval on Linux, sysctlbyname on macOS: isa/neon_cpu.h). Bit i of
 * gr_cpu_features() is word i of GR_CPU_FEATURE_NAMES. */
#define GR_CPU_FEATURE_NAMES "avx fma f16c avx2 avx512f avx512bw avx512vl avx512dq avx512vnni avx512vbmi " \
                             "avx512bf16 avxvnni neon dotprod i8mm"
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
static inline unsigned long long gr_xgetbv0(void) {
    unsigned int lo, hi;
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));   /* xgetbv, ecx = 0 */
    return ((unsigned long long)hi << 32) | lo;
}
static inline unsigned long long gr_cpu_features(void) {
    unsigned int a, b, c, d, b7 = 0, c7 = 0, a71 = 0, x, y, z;
    unsigned long long f = 0, xcr0;
    int ymm, zmm;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)))   /* no OSXSAVE: no AVX state */
        return 0;
    xcr0 = gr_xgetbv0();
    ymm = (xcr0 & 0x6) == 0x6;
    zmm = ymm && (xcr0 & 0xe0) == 0xe0;
    if (__get_cpuid_max(0, 0) >= 7) {
        __cpuid_count(7, 0, x, b7, c7, z);
        __cpuid_count(7, 1, a71, x, y, z);
    }
    if (!ymm || !(c & (1u << 28)))
        return 0;
    f |= 1ull << 0;                                             /* avx */
    f |= (unsigned long long)((c >> 12) & 1) << 1;             /* fma */
    f |= (unsigned long long)((c >> 29) & 1) << 2;             /* f16c */
    f |= (unsigned long long)((b7 >> 5) & 1) << 3;             /* avx2 */
    if (zmm) {
        f |= (unsigned long long)((b7 >> 16) & 1) << 4;        /* avx512f */
        f |= (unsigned long long)((b7 >> 30) & 1) << 5;        /* avx512bw */
        f |= (unsigned long long)((b7 >> 31) & 1) << 6;        /* avx512vl */
        f |= (unsigned long long)((b7 >> 17) & 1) << 7;        /* avx512dq */
        f |= (unsigned long long)((c7 >> 11) & 1) << 8;        /* avx512vnni */
        f |= (unsigned long long)((c7 >> 1) & 1) << 9;         /* avx512vbmi */
        f |= (unsigned long long)((a71 >> 5) & 1) << 10;       /* avx512bf16 */
    }
    f |= (unsigned long long)((a71 >> 4) & 1) << 11;           /* avxvnni */
    return f;
}
#elif defined(__aarch64__)
#include "isa/neon_cpu.h"
static inline unsigned long long gr_cpu_features(void) {
    unsigned long long f = 1ull << 12;                          /* neon */
    if (gr_cpu_has_dotprod()) {
        f |= 1ull << 13;                                        /* dotprod */
        f |= (unsigned long long)(gr_cpu_has_i8mm() != 0) << 14;   /* i8mm (its build needs dotprod too) */
    }
    return f;
}
#else
static inline unsigned long long gr_cpu_features(void) { return 0; }
#endif

/* fp16 -> fp32 lookup table, 256 KiB, one per compiled module (static): filled by
 * fill_fp16_table() in _common.pxd when the module is imported. */
__attribute__((unused)) static float gr_fp16_table[65536];
#endif
