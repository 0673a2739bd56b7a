# cython: language_level=3
# Token text and the decode loop (see _decode.pyx).
from libc.stdint cimport uint8_t, int32_t, int64_t

from guanaco_rt._kernels._engine cimport State
from guanaco_rt._kernels._sampling cimport SamplerCore

cdef struct bytebuf_t:
    uint8_t* p
    int64_t n, cap

cdef struct vocab_t:
    const uint8_t* blob      # every token's bytes, concatenated
    const int64_t* offs      # (n_vocab + 1,) token i is blob[offs[i]:offs[i + 1]]
    const uint8_t* normal    # (n_vocab,) 1 for NORMAL pieces, whose leading space is the dummy prefix
    int n_vocab

cdef struct utf8_t:
    uint8_t pend[4]          # an incomplete but so far valid sequence, waiting for more bytes
    int n_pend

cdef struct stops_t:
    const uint8_t* blob      # the stop strings' UTF-8, concatenated
    const int64_t* offs      # (n + 1,) stop i is blob[offs[i]:offs[i + 1]], none empty
    int n
    bytebuf_t held           # text that may still grow into a stop string

cdef struct text_t:
    vocab_t voc
    utf8_t u8
    stops_t stops
    bint strip               # drop the dummy-prefix space of the first NORMAL piece
    bytebuf_t chars          # scratch: the current token's whole characters
    bytebuf_t out            # text ready for the caller

cdef class TextStage:
    cdef text_t T
    cdef const uint8_t[::1] blob, normal, sblob
    cdef const int64_t[::1] offs, soffs
    cdef str take(self)
    cdef _result(self, int rc)

cdef class Decoder:
    cdef State st
    cdef SamplerCore sampler
    cdef TextStage text
    cdef int32_t[::1] gen           # (cap,) generated tokens (EOS excluded)
    cdef int32_t[:, ::1] top_ids    # (cap, max(1, n_probs))
    cdef double[:, ::1] top_lp      # (cap, max(1, n_probs))
    cdef double[::1] tok_lp         # (cap,) the generated token's own log-probability (n_probs > 0)
    cdef int n_gen, steps, max_new, cap
    cdef int eos_id, eot_id, shift, n_keep, status
    cdef uint8_t[::1] eog           # (n_vocab,) 1: the token ends the generation, as EOS does
    cdef readonly int n_shifts, n_discarded
    cdef public bint hold            # stop after each sampled token, before evaluating it (a constraint's step)
    cdef readonly int32_t pending    # with hold: the token sampled and not yet evaluated, or -1
    cdef bint poll_signals           # on the main thread: let Python run signal handlers now and then
    cdef double next_poll
    cdef object interrupt            # what a signal handler raised
    cdef int _signals(self) noexcept with gil
    cdef _grow(self, int cap)
    cdef int _finish(self, int reason) noexcept nogil
    cdef int _loop(self, bint until_text) noexcept nogil
