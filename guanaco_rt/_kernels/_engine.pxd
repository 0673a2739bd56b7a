# cython: language_level=3
# The forward pass of every family and the state it runs on (see _engine.pyx).
from libc.stdint cimport uint8_t, int32_t, int64_t
from posix.time cimport timespec

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_mutex_init(pthread_mutex_t* mu, const void* attr)
    int pthread_mutex_destroy(pthread_mutex_t* mu)
    int pthread_mutex_lock(pthread_mutex_t* mu)
    int pthread_mutex_unlock(pthread_mutex_t* mu)
    int pthread_cond_init(pthread_cond_t* cv, const void* attr)
    int pthread_cond_destroy(pthread_cond_t* cv)
    int pthread_cond_wait(pthread_cond_t* cv, pthread_mutex_t* mu)
    int pthread_cond_timedwait(pthread_cond_t* cv, pthread_mutex_t* mu, const timespec* until)
    int pthread_cond_broadcast(pthread_cond_t* cv)
    int pthread_cond_signal(pthread_cond_t* cv)

from guanaco_rt._kernels._isa cimport isa_kernels_t
from guanaco_rt._kernels._quants cimport type_traits_t
from guanaco_rt._kernels._lora cimport lora_t
# monotonic: cimported from here by _decode as well
from guanaco_rt._kernels._governor cimport gov_t, gov_last_t, pass_gov_t, monotonic

cdef struct tensor_t:
    const uint8_t* data          # (ne1 rows of nb1 bytes), in the read-only mmap
    const type_traits_t* tt      # its block format
    int type
    int64_t ne0                  # row length (input dim)
    int64_t ne1                  # rows (output dim)
    int64_t nb1                  # bytes per row
    int r8                       # 1: each whole 8 rows interleaved (block_q4_0x8, ...; repack_r8), the
    #                              last ne1 % 8 as the file has them after the groups; not in the mmap

cdef enum:
    GLU_NONE = 0                  # matmul_q's gate: none,
    GLU_SILU = 1                  # silu(w1 x) * (w3 x) (SwiGLU: LLaMA, Qwen, Phi-3),
    GLU_GELU = 2                  # gelu_tanh(w1 x) * (w3 x) (GeGLU: Gemma)

cdef struct layer_t:
    tensor_t wq                  # (n_embd_q rows of n_embd)
    tensor_t wo                  # (n_embd rows of n_embd_q)
    tensor_t wk, wv              # (n_embd_kv rows of n_embd)
    tensor_t w1, w3              # (n_ff rows of n_embd)
    tensor_t w2                  # (n_embd rows of n_ff)
    const float* attention_norm  # (n_embd,)
    const float* ffn_norm        # (n_embd,)
    # what the families add; NULL / 0 where a family has none (LLaMA: all of them)
    const float* bq              # (n_embd_q,) bias of wq (Qwen2)
    const float* bk              # (n_embd_kv,)
    const float* bv              # (n_embd_kv,)
    const float* q_norm          # (head_dim,) RMSNorm of each query head before RoPE (Qwen3, Gemma 3)
    const float* k_norm          # (head_dim,) the same for each key head
    const float* attn_post_norm  # (n_embd,) RMSNorm of the attention output before the residual (Gemma 3)
    const float* ffn_post_norm   # (n_embd,) the same for the feed-forward output
    const double* freqs          # (n_rot/2,) this layer's RoPE frequencies (Gemma 3: local and global differ)
    int n_swa                    # sliding window: attend to the last n_swa positions only; 0: to all

cdef struct model_t:
    int n_vocab, n_embd, n_head, n_layer, n_rot, n_ff, head_dim
    int n_head_kv, n_embd_kv     # key/value heads (grouped-query attention: n_head is a multiple)
    int n_embd_q                 # n_head * head_dim: n_embd, except where key_length says otherwise (Qwen3, Gemma 3)
    float eps
    int rope_neox                # 0: RoPE rotates adjacent pairs (ggml mode 0, LLaMA); 1: the two halves (NEOX)
    int glu                      # GLU_SILU or GLU_GELU
    float embd_scale             # token embeddings times this (Gemma 3: sqrt(n_embd)); 1: none
    float attn_scale             # q.k times this: 1/sqrt(head_dim) unless the family says otherwise
    const isa_kernels_t* k       # the dot products and attention loops this model runs with
    tensor_t tok_embeddings      # (n_vocab rows of n_embd)
    tensor_t output              # (n_vocab rows of n_embd); tok_embeddings when the model ties them
    const float* norm            # (n_embd,)
    layer_t* layers              # (n_layer,)
    const double* freqs          # (n_rot/2,) the RoPE frequencies, rope_freqs(); a layer's own in layer_t
    # the SIGBUS guard's flag of the weights' mapping (NULL: none), set when the file shrank
    # under it: calls stop as if cancelled, and the Model raises ModelFileChangedError
    const int* file_fault

