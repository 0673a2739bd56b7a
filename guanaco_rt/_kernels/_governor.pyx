# cython: language_level=3
"""The thread governor: how many threads each call of the forward pass runs on, and the
threads of the load's interleaving. It owns gov_t (a State's) and load_gov_t (an Engine
load's); the forward pass (_engine.pyx) asks it at a call's start, after each layer and at
the end, through the functions _governor.pxd lists under "the forward pass's interface",
and runs on the threads it answers. It decides how many threads, never what they compute:
the results are the same bits whatever it chooses. The decisions are pure functions of the
timings fed to them (the clock is read at the interface only), so tests feed made-up
timings through the twins in _twins.pyx.
"""
from libc.stdint cimport int64_t
from libc.string cimport memset
from libc.stdlib cimport strtoll
from libc.string cimport strncmp, strrchr
from posix.unistd cimport sysconf, _SC_CLK_TCK

cdef extern from "<unistd.h>" nogil:
    enum: _SC_NPROCESSORS_ONLN
from posix.fcntl cimport open as c_open, O_RDONLY
from posix.unistd cimport read as c_read, close as c_close
from cython.parallel cimport prange

# ---- the thread governor ----------------------------------------------------------------
# With a core busy elsewhere, a team of nth threads that splits every matmul evenly runs at
# the pace of its member that the OS keeps descheduled: slower than one thread alone. The
# decode loop times each token, and the governor runs the next one on 1 or on nth threads,
# trying the other setting now and then. The thread count never changes the arithmetic,
# so neither do its choices.
cdef enum:
    GOV_FIRST_TRY = 1          # tokens on nth threads before the first try of one thread
    GOV_TRY_ONE_EVERY = 128    # while nth threads win: tokens between tries of one thread
    GOV_TRY_MULTI_MIN = 32     # while one thread wins: tokens between tries of nth, doubling...
    GOV_TRY_MULTI_MAX = 1024   # ...up to this

cdef double GOV_MARGIN = 0.9   # the other setting must be 10% faster to take over
cdef double GOV_JUMP = 2.0     # a token on nth threads this many times the best recent one: try one now
# A look for a busy core: a prompt (or a first token) on nth threads reads how long the
# team's threads waited on a run queue over a window of GOV_PROBE_WINDOW seconds that opens
# GOV_PROBE_WARM seconds into the call. The warm-up skips a burst at the start of work after
# a pause: a spinning process at nice 19 held a core from our team for the first 30-80 ms
# (0.6 of the time waiting), then let it be (0.01). A core shared with a spinning process at
# nice 0 makes the waits 0.3-0.5 of the time per thread, an idle machine about 0.01. Above
# GOV_PROBE_BUSY the rest of the call runs on one thread, which becomes the current setting,
# and a try of nth comes GOV_PROBE_RECHECK tokens later in case the look was wrong.
cdef double GOV_LAST_TTL = 10.0   # s an Engine's record of one thread winning is followed (gov_last_one)
cdef double GOV_PROBE_WARM = 0.1
cdef double GOV_PROBE_WINDOW = 0.04
cdef double GOV_PROBE_BUSY = 0.15
cdef enum:
    GOV_PROBE_RECHECK = 4

# ---- the forward pass's interface ------------------------------------------------------
cdef void gov_init(gov_t* g, gov_last_t* last, int n, int on) noexcept nogil:
    # a State's governor: its Engine's record (NULL: none), n threads at most
    g.last = last
    g.n = max(1, n)
    gov_reset(g, on)

cdef void gov_set_threads(gov_t* g, int n) noexcept nogil:
    # State.n_threads = n: every call from now on runs on at most n threads; what the
    # governor learnt on the old count says nothing of the new one
    g.n = max(1, n)
    gov_reset(g, g.on)

cdef int gov_prompt_start(gov_t* g) noexcept nogil:
    # a prompt is about to run -> its threads: the current setting (prompt batches never try
    # the other), with a look for a busy core that can move the rest of it to one thread
    cdef int nth = gov_threads(g)
    gov_probe_start(g, nth)
    return nth

