# cython: language_level=3
# The LLaMA forward pass and the state it runs on (see _engine.pyx).
from libc.stdint cimport uint8_t, int32_t, int64_t

from guanaco_rt._kernels._isa cimport isa_kernels_t
from guanaco_rt._kernels._quants cimport type_traits_t

cdef struct tensor_t:
    const uint8_t* data          # (ne1 rows of nb1 bytes), in the read-only mmap
    const type_traits_t* tt      # its block format
    int type
    int64_t ne0                  # row length (input dim)
    int64_t ne1                  # rows (output dim)
    int64_t nb1                  # bytes per row
    int r8                       # 1: each 8 rows interleaved (block_q4_0x8, ...; repack_r8), not in the mmap

cdef struct layer_t:
    tensor_t wq, wo              # (n_embd rows of n_embd)
    tensor_t wk, wv              # (n_embd_kv rows of n_embd)
    tensor_t w1, w3              # (n_ff rows of n_embd)
    tensor_t w2                  # (n_embd rows of n_ff)
    const float* attention_norm  # (n_embd,)
    const float* ffn_norm        # (n_embd,)

cdef struct model_t:
    int n_vocab, n_embd, n_head, n_layer, n_rot, n_ff, head_dim
    int n_head_kv, n_embd_kv     # key/value heads (grouped-query attention: n_head is a multiple)
    float eps
    const isa_kernels_t* k       # the dot products and attention loops this model runs with
    tensor_t tok_embeddings      # (n_vocab rows of n_embd)
    tensor_t output              # (n_vocab rows of n_embd); tok_embeddings when the model ties them
    const float* norm            # (n_embd,)
    layer_t* layers              # (n_layer,)
    const double* freqs          # (n_rot/2,) the RoPE frequencies, rope_freqs()
    # the SIGBUS guard's flag of the weights' mapping (NULL: none), set when the file shrank
    # under it: calls stop as if cancelled, and the Model raises ModelFileChangedError
    const int* file_fault

cdef struct gov_last_t:
    # what a Model's governors last found best, shared by its States (an Engine's): a new
    # State starts on it, so a short call does not begin on a setting already known to lose.
    # Plain int stores from any thread, like State.cancel
    int known            # a call, or the load's interleaving (load_gov_t), has decided
    int one              # one thread won
    double at            # when (monotonic s); older than GOV_LAST_TTL, it is not followed

cdef struct gov_t:
    # the thread governor (gov_next / gov_record): 1 or nth threads per decoded token
    int on               # adapt (Session(adaptive_threads=True)); off: always nth
    gov_last_t* last     # the Engine's record (NULL: none), written whenever the setting is decided
    int one              # the current setting is one thread
    int trying           # the token in flight tries the other setting
    int countdown        # tokens on the current setting until the next try
    int backoff          # the interval of tries while one thread wins (doubles, capped)
    int n_one, n_multi   # tokens decoded on one / on nth threads (statistics)
    double t_one, t_multi  # seconds per token on each setting (moving averages; 0: not yet)
    double best_multi    # the fastest recent token on nth threads (slowly forgotten)
    # a try in flight (decode_one): given up once behind the current setting's pace (gov_try_check)
    double try_t0, try_pace, try_dt   # its start, seconds a layer to beat (0: no check), its estimate
    int try_keep                      # the current setting's threads, for the rest of a given-up try
    # a look for a busy core (gov_probe_start / gov_probe_check): the team's run-queue wait
    # over a window early in a prompt, or in the first token on nth threads
    double probe_t0      # the call's start (0: no look in flight)
    double probe_w0      # the window's start (0: not open yet)
    int64_t probe_wait   # the team's run-queue wait when the window opened, ns (team_run_wait)
    int probe_hit        # it found a core busy in the call in flight (decode_one then records no time)
    double early_w0      # a short call's window, from its first layer (0: not open; -1: no figures)
    int64_t early_wait   # the team's run-queue wait then, ns (gov_probe_end)
    int n_busy           # times it found one (statistics)

cdef struct load_gov_t:
    # the threads of the load's interleaving (load_next / load_record): each tensor on 1 or
    # nth threads, timed per byte; the same choice as the decode governor's (gov_pick)
    int nth
    int k                # tensors timed so far (the first, on nth threads, warms the pool and is not)
    int decided          # the samples are in (or the first pair already said a core is busy)
    int one              # the current setting is one thread
    int trying           # the tensor in flight tries the other setting
    int countdown        # while nth wins: tensors until the next try of one thread
    double since, wait   # while one wins: seconds on it since the last try of nth, and before the next
    double s_one, b_one, s_multi, b_multi   # seconds and bytes of the samples on each setting
    double t_one, t_multi                   # seconds per byte on each setting (latest estimate; 0: not yet)

