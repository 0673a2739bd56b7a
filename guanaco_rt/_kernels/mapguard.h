/* SIGBUS guard for the model file's read-only mapping.
 *
 * A shared file mapping whose file shrinks under it (truncation, an in-place rewrite by a
 * copy tool that truncates first) raises SIGBUS on the next read of a page past the new
 * end: the process dies, whichever thread (OpenMP workers included) touched it. This unit
 * keeps a registry of the mappings we own and a SIGBUS handler that, for a fault inside
 * one of them, maps anonymous zero pages over the rest of that mapping (from the faulting
 * page on) and sets the mapping's `faulted` flag. The faulting load then runs again and
 * reads zeros: the kernels finish with garbage instead of killing the process, and the
 * caller checks the flag after the call and throws the result away (ModelFileChangedError).
 *
 * Every other SIGBUS (an address outside our ranges, or a signal sent with kill()) goes
 * to the handler that was installed before ours, or to the default action (the process
 * dies exactly as it would have without us).
 *
 * Async-signal safety: the handler reads the registry with atomic loads, calls only
 * mmap, sigaction and raise (all plain system calls; mmap is not on POSIX's list but is
 * a system call with no user-space state, which is what JVMs and sanitizers rely on too)
 * and takes no lock. Registration runs under the GIL, so two registrations never race;
 * only the handler reads concurrently.
 */
#ifndef GUANACO_MAPGUARD_H
#define GUANACO_MAPGUARD_H

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_ANONYMOUS
#define MAP_ANONYMOUS MAP_ANON
#endif

#define GRT_GUARD_SLOTS 256
#define GRT_SLOT_CLAIMED ((uintptr_t)1)   /* base value of a slot being filled in */

typedef struct {
    uintptr_t base;    /* start of the mapping (page-aligned); 0: free, GRT_SLOT_CLAIMED: being filled */
    size_t len;        /* bytes mapped (the file's size when mapped) */
    int faulted;       /* set by the handler: pages of this mapping were replaced by zeros */
} grt_guard_slot;

static grt_guard_slot grt_slots[GRT_GUARD_SLOTS];
static struct sigaction grt_prev;          /* the SIGBUS action ours replaced */
static int grt_installed = 0;
static int grt_chaining = 0;               /* set while a foreign fault runs the previous handler */
static uintptr_t grt_page = 4096;

static void grt_die_default(int sig)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    /* blocked while this handler runs: delivered (and fatal) on return; a hardware fault
     * would also simply fault again on return */
    raise(sig);
}

static void grt_sigbus(int sig, siginfo_t *si, void *uc)
{
    if (si != NULL && si->si_code > 0) {          /* raised by the kernel for a memory access */
        uintptr_t a = (uintptr_t)si->si_addr;
        for (int i = 0; i < GRT_GUARD_SLOTS; i++) {
            uintptr_t b = __atomic_load_n(&grt_slots[i].base, __ATOMIC_ACQUIRE);
            if (b <= GRT_SLOT_CLAIMED)
                continue;
            size_t n = __atomic_load_n(&grt_slots[i].len, __ATOMIC_RELAXED);
            if (a < b || a - b >= n)
                continue;
            uintptr_t lo = a & ~(grt_page - 1);
            uintptr_t hi = (b + n + grt_page - 1) & ~(grt_page - 1);
            /* a truncation takes the tail of the file: zero everything from here to the end of
             * the mapping in one call rather than one signal per page. Pages before this one
             * that turn out to be gone too fault in their turn. */
            if (mmap((void *)lo, hi - lo, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
                __atomic_store_n(&grt_slots[i].faulted, 1, __ATOMIC_RELEASE);
                return;
            }
            break;                                 /* cannot patch it: die as we would have */
        }
    }
    if (__atomic_exchange_n(&grt_chaining, 1, __ATOMIC_ACQ_REL)) {
        grt_die_default(sig);                      /* the previous handler sent it back to us */
        return;
    }
    if ((grt_prev.sa_flags & SA_SIGINFO) && grt_prev.sa_sigaction != NULL) {
        grt_prev.sa_sigaction(sig, si, uc);
    } else if (!(grt_prev.sa_flags & SA_SIGINFO) && grt_prev.sa_handler != SIG_DFL && grt_prev.sa_handler != SIG_IGN) {
        grt_prev.sa_handler(sig);
    } else {
        grt_die_default(sig);                      /* SIG_IGN cannot ignore a fault either */
    }
    __atomic_store_n(&grt_chaining, 0, __ATOMIC_RELEASE);
}

/* Install the handler once per process; 0, or an errno value. */
static int grt_guard_install(void)
{
    if (grt_installed)
        return 0;
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0)
        grt_page = (uintptr_t)page;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = grt_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;     /* a faulthandler alternate stack, if any, is used */
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &grt_prev) != 0)
        return errno;
    grt_installed = 1;
    return 0;
}

/* Register [base, base + len): the slot number, or -1 when every slot is taken. */
static int grt_guard_register(const void *base, size_t len)
{
    for (int i = 0; i < GRT_GUARD_SLOTS; i++) {
        uintptr_t expect = 0;
        if (__atomic_compare_exchange_n(&grt_slots[i].base, &expect, GRT_SLOT_CLAIMED, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
            __atomic_store_n(&grt_slots[i].len, len, __ATOMIC_RELAXED);
            __atomic_store_n(&grt_slots[i].faulted, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&grt_slots[i].base, (uintptr_t)base, __ATOMIC_RELEASE);
            return i;
        }
    }
    return -1;
}

/* Forget a slot; its mapping must not be read any more (it is about to be unmapped). */
static void grt_guard_unregister(int slot)
{
    if (slot >= 0 && slot < GRT_GUARD_SLOTS)
        __atomic_store_n(&grt_slots[slot].base, (uintptr_t)0, __ATOMIC_RELEASE);
}

/* The slot's flag itself (NULL for no slot), for a loop to poll between steps: valid while
 * the slot stays registered (the owner of the GuardedBuffer keeps it alive). */
static const int *grt_guard_flag(int slot)
{
    if (slot < 0 || slot >= GRT_GUARD_SLOTS)
        return NULL;
    return &grt_slots[slot].faulted;
}

static int grt_guard_faulted(int slot)
{
    if (slot < 0 || slot >= GRT_GUARD_SLOTS)
        return 0;
    return __atomic_load_n(&grt_slots[slot].faulted, __ATOMIC_ACQUIRE);
}

#endif