cdef void gov_prompt_end(gov_t* g, int nth) noexcept nogil:
    # the prompt ended (or was cancelled) on nth threads
    gov_probe_end(g, nth)
    g.probe_t0 = 0
    g.probe_hit = 0

cdef int gov_token_start(gov_t* g, int n_layer) noexcept nogil:
    # one token is about to be decoded through n_layer layers -> its threads: the current
    # setting, or a try of the other. A try that falls behind the current setting's pace goes
    # back to the current setting for the rest of the token (gov_try_check): a lost try costs
    # about a layer, not a token. Switching still takes a whole token that wins. The first
    # token on n threads has no pace to keep; a look for a busy core stands in (gov_probe_check).
    cdef int use = gov_next(g)
    g.t0 = monotonic()
    g.used = use
    g.try_dt = 0
    g.try_pace = 0
    if g.trying:
        g.try_t0 = g.t0
        g.try_pace = (g.t_one if g.one else g.t_multi) / n_layer
        g.try_keep = 1 if g.one else g.n
    if use > 1 and g.t_multi <= 0 and not g.trying:
        gov_probe_start(g, use)
    return use

cdef void gov_token_end(gov_t* g, int ok) noexcept nogil:
    # the token of gov_token_start is done (ok) or was cancelled: its time is recorded
    g.try_pace = 0
    g.probe_t0 = 0
    if g.probe_hit:                       # begun on n threads, ended on one: no time to learn from
        g.probe_hit = 0
        if ok:
            g.n_multi += 1
    elif ok:
        gov_record(g, g.used, g.try_dt if g.try_dt > 0 else monotonic() - g.t0)

cdef int gov_try_check(gov_t* g, int nth, int done, int n_layer, double el) noexcept nogil:
    # a try on nth threads, done layers and el seconds in -> the threads for the rest of the
    # token: behind the current setting's pace, it is lost; its time is extrapolated to a
    # token, and the rest of the token runs on the current setting
    if not gov_try_lost(el, done, g.try_pace):
        return nth
    g.try_dt = el * n_layer / done
    g.try_pace = 0
    return g.try_keep

cdef int gov_try_lost(double el, int done, double pace) noexcept nogil:
    # whether a try that took el seconds for its first done layers is behind a pace of
    # ``pace`` seconds a layer
    return el > done * pace

# ---- the decisions ------------------------------------------------------------------------
cdef void gov_reset(gov_t* g, int on) noexcept nogil:
    # a fresh governor on g.n threads. Its Engine's record (g.last) of one thread winning last -- a session
    # before it, or the load -- starts it on one thread, with a recheck of nth a few tokens
    # in, as after a look that found a core busy: a short call ends before its own timings
    # or look could move it, and a team with a descheduled member ran the demo's 22-token
    # prompts at 24-53 tok/s against 82-114 on one thread (one of 2 cores spun).
    cdef gov_last_t* last = g.last
    cdef int n = g.n
    memset(g, 0, sizeof(gov_t))
    g.last = last
    g.n = n
    g.on = on
    g.countdown = GOV_FIRST_TRY
    g.backoff = GOV_TRY_MULTI_MIN
    if on and gov_last_one(last):
        g.one = 1
        g.countdown = GOV_PROBE_RECHECK
        g.backoff = GOV_TRY_MULTI_MIN // 2

cdef inline void gov_note(gov_t* g) noexcept nogil:
    # the current setting was just decided: the Engine's record follows it
    gov_last_note(g.last, g.one)

cdef void gov_last_note(gov_last_t* last, int one) noexcept nogil:
    # a call (or the load) found one thread (one) or n best, now
    if last != NULL:
        last.one = one
        last.known = 1
        last.at = monotonic()

cdef int gov_last_one(const gov_last_t* last) noexcept nogil:
    # whether a new State starts on one thread: the record says one thread won, GOV_LAST_TTL
    # ago at most. Sessions that decode renew it (each try decides again); a stale one is
    # not followed, so prompt-only work (which never tries nth from one thread) goes back to
    # nth once a busy spell is over, and a spell that lasts costs one look per GOV_LAST_TTL
    return last != NULL and last.known and last.one and monotonic() - last.at < GOV_LAST_TTL

