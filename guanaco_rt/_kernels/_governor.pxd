# cython: language_level=3
# The thread governor (see _governor.pyx): how many threads each call of the forward pass
# runs on. The forward pass asks it at a call's start, after each layer and at the end
# (gov_prompt_start / gov_token_start, gov_layer_done, gov_prompt_end / gov_token_end) and
# runs on the threads it answers; it reads and writes none of gov_t's fields itself.
from libc.stdint cimport int64_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

cdef struct gov_last_t:
    # what a Model's governors last found best, shared by its States (an Engine's): a new
    # State starts on it, so a short call does not begin on a setting already known to lose.
    # Plain int stores from any thread, like State.cancel
    int known            # a call, or the load's interleaving (load_gov_t), has decided
    int one              # one thread won
    double at            # when (monotonic s); older than GOV_LAST_TTL, it is not followed

cdef struct gov_t:
    # the thread governor (gov_next / gov_record): 1 or n threads per decoded token
    int n                # the threads a call may use (State.n_threads, the one owner); 1: nothing to decide
    int on               # adapt (Session(adaptive_threads=True)); off: always n
    gov_last_t* last     # the Engine's record (NULL: none), written whenever the setting is decided
    int one              # the current setting is one thread
    int trying           # the token in flight tries the other setting
    int countdown        # tokens on the current setting until the next try
    int backoff          # the interval of tries while one thread wins (doubles, capped)
    int n_one, n_multi   # tokens decoded on one / on n threads (statistics)
    double t_one, t_multi  # seconds per token on each setting (moving averages; 0: not yet)
    double best_multi    # the fastest recent token on n threads (slowly forgotten)
    # the decoded token in flight (gov_token_start .. gov_token_end)
    double t0            # its start
    int used             # the threads it started on (what its time is recorded against)
    # a try in flight: given up once behind the current setting's pace (gov_try_check)
    double try_t0, try_pace, try_dt   # its start, seconds a layer to beat (0: no check), its estimate
    int try_keep                      # the current setting's threads, for the rest of a given-up try
    # a look for a busy core (gov_probe_start / gov_probe_check): the team's run-queue wait
    # over a window early in a prompt, or in the first token on n threads
    double probe_t0      # the call's start (0: no look in flight)
    double probe_w0      # the window's start (0: not open yet)
    int64_t probe_wait   # the team's run-queue wait when the window opened, ns (team_run_wait)
    int probe_hit        # it found a core busy in the call in flight (gov_token_end then records no time)
    double early_w0      # a short call's window, from its first layer (0: not open; -1: no figures)
    int64_t early_wait   # the team's run-queue wait then, ns (gov_probe_end)
    int n_busy           # times it found one (statistics)

cdef struct pass_gov_t:
    # a batcher's passes (pass_threads / pass_judge): n threads, or one while other processes
    # keep the cores the team needs busy
    int one              # the passes run on one thread
    double t0            # the window's start (monotonic s; 0: none yet)
    double busy0, ours0  # the machine's busy CPU seconds and this process's at its start
    double others        # CPUs the other processes kept busy over the last window
    int64_t one_passes   # passes run on one thread instead of n (statistics)
    int busy_found       # windows that moved the passes to one thread (statistics)
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


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


# ---- the forward pass's interface ------------------------------------------------------
cdef void gov_init(gov_t* g, gov_last_t* last, int n, int on) noexcept nogil
cdef void gov_set_threads(gov_t* g, int n) noexcept nogil
cdef void gov_reset(gov_t* g, int on) noexcept nogil
cdef int gov_prompt_start(gov_t* g) noexcept nogil
cdef void gov_prompt_end(gov_t* g, int nth) noexcept nogil
cdef int gov_token_start(gov_t* g, int n_layer) noexcept nogil
cdef void gov_token_end(gov_t* g, int ok) noexcept nogil
cdef int gov_try_check(gov_t* g, int nth, int done, int n_layer, double el) noexcept nogil
cdef int gov_probe_check(gov_t* g, int nth) noexcept nogil

cdef inline int gov_layer_done(gov_t* g, int nth, int done, int n_layer) noexcept nogil:
    # after layer done of n_layer of a call running on nth threads -> the threads for the
    # rest of the call. Inline: most layers have nothing in flight to check
    if g.try_pace > 0:
        nth = gov_try_check(g, nth, done, n_layer, monotonic() - g.try_t0)
    if g.probe_t0 > 0:
        nth = gov_probe_check(g, nth)
    return nth

# ---- the decisions (the twins in _twins.pyx feed them made-up figures) -----------------
cdef int gov_threads(const gov_t* g) noexcept nogil
cdef int gov_next(gov_t* g) noexcept nogil
cdef void gov_record(gov_t* g, int used, double dt) noexcept nogil
cdef int gov_pick(int one, double t_one, double t_multi) noexcept nogil
cdef int gov_try_lost(double el, int done, double pace) noexcept nogil
cdef int gov_probe_judge(gov_t* g, int nth, double wait, double el) noexcept nogil
cdef int gov_last_one(const gov_last_t* last) noexcept nogil
cdef void gov_last_note(gov_last_t* last, int one) noexcept nogil
cdef int64_t team_run_wait(int nth) noexcept nogil

# ---- a batcher's passes ----------------------------------------------------------------
cdef void pass_gov_init(pass_gov_t* pg) noexcept nogil
cdef int pass_threads(pass_gov_t* pg, int n, double now) noexcept nogil
cdef void pass_judge(pass_gov_t* pg, int n, int n_cpu, double others) noexcept nogil
cdef int cpu_seconds(double* busy, double* ours) noexcept nogil
# ---- the load's interleaving -----------------------------------------------------------
cdef void load_reset(load_gov_t* lg, int nth) noexcept nogil
cdef int load_next(load_gov_t* lg) noexcept nogil
cdef void load_record(load_gov_t* lg, int used, double dt, double nbytes) noexcept nogil
cdef int load_busy(const load_gov_t* lg) noexcept nogil