cdef struct state_t:
    int n_ctx, n_batch, nth, kv_f16
    gov_t gov
    int32_t* tokens      # (n_ctx,) the sequence: the ids whose K/V are at positions 0..n_past-1
    int n_past
    float* logits        # (n_vocab,) after tokens[n_past - 1], valid when have_logits
    int have_logits
    int cancel           # set from another thread: stop at the next layer
    void* k_cache        # (n_layer, n_ctx, n_embd_kv) f32 or f16
    void* v_cache        # (n_layer, n_ctx, n_embd_kv) f32 or f16
    float* x             # (n_batch, n_embd) residual stream
    float* xb            # (n_batch, n_embd) normed block input, then attention output
    float* xb2           # (n_batch, n_embd) block output before the residual add
    float* q             # (n_batch, n_embd)
    float* k             # (n_batch, n_embd_kv) new keys before they enter the cache
    float* v             # (n_batch, n_embd_kv) new values
    float* att           # (n_head, n_ctx) attention scores, one row per head
    float* hb            # (n_batch, n_ff)
    float* hb2           # (n_batch, n_ff)
    uint8_t* act         # (n_batch, act_stride) quantized activations
    int64_t act_stride

cdef class KernelSet:
    cdef isa_kernels_t k
    cdef readonly str isa
    cdef readonly tuple chain        # the units whose tables fill it, the unit first (isa_list.py fallbacks)
    cdef readonly dict sources       # {(ggml type, "vec_dot" | "dot_r8"): unit}: who supplies each pair
    cdef object tables               # the capsules (kept alive: the table points into their modules)

cdef class Engine:
    cdef model_t m
    cdef readonly KernelSet kernels
    cdef const uint8_t[::1] buf
    cdef object guard                # the GuardedBuffer whose flag m.file_fault points into (kept alive)
    cdef list copies                 # the anonymous mappings that hold interleaved tensors (repack_r8)
    cdef readonly list repacked      # (byte offset in buf, bytes) of every tensor interleaved at load
    cdef double _interleave(self, tensor_t* t, object inplace, int nth, object release) except? -2
    cdef double[::1] freqs
    cdef gov_last_t gov_last         # what its States' governors last found best (gov_t.last)
    cdef readonly dict load_threads  # the interleaving's thread choice: {"threads", "one_thread_tensors", ...}

cdef class State:
    cdef state_t s
    cdef readonly Engine engine
    cdef uint8_t[::1] k_cache, v_cache
    cdef int32_t[::1] tokens_buf
    cdef float[::1] logits_buf
    cdef float[:, ::1] x, xb, xb2, q, k, v, att, hb, hb2
    cdef uint8_t[::1] act
    cdef _kv_view(self, uint8_t[::1] cache)

cdef void quantize_rows(const isa_kernels_t* K, uint8_t* out, int64_t out_stride, const float* x, int64_t n,
                        int n_tok, int vt, int nth) noexcept nogil
cdef int r8_parts(int type, int* size, int* step) noexcept nogil
cdef void repack_r8(uint8_t* dst, const uint8_t* src, int type, int64_t nb, int64_t nb1, int64_t ne1,
                    int nth) noexcept nogil
cdef void matmul_q(const isa_kernels_t* K, float** outs, const tensor_t** Ws, int nw,
                   const uint8_t* xq, int64_t xq_stride, int n_tok, int nth, bint glu) noexcept nogil
cdef double monotonic() noexcept nogil
cdef int decode_one(const model_t* m, state_t* s, int32_t tok) noexcept nogil
cdef int gov_threads(const state_t* s) noexcept nogil
cdef int gov_next(state_t* s) noexcept nogil
cdef void gov_record(state_t* s, int used, double dt) noexcept nogil
cdef void gov_reset(gov_t* g, int on) noexcept nogil
cdef int gov_pick(int one, double t_one, double t_multi) noexcept nogil
cdef int gov_last_one(const gov_last_t* last) noexcept nogil
cdef void load_reset(load_gov_t* lg, int nth) noexcept nogil
cdef int load_next(load_gov_t* lg) noexcept nogil
cdef void load_record(load_gov_t* lg, int used, double dt, double nbytes) noexcept nogil
cdef int load_busy(const load_gov_t* lg) noexcept nogil
cdef int64_t team_run_wait(int nth) noexcept nogil
cdef void gov_probe_judge(state_t* s, double wait, double el) noexcept nogil
cdef void rmsnorm(float* out, const float* x, const float* w, int n, float eps) noexcept nogil
cdef void rope(float* x, int n_head, int head_dim, int n_rot, const double* freqs, int pos) noexcept nogil
cdef void rope_freqs(double* out, int n_rot, double base) noexcept nogil
cdef void softmax(float* x, int n) noexcept nogil
cdef void silu_mul(float* a, const float* b, int64_t n) noexcept nogil
cdef void attention(const isa_kernels_t* K, float* out, const float* q, const void* k_cache, const void* v_cache,
                    float* att, int n_tok, int n_past, int n_head, int n_head_kv, int head_dim, int n_ctx, int f16,
                    int nth) noexcept nogil
cdef int forward(const model_t* m, state_t* s, const int32_t* tokens, int n_tok, float* logits,
                 bint all_logits) noexcept nogil
cdef void shift_kv(const model_t* m, state_t* s, int n_keep, int n_discard) noexcept nogil