cdef int gov_pick(int one, double t_one, double t_multi) noexcept nogil:
    # the setting (1: one thread) after a measurement: seconds per unit of work on one
    # thread and on nth (0: not measured); the other setting takes over when it is
    # GOV_MARGIN faster than the current one, so noise does not flip it back and forth
    if t_one <= 0 or t_multi <= 0:
        return one
    if one:
        return 0 if t_multi < GOV_MARGIN * t_one else 1
    return 1 if t_one < GOV_MARGIN * t_multi else 0

cdef int read_text(const char* path, char* buf, int size) noexcept nogil:
    # the start of a /proc file into buf (size bytes, NUL-terminated) -> 0, or -1 when unreadable
    cdef int fd = c_open(path, O_RDONLY)
    cdef ssize_t n
    if fd < 0:
        return -1
    n = c_read(fd, buf, size - 1)
    c_close(fd)
    if n <= 0:
        return -1
    buf[n] = 0
    return 0

cdef int64_t thread_run_wait() noexcept nogil:
    # ns the calling thread has waited on a run queue: the second field of Linux's
    # /proc/thread-self/schedstat ("on-cpu ns, run-queue wait ns, timeslices"); -1 when unreadable
    cdef char buf[128]
    cdef char* p
    cdef char* e
    cdef long long v
    if read_text(b"/proc/thread-self/schedstat", buf, sizeof(buf)):
        return -1
    strtoll(buf, &p, 10)
    v = strtoll(p, &e, 10)
    return v if e != p and v >= 0 else -1

cdef int64_t team_run_wait(int nth) noexcept nogil:
    # the run-queue wait of a team of nth threads, summed (one iteration each, as the matmuls'
    # teams: libgomp reuses the calling thread's pool); -1 when any thread cannot read it
    cdef int _c
    cdef int64_t w, total = 0
    cdef int bad = 0
    for _c in prange(nth, schedule='static', num_threads=nth):
        w = thread_run_wait()
        if w < 0:
            bad += 1
        else:
            total += w
    return -1 if bad else total

cdef void gov_probe_start(gov_t* g, int nth) noexcept nogil:
    # look for a busy core over the call about to run on nth threads (gov_probe_check)
    g.probe_t0 = 0
    g.probe_w0 = 0
    g.probe_hit = 0
    g.early_w0 = 0
    if g.on and nth > 1:
        g.probe_t0 = monotonic()

cdef int gov_probe_check(gov_t* g, int nth) noexcept nogil:
    # after a layer: open the window once the warm-up has passed, judge it once it is
    # GOV_PROBE_WINDOW long; a busy core moves the rest of the call and the current setting
    # to one thread. A call that ends first leaves the governor's timing to decide.
    # -> the threads for the rest of the call
    cdef double now = monotonic()
    cdef int64_t w
    if g.early_w0 == 0:                   # the first layer: a window for a short call (gov_probe_end)
        w = team_run_wait(nth)
        g.early_wait = w
        g.early_w0 = monotonic() if w >= 0 else -1
        if w < 0:
            g.probe_t0 = 0                # no run-queue figures on this system
        return nth
    if g.probe_w0 <= 0:
        if now - g.probe_t0 < GOV_PROBE_WARM:
            return nth
        w = team_run_wait(nth)
        if w < 0:
            g.probe_t0 = 0                # no run-queue figures on this system
        else:
            g.probe_wait = w
            g.probe_w0 = monotonic()
        return nth
    if now - g.probe_w0 < GOV_PROBE_WINDOW:
        return nth
    g.probe_t0 = 0
    w = team_run_wait(nth)
    if w >= 0:
        return gov_probe_judge(g, nth, (w - g.probe_wait) * 1e-9, now - g.probe_w0)
    return nth

cdef void gov_probe_end(gov_t* g, int nth) noexcept nogil:
    # a prompt that ended before its look was judged (shorter than GOV_PROBE_WARM +
    # GOV_PROBE_WINDOW) is judged over all of it from its first layer, for the calls after it.
    # The warm-up skips the burst a nice-19 spinner holds a core for at the start of work;
    # a short call is all start, so what it waited is what the next short call would wait
    cdef double el
    cdef int64_t w
    if g.probe_t0 <= 0 or g.early_w0 <= 0:
        return
    el = monotonic() - g.early_w0
    g.probe_t0 = 0
    if el < GOV_PROBE_WINDOW:
        return
    w = team_run_wait(nth)
    if w >= 0:
        gov_probe_judge(g, nth, (w - g.early_wait) * 1e-9, el)