cdef struct state_t:
    int n_ctx, n_batch, kv_f16
    int nth              # the threads of the call in flight, as its governor answers (gov.n: the limit)
    gov_t gov            # the thread governor (_governor.pyx), the one owner of the thread count
    int32_t* tokens      # (n_ctx,) the sequence: the ids whose K/V are at positions 0..n_past-1
    int n_past
    float* logits        # (n_vocab,) after tokens[n_past - 1], valid when have_logits
    int have_logits
    int cancel           # set from another thread: stop at the next layer
    void* k_cache        # each layer's rows (kv_off) of n_embd_kv, f32 or f16
    void* v_cache        # the same for the values
    # the KV rows of each layer: a layer without a window holds positions 0..n_past-1 in rows
    # 0..n_ctx-1; a sliding-window layer (layer_t.n_swa) holds positions swa_base..n_past-1 in
    # rows 0..swa_rows-1 (swa_room slides them down; swa_refill evaluates again what a rewind
    # or shift left behind swa_base)
    int64_t* kv_off      # (n_layer,) the element where each layer's rows start
    int n_swa            # the longest window of the model's layers (0: none)
    int swa_rows         # rows of a sliding-window layer: n_ctx, or fewer (State)
    int swa_keep         # positions behind n_past that a slide keeps: the window and a margin for rewinds
    int swa_base         # the position in row 0 of the sliding-window layers
    int swa_refills      # how many times swa_refill evaluated the sequence again
    int32_t* redo        # (n_ctx,) swa_refill's copy of the tokens it evaluates again
    float* x             # (n_batch, n_embd) residual stream
    float* xb            # (n_batch, max(n_embd, n_embd_q)) normed block input, then attention output
    float* xb2           # (n_batch, n_embd) block output before the residual add
    float* q             # (n_batch, n_embd_q)
    float* k             # (n_batch, n_embd_kv) new keys before they enter the cache
    float* v             # (n_batch, n_embd_kv) new values
    float* att           # (n_head, n_ctx) attention scores, one row per head
    float* hb            # (n_batch, n_ff)
    float* hb2           # (n_batch, n_ff)
    uint8_t* act         # (n_batch, act_stride) quantized activations
    int64_t act_stride
    uint8_t* emb_row     # (tok_embeddings.nb1,) an interleaved embedding row in the file's order (embed_rows)
    batcher_t* batch     # NULL, or the batcher whose passes this sequence's decoding and prompts join
    int member           # it is one of batch's members (batch.mu guards it)
    float* hidden        # (n, n_embd) or NULL: if set, forward() writes each token's normed hidden state there
    int64_t hidden_pos
    lora_t* lora         # run-time LoRA adapters (_lora.pyx), NULL: none
    # prefix sharing (copy_prefix): positions 0..share_floor-1 hold K/V and tokens that no
    # write changes before it lowers share_floor under share_mu, so another thread may copy
    # them while this sequence runs (kv_will_write, kv_written)
    pthread_mutex_t share_mu
    int share_floor

cdef struct seq_t:
    # one sequence's part of a forward pass (forward_seqs)
    state_t* s                   # its State: tokens, n_past, KV rows, attention scratch, logits
    const int32_t* tokens        # (n_tok,) its next tokens
    int n_tok
    float* all_logits            # (n_tok, n_vocab) for every token's logits, or NULL: the last only, in s.logits
    int rc                       # out: 0, or 1 when cancelled
    int off                      # forward_seqs' own: its first row in the pass,
    int n_past                   # its n_past when the pass began,
    int base                     # and the position in row 0 of the layer in flight

cdef struct slot_t:
    # a caller's request to a batcher: its sequence's next tokens, waiting for a pass
    seq_t q
    slot_t* next
    int done

cdef struct copy_t:
    # a caller's copy_prefix() of a State attached to a batcher, run on the batcher's thread
    # between its passes (batch_copy)
    state_t* dst
    state_t* src
    const int32_t* ids
    int n
    int got                      # out: the positions of ids that dst holds
    copy_t* next
    int done

