# cython: language_level=3
# The sampling chain (see _sampling.pyx).
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t

cdef extern from "numpy/random/bitgen.h":
    ctypedef struct bitgen_t:
        void* state
        uint64_t (*next_uint64)(void* st) nogil
        uint32_t (*next_uint32)(void* st) nogil
        double (*next_double)(void* st) nogil
        uint64_t (*next_raw)(void* st) nogil

cdef struct sparams_t:
    double temperature          # <= 0: greedy
    int top_k                   # <= 0: off
    double top_p                # >= 1: off
    double min_p                # <= 0: off
    double typical_p            # >= 1: off
    double repetition_penalty   # 1: off
    int repeat_last_n           # penalty window, in tokens
    double frequency_penalty    # times the count in the window
    double presence_penalty     # once per id present in the window
    double dry_multiplier       # DRY: 0 off; the penalty is dry_multiplier * dry_base^(repeat - dry_allowed_length)
    double dry_base             # >= 1
    int dry_allowed_length      # repeats up to this long cost nothing
    int dry_last_n              # the window DRY looks back over, in tokens; -1: the whole history
    const uint8_t* dry_breaker  # (n_vocab,) 1: a sequence breaker (no repeat spans it; never penalized)
    int n_bias
    const int32_t* bias_ids     # (n_bias,) ids, in range
    const double* bias_vals     # (n_bias,) added to the logit; finite or -inf
    int n_probs                 # > 0: report the top n_probs log-probabilities
    const uint32_t* allowed     # ((n_vocab + 31) // 32,) constraint mask: bit i % 32 of word i // 32 = i allowed

cdef struct sampler_t:
    int n_vocab
    sparams_t p
    bitgen_t* rng
    double* x        # (n_vocab,) logits with bias and penalties, float64
    int32_t* ids     # (n_vocab,) candidate ids, best first
    double* c        # (n_vocab,) candidate logits, aligned with ids
    double* pr       # (n_vocab,) probabilities / log-probabilities scratch
    double lp_norm   # log(sum(exp(x))), set with the top log-probabilities: x[i] - lp_norm is i's
    double* sh       # (n_vocab,) typical-p: -|surprise - entropy|, then keep flags
    int32_t* perm    # (n_vocab,) typical-p: candidate positions, most typical first
    int32_t* cnt     # (n_vocab,) occurrences in the penalty window; all zero between calls
    int32_t* dmax    # (n_vocab,) DRY: 1 + the longest repeat the token would extend; all zero between calls
    int32_t* z       # (z_cap,) DRY: the Z-function of the reversed window (malloc'd, grown on demand)
    int z_cap
    uint64_t* key    # (2, n_vocab) radix-sort scratch: keys
    int32_t* tmp     # (2, n_vocab) radix-sort scratch: indices

cdef class SamplerCore:
    cdef sampler_t S
    cdef object bitgen
    cdef int32_t[::1] bias_ids
    cdef double[::1] bias_vals
    cdef double[::1] x, c, pr, sh
    cdef int32_t[::1] ids, perm, cnt, tmp, dmax
    cdef uint8_t[::1] dry_breaker
    cdef uint64_t[::1] key
    cdef object mask                # the constraint bitmask array S.p.allowed points into, or None
    cdef _check(self, const float[::1] logits, const int32_t[::1] hist)

cdef int32_t sample_token(sampler_t* S, const float* logits, const int32_t* hist, int n_hist,
                          int32_t* top_ids, double* top_lp) noexcept nogil