cdef int gov_probe_judge(gov_t* g, int nth, double wait, double el) noexcept nogil:
    # nth threads waited ``wait`` s in all on run queues over ``el`` s of work -> the threads
    # for the rest of the call: a busy core moves it and the current setting to one thread
    if wait <= GOV_PROBE_BUSY * el * nth:
        return nth
    g.probe_hit = 1
    g.n_busy += 1
    g.one = 1
    g.trying = 0
    g.countdown = GOV_PROBE_RECHECK
    g.backoff = GOV_TRY_MULTI_MIN // 2   # a lost recheck waits GOV_TRY_MULTI_MIN for the next
    gov_note(g)
    return 1

cdef int gov_threads(const gov_t* g) noexcept nogil:
    # the current setting (prompt batches follow it; they never try the other)
    if not g.on or g.n < 2:
        return g.n
    return 1 if g.one else g.n

cdef int gov_next(gov_t* g) noexcept nogil:
    # threads for the next decoded token: the current setting, or a try of the other
    if not g.on or g.n < 2:
        return g.n
    g.trying = g.countdown <= 0
    if g.trying:
        return g.n if g.one else 1
    return 1 if g.one else g.n

cdef void gov_record(gov_t* g, int used, double dt) noexcept nogil:
    # the token decoded on ``used`` threads took dt seconds
    cdef int multi = used > 1
    if not g.on or g.n < 2 or dt <= 0:
        return
    if multi:
        g.n_multi += 1
        g.best_multi = dt if g.best_multi <= 0 else min(dt, g.best_multi * 1.01)
    else:
        g.n_one += 1
    if g.trying:                          # one token on the other setting against the average
        g.trying = 0
        if multi:
            g.t_multi = dt
        else:
            g.t_one = dt
        if gov_pick(g.one, g.t_one, g.t_multi) != g.one:
            g.one = not g.one             # it wins: switch, and check back soon
            g.backoff = GOV_TRY_MULTI_MIN
            g.countdown = GOV_TRY_MULTI_MIN if g.one else GOV_TRY_ONE_EVERY
        elif g.one:
            g.backoff = min(2 * g.backoff, <int>GOV_TRY_MULTI_MAX)
            g.countdown = g.backoff
        else:
            g.countdown = GOV_TRY_ONE_EVERY
        gov_note(g)
        return
    if multi:
        g.t_multi = dt if g.t_multi <= 0 else 0.75 * g.t_multi + 0.25 * dt
        if dt > GOV_JUMP * g.best_multi:  # something took a core: try one thread next
            g.countdown = 0
            return
    else:
        g.t_one = dt if g.t_one <= 0 else 0.75 * g.t_one + 0.25 * dt
    g.countdown -= 1

# ---- a batcher's passes ---------------------------------------------------------------
# A pass runs the tokens of many sequences: its size changes from pass to pass, so its time
# says little of which setting wins, and a try of one thread timed on a single pass misjudged
# a server's passes (16 streams: 10-20% slower than staying on 2 threads). Its team's
# run-queue wait does not tell either: a server's own threads (HTTP, streams) made the team
# wait above a quarter of the time on an idle machine, and one thread there was 20-25%
# slower. What the passes must avoid is other processes holding the cores the team needs:
# with a spinner on each of 2 cores, 8 demo streams ran 107 tok/s batched on 2 threads
# against 238 on one thread each, and a single request took 12-28 s against 0.45. So every
# PASS_WINDOW seconds the machine's busy CPU time (/proc/stat) less this process's
# (/proc/self/stat) gives the CPUs other processes kept busy. While they leave fewer than the
# team's n of the machine's CPUs (by PASS_OTHERS_ON), the passes run on one thread; they go
# back to n once the others leave n CPUs by PASS_OTHERS_OFF. The margin is 3/4 of a CPU, not
# less: a client on the same machine streaming 8-16 demo replies (a benchmark's) kept about
# half a CPU busy and put 12-22 of a run's 410 passes on one thread at a margin of 0.5, while
# a process that holds a core (a spinner, a test run) keeps a whole one busy.
cdef double PASS_WINDOW = 0.5
cdef double PASS_OTHERS_ON = 0.75
cdef double PASS_OTHERS_OFF = 0.4