cdef struct batcher_t:
    # the passes that sequences of one Engine share (Batcher): callers queue slots and wait;
    # the batcher's thread takes what is queued, up to max_seqs sequences and max_tokens
    # rows, runs forward_seqs() once for them, and wakes them
    pthread_mutex_t mu
    pthread_cond_t work          # the batcher's thread waits here for slots
    pthread_cond_t done          # callers wait here for theirs
    slot_t* head                 # the queue, first come first
    int n_queued
    copy_t* copies               # copy_prefix() requests, run before the next pass, first come first
    int members                  # sequences in a generation (state_t.member): a pass waits up to
    double gather                # gather seconds for each of them to queue its next token
    int closing
    int paused                   # no passes until resumed (Batcher.pause: a caller lines sequences up)
    long pid                     # the process that made it (a forked child runs its sequences alone)
    int max_seqs, max_tokens, chunk   # a pass's sequences and rows; a prompt goes chunk rows at a time
    const model_t* m
    state_t* w                   # the pass's buffers and threads (the Batcher's work State)
    float* out                   # (max_seqs, n_vocab) logits of a pass
    seq_t* seqs                  # (max_seqs,) a pass's sequences
    slot_t** taken               # (max_seqs,) and their slots
    int nth                      # the threads a pass may use (the work State's)
    pass_gov_t pg                # whether the next one uses them, or one (a core busy elsewhere)
    # statistics
    int64_t passes, seq_passes, rows
    double busy_s, last_s
    int64_t copy_runs, copied    # copies run (that copied any positions) and the positions copied
    double copy_s

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
    cdef double[:, ::1] freqs
    cdef gov_last_t gov_last         # what its States' governors last found best (gov_t.last)
    cdef readonly dict load_threads  # the interleaving's thread choice: {"threads", "one_thread_tensors", ...}
    cdef tensor_t _weight(self, const uint8_t[::1] buf, str name, dict tensors, dict overrides) except *

cdef class State

cdef class Batcher:
    cdef batcher_t b
    cdef readonly Engine engine
    cdef State work
    cdef float[:, ::1] out_buf
    cdef object thread
    cdef object __weakref__          # a Model's set of its batchers (closed with it)

cdef class State:
    cdef state_t s
    cdef readonly Engine engine
    cdef readonly Batcher batcher
    cdef readonly object lora        # the LoraSet s.lora points into, or None
    cdef uint8_t[::1] k_cache, v_cache
    cdef int64_t[::1] kv_off_buf
    cdef int32_t[::1] redo_buf
    cdef int32_t[::1] tokens_buf
    cdef float[::1] logits_buf
    cdef float[:, ::1] x, xb, xb2, q, k, v, att, hb, hb2
    cdef uint8_t[::1] act, emb_row
    cdef _kv_rows(self, uint8_t[::1] cache, int l)
    cdef int _check_new(self, const int32_t[::1] ids, str what) except -1

cdef void quantize_rows(const isa_kernels_t* K, uint8_t* out, int64_t out_stride, const float* x, int64_t n,
                        int n_tok, int vt, int nth) noexcept nogil
cdef int r8_parts(int type, int* size, int* step) noexcept nogil
cdef void repack_r8(uint8_t* dst, const uint8_t* src, int type, int64_t nb, int64_t nb1, int64_t ne1,
                    int nth) noexcept nogil
cdef void gather_r8(uint8_t* dst, const tensor_t* W, int64_t row) noexcept nogil
cdef void embed_rows(float* out, const tensor_t* W, const int32_t* tokens, int n_tok, uint8_t* scratch) noexcept nogil
cdef void matmul_q(const isa_kernels_t* K, float** outs, const tensor_t** Ws, int nw,
                   const uint8_t* xq, int64_t xq_stride, int n_tok, int nth, int glu) noexcept nogil
cdef int decode_one(const model_t* m, state_t* s, int32_t tok) noexcept nogil
cdef int step_one(const model_t* m, state_t* s, int32_t tok) noexcept nogil
cdef void batch_leave(batcher_t* b, state_t* s) noexcept nogil
cdef int forward(const model_t* m, state_t* s, const int32_t* tokens, int n_tok, float* logits,
                 bint all_logits) noexcept nogil
cdef void shift_kv(const model_t* m, state_t* s, int n_keep, int n_discard) noexcept nogil
