/* Which NEON build of neon.c this aarch64 CPU runs: dotprod (ARMv8.2 SDOT, vdotq_s32) and
 * i8mm (SMMLA, vmmlaq_s32) are optional before ARMv8.4 / ARMv8.6. The baseline build of
 * neon.c runs on every aarch64 CPU (Advanced SIMD is mandatory there). */
#ifndef GUANACO_RT_NEON_CPU_H
#define GUANACO_RT_NEON_CPU_H
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1UL << 13)
#endif
static inline int gr_cpu_has_dotprod(void) { return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0; }
static inline int gr_cpu_has_i8mm(void) { return (getauxval(AT_HWCAP2) & HWCAP2_I8MM) != 0; }
#elif defined(__aarch64__) && defined(__APPLE__)
#include <stddef.h>
#include <sys/sysctl.h>
static inline int gr_sysctl_flag(const char *name) {
    int v = 0;
    size_t len = sizeof v;
    return sysctlbyname(name, &v, &len, NULL, 0) == 0 && v != 0;
}
static inline int gr_cpu_has_dotprod(void) { return gr_sysctl_flag("hw.optional.arm.FEAT_DotProd"); }
static inline int gr_cpu_has_i8mm(void) { return gr_sysctl_flag("hw.optional.arm.FEAT_I8MM"); }
#else
static inline int gr_cpu_has_dotprod(void) { return 0; }
static inline int gr_cpu_has_i8mm(void) { return 0; }
#endif
#endif