cdef void pass_gov_init(pass_gov_t* pg) noexcept nogil:
    memset(pg, 0, sizeof(pass_gov_t))

cdef int cpu_seconds(double* busy, double* ours) noexcept nogil:
    # the machine's busy CPU seconds since boot (/proc/stat's first line: user nice system idle
    # iowait irq softirq steal ...; busy = all but idle, iowait and steal) and this process's
    # (/proc/self/stat utime + stime, after the command's ")"): 0, or -1 when unreadable
    cdef char buf[1024]
    cdef char* p
    cdef char* e
    cdef long long v[8]
    cdef int i, field
    cdef double tick = <double>sysconf(_SC_CLK_TCK)
    if tick <= 0 or read_text(b"/proc/stat", buf, sizeof(buf)) or strncmp(buf, b"cpu ", 4) != 0:
        return -1
    p = buf + 4
    for i in range(8):
        v[i] = strtoll(p, &e, 10)
        if e == p:
            return -1
        p = e
    busy[0] = (v[0] + v[1] + v[2] + v[5] + v[6]) / tick
    if read_text(b"/proc/self/stat", buf, sizeof(buf)):
        return -1
    p = strrchr(buf, 41)            # ")"
    if p == NULL:
        return -1
    p += 1
    field = 2                       # the state letter after ")" is field 3; utime is 14, stime 15
    v[0] = v[1] = 0
    while field < 15:
        while p[0] == 32:
            p += 1
        if p[0] == 0:
            return -1
        field += 1
        if field >= 14:
            v[field - 14] = strtoll(p, &e, 10)
            p = e
        else:
            while p[0] != 32 and p[0] != 0:
                p += 1
    ours[0] = (v[0] + v[1]) / tick
    return 0

cdef int pass_threads(pass_gov_t* pg, int n, double now) noexcept nogil:
    # the threads of the next pass, n at most; every PASS_WINDOW s it reads what the other
    # processes kept busy (pass_judge)
    cdef double busy, ours
    if n <= 1:
        return n
    if now - pg.t0 >= PASS_WINDOW and cpu_seconds(&busy, &ours) == 0:
        if pg.t0 > 0:
            pass_judge(pg, n, <int>sysconf(_SC_NPROCESSORS_ONLN),
                       max(0.0, (busy - pg.busy0) - (ours - pg.ours0)) / (now - pg.t0))
        pg.t0, pg.busy0, pg.ours0 = now, busy, ours
    if pg.one:
        pg.one_passes += 1
        return 1
    return n

cdef void pass_judge(pass_gov_t* pg, int n, int n_cpu, double others) noexcept nogil:
    # over the last window other processes kept ``others`` of the n_cpu CPUs busy: the passes
    # of an n-thread team run on one thread while fewer than n CPUs are left to it
    pg.others = others
    if not pg.one and others > n_cpu - n + PASS_OTHERS_ON:
        pg.one = 1
        pg.busy_found += 1
    elif pg.one and others < n_cpu - n + PASS_OTHERS_OFF:
        pg.one = 0


# ---- the load's interleaving threads ------------------------------------------------
# The load interleaves every matrix of a dot_r8 type (repack_r8): a parallel copy of most
# of the model, one team join per tensor. With a core busy elsewhere each join waits for the
# team's descheduled member, whatever the tensor's size: on a loaded 2-core machine the demo
# model loaded in 4.8-8.1 s on 2 threads against 1.1-1.9 s on one (its 1.7 ms tensors took
# 45 ms each on 2). So the load times its own work, per byte: the first tensor on nth
# threads (it starts OpenMP's pool: not timed), then LOAD_SAMPLES on each setting in turn,
# then the faster (gov_pick, as decoding chooses); a first pair that says a core is busy
# (load_busy) decides at once. While nth wins, one thread is tried every LOAD_TRY_ONE
# tensors (such a try costs at most a tensor's time again). While one wins, nth is tried
# again once LOAD_TRY_RATIO times what a try costs (nth's seconds per byte, times the last
# tensor's bytes) has gone by on one thread: tries of a losing team then cost about
# 1/LOAD_TRY_RATIO of the load, and a core that frees up is found within about that share
# of it. The thread count never changes the bytes written.
cdef enum:
    LOAD_SAMPLES = 2
    LOAD_TRY_ONE = 32
cdef double LOAD_TRY_RATIO = 10.0

cdef void load_reset(load_gov_t* lg, int nth) noexcept nogil:
    memset(lg, 0, sizeof(load_gov_t))
    lg.nth = nth

cdef int load_next(load_gov_t* lg) noexcept nogil:
    # threads for the next tensor
    if lg.nth < 2:
        return 1
    if lg.k == 0:
        return lg.nth
    if not lg.decided:
        return 1 if lg.k % 2 else lg.nth
    lg.trying = lg.since >= lg.wait if lg.one else lg.countdown <= 0
    if lg.trying:
        return lg.nth if lg.one else 1
    return 1 if lg.one else lg.nth

cdef inline void load_settle(load_gov_t* lg, double try_s) noexcept nogil:
    # the setting is (re)decided; try_s: what a try of nth threads would cost (s)
    if lg.one:
        lg.since = 0
        lg.wait = LOAD_TRY_RATIO * try_s
    else:
        lg.countdown = LOAD_TRY_ONE

cdef void load_record(load_gov_t* lg, int used, double dt, double nbytes) noexcept nogil:
    # the tensor of nbytes interleaved on ``used`` threads took dt seconds
    cdef int j = lg.k
    cdef double t
    if lg.nth < 2 or nbytes <= 0 or dt < 0:
        return
    lg.k += 1
    if j == 0:
        return
    if not lg.decided:
        if used > 1:
            lg.s_multi += dt
            lg.b_multi += nbytes
        else:
            lg.s_one += dt
            lg.b_one += nbytes
        if j % 2 == 0:                    # a pair is in
            lg.t_one = max(lg.s_one, 1e-9) / lg.b_one
            lg.t_multi = max(lg.s_multi, 1e-9) / lg.b_multi
            lg.one = gov_pick(0, lg.t_one, lg.t_multi)
            if j == 2 * LOAD_SAMPLES or load_busy(lg):
                lg.decided = 1
                load_settle(lg, lg.t_multi * nbytes)
        return
    t = max(dt, 1e-9) / nbytes
    if lg.trying:
        lg.trying = 0
        if used > 1:
            lg.t_multi = t
        else:
            lg.t_one = t
        lg.one = gov_pick(lg.one, lg.t_one, lg.t_multi)
        load_settle(lg, lg.t_multi * nbytes)
        return
    if used > 1:
        lg.t_multi = 0.75 * lg.t_multi + 0.25 * t
        lg.countdown -= 1
    else:
        lg.t_one = 0.75 * lg.t_one + 0.25 * t
        lg.since += dt

cdef double LOAD_BUSY_WAIT = 0.002

cdef int load_busy(const load_gov_t* lg) noexcept nogil:
    # whether the load saw a core busy: one thread won, and by more than memory bandwidth or
    # fork/join costs explain: a team GOV_JUMP times slower per byte, that lost at least
    # LOAD_BUSY_WAIT s over its samples (a join that waits for a descheduled member loses a
    # scheduler slice, ms; an idle machine's join costs tens of us, which a tiny model's
    # tensors can make as long as the copy itself). Then the Engine's first States start on
    # one thread (gov_reset); a plain win of one thread does not say that matmuls, which
    # compute far more per byte, would lose on nth
    return (lg.nth > 1 and lg.one and lg.t_one > 0 and lg.t_multi > GOV_JUMP * lg.t_one
            and (lg.t_multi - lg.t_one) * lg.b_multi >= LOAD_BUSY_WAIT)
