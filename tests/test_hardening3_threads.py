"""Issue 21, parts 12 and 11 (State): threads on a busy or small machine.

The default thread count respects CPU affinity and cgroup CPU quotas; the load's
interleaving times itself on 1 and n threads and keeps the faster; a new session starts on
the setting its model's governors (or its load) last found best, so a short call does not
begin on a team already known to lose. The decisions are tested on made-up figures (the
twins run the engine's own C functions); one end-to-end test spins a core and checks the
settings chosen, never a speed."""
import json
import os
import subprocess
import sys

import pytest

import guanaco_rt
from guanaco_rt import model as model_mod
from guanaco_rt._kernels import _twins as twins
from guanaco_rt._kernels._engine import State
from guanaco_rt.errors import GuanacoError, ModelClosedError

from helpers import child, tiny_model

FREE = (0.020, 0.011)     # s/token on one thread, on two: two threads win
BUSY = (0.020, 0.060)     # a core busy elsewhere


# ---- the default thread count ---------------------------------------------------------
def cpuinfo(n_cores, threads_per_core=1):
    """/proc/cpuinfo as Linux writes it, for one socket of n_cores cores."""
    blocks, cpu = [], 0
    for t in range(threads_per_core):
        for c in range(n_cores):
            blocks.append(f"processor\t: {cpu}\nvendor_id\t: GenuineIntel\nphysical id\t: 0\n"
                          f"siblings\t: {n_cores * threads_per_core}\ncore id\t\t: {c}\ncpu cores\t: {n_cores}\n"
                          "flags\t\t: fpu avx2\n")
            cpu += 1
    return "\n".join(blocks) + "\n"


@pytest.fixture
def machine(monkeypatch):
    """A made-up machine: files (path -> text) and the affinity mask default_threads sees."""
    files = {}
    mask = {"cpus": None}
    monkeypatch.delenv("GUANACO_RT_THREADS", raising=False)
    monkeypatch.setattr(model_mod, "_read_text", lambda path: files.get(path))
    monkeypatch.setattr(model_mod, "_affinity", lambda: mask["cpus"])

    def setup(n_cores, cgroup="0::/\n", threads_per_core=1, affinity=None, **quota_files):
        files.clear()
        files["/proc/cpuinfo"] = cpuinfo(n_cores, threads_per_core)
        files["/proc/self/cgroup"] = cgroup
        files.update(quota_files.get("extra", {}))
        mask["cpus"] = set(range(n_cores * threads_per_core)) if affinity is None else set(affinity)
    return setup


def test_cgroup_v2_cpu_max_as_the_kernel_writes_it():
    assert model_mod.parse_cpu_max("max 100000\n") is None
    assert model_mod.parse_cpu_max("150000 100000\n") == 1.5
    assert model_mod.parse_cpu_max("50000 100000\n") == 0.5
    assert model_mod.parse_cpu_max("200000 50000\n") == 4.0
    assert model_mod.parse_cpu_max("100000\n") == 1.0             # the period may be left out: 100 ms
    for bad in ("", "max", "garbage 100000", "0 100000", "100000 0", None):
        assert model_mod.parse_cpu_max(bad) is None


def test_cgroup_v1_cfs_quota_as_the_kernel_writes_it():
    assert model_mod.parse_cfs_quota("-1\n", "100000\n") is None
    assert model_mod.parse_cfs_quota("150000\n", "100000\n") == 1.5
    assert model_mod.parse_cfs_quota("200000\n", "100000\n") == 2.0
    for quota, period in (("", "100000"), ("100000", ""), (None, "100000"), ("x", "100000"), ("100000", "0")):
        assert model_mod.parse_cfs_quota(quota, period) is None


def test_no_quota_and_no_mask_use_the_physical_cores(machine):
    machine(8, threads_per_core=2, extra={"/sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert model_mod.default_threads() == 8


def test_a_cgroup_v2_quota_caps_the_default(machine):
    machine(8, extra={"/sys/fs/cgroup/cpu.max": "150000 100000\n"})       # docker --cpus=1.5
    assert model_mod.default_threads() == 2
    machine(8, extra={"/sys/fs/cgroup/cpu.max": "50000 100000\n"})
    assert model_mod.default_threads() == 1


def test_an_ancestor_cgroup_quota_counts_too(machine):
    # a host process in a nested cgroup: its own cpu.max says max, its parent's 2 CPUs
    machine(16, cgroup="0::/work.slice/job.scope\n",
            extra={"/sys/fs/cgroup/work.slice/job.scope/cpu.max": "max 100000\n",
                   "/sys/fs/cgroup/work.slice/cpu.max": "200000 100000\n"})
    assert model_mod.default_threads() == 2


def test_a_cgroup_v1_quota_caps_the_default(machine):
    cg = "12:pids:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n"
    # inside the container the hierarchy's root is its own cgroup: /docker/abc does not exist
    machine(4, cgroup=cg, extra={"/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "100000\n",
                                 "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert model_mod.default_threads() == 1
    machine(4, cgroup=cg, extra={"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
                                 "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"})
    assert model_mod.default_threads() == 4


def test_the_affinity_mask_limits_the_default(machine):
    machine(8, affinity={2})                                           # taskset -c 2
    assert model_mod.default_threads() == 1
    machine(4, threads_per_core=2, affinity={0, 4})                    # one core's two hyperthreads
    assert model_mod.default_threads() == 1
    machine(4, affinity={0, 1, 2}, extra={"/sys/fs/cgroup/cpu.max": "1000000 100000\n"})
    assert model_mod.default_threads() == 3


def test_a_huge_machine_is_capped_at_the_thread_limit(machine):
    machine(300)
    assert model_mod.default_threads() == model_mod.MAX_THREADS


def test_the_environment_still_overrides(machine, monkeypatch):
    machine(8, extra={"/sys/fs/cgroup/cpu.max": "100000 100000\n"})
    monkeypatch.setenv("GUANACO_RT_THREADS", "3")
    assert model_mod.default_threads() == 3


def test_this_machine_reads_without_error():
    assert 1 <= model_mod.default_threads() <= model_mod.MAX_THREADS
    lim = model_mod.cgroup_cpu_limit()
    assert lim is None or lim > 0


# ---- the governor's decisions, on made-up figures ----------------------------------
def test_the_choice_is_a_function_of_the_figures():
    assert twins.gov_pick_twin(False, *FREE) is False
    assert twins.gov_pick_twin(False, *BUSY) is True
    assert twins.gov_pick_twin(True, 0.020, 0.019) is True          # not 10% faster: no switch back and forth
    assert twins.gov_pick_twin(True, 0.020, 0.017) is False
    assert twins.gov_pick_twin(False, 0.019, 0.020) is False
    assert twins.gov_pick_twin(True, 0.0, 0.011) is True            # nothing measured on one side: stay
    assert twins.gov_pick_twin(False, 0.020, 0.0) is False


def test_a_short_call_starts_on_the_setting_the_last_one_found_best():
    # three short calls, each in a new session of one model, a core busy throughout: the
    # first learns it; the next start on one thread and stay there
    calls = twins.governor_calls_twin(2, [[BUSY] * 6] * 3)
    (p0, u0), (p1, u1), (p2, u2) = calls
    assert p0 == 2 and 1 in u0[:3]
    assert p1 == 1 and u1[:4] == [1, 1, 1, 1]
    assert p2 == 1 and u2[:4] == [1, 1, 1, 1]
    assert u1[4] == 2 and u1[5] == 1                        # one recheck of two threads, lost


def test_a_freed_machine_is_found_again_by_the_next_calls():
    calls = twins.governor_calls_twin(2, [[BUSY] * 6, [FREE] * 8, [FREE] * 8])
    assert calls[1][0] == 1 and calls[1][1][4] == 2         # the recheck of two threads wins...
    assert calls[1][1][5:] == [2, 2, 2]
    assert calls[2][0] == 2 and calls[2][1].count(1) <= 1  # ...and the next call starts there


def test_a_free_machine_never_starts_a_call_on_one_thread():
    for prompt, used in twins.governor_calls_twin(2, [[FREE] * 8] * 4):
        assert prompt == 2 and used.count(1) <= 1


def test_the_load_finding_a_busy_core_starts_the_first_call_on_one_thread():
    (prompt, used), = twins.governor_calls_twin(2, [[BUSY] * 6], load_found_busy=True)
    assert prompt == 1 and used[:4] == [1, 1, 1, 1]
    (prompt, used), = twins.governor_calls_twin(2, [[FREE] * 8], load_found_busy=True)
    assert prompt == 1 and used[4:] == [2, 2, 2, 2]        # wrong: undone at the recheck


def test_a_stale_record_is_not_followed():
    # prompt-only work never tries two threads from one: after GOV_LAST_TTL (10 s) without a
    # decision, a new session looks afresh
    (prompt, used), = twins.governor_calls_twin(2, [[FREE] * 3], load_found_busy=True, age=11.0)
    assert prompt == 2
    (p0, _), (p1, _) = twins.governor_calls_twin(2, [[BUSY] * 6, [BUSY] * 6], age=11.0)
    assert p0 == 2 and p1 == 2
    (p0, _), (p1, _) = twins.governor_calls_twin(2, [[BUSY] * 6, [BUSY] * 6], age=9.0)
    assert p1 == 1


def test_a_single_thread_model_ignores_the_record():
    for prompt, used in twins.governor_calls_twin(1, [[BUSY] * 5] * 2, load_found_busy=True):
        assert prompt == 1 and set(used) == {1}


def test_the_load_interleaves_on_one_thread_when_a_core_is_busy():
    # per byte: one thread 1, the team 6 (the demo model's load on a loaded 2-core machine)
    used, busy = twins.load_governor_twin(2, [(1.0, 6.0)] * 200)
    assert used[:4] == [2, 1, 2, 1]          # warm-up, then one sample of each says it: no more samples
    # tries of the team come once 10 times their cost has gone by on one thread: 60 tensors
    assert 2 <= used[3:].count(2) <= 3
    assert sum(6.0 for u in used[3:] if u == 2) <= 0.15 * sum(1.0 for u in used[3:] if u == 1)
    assert busy


def test_the_load_keeps_its_team_on_a_free_machine():
    used, busy = twins.load_governor_twin(2, [(1.0, 0.6)] * 200)
    assert used[:5] == [2, 1, 2, 1, 2]                      # warm-up, then two samples of each
    assert used[5:].count(1) <= 200 // 32 + 1
    assert not busy


def test_a_plain_win_of_one_thread_at_the_load_says_nothing_of_matmuls():
    # one thread 20% faster at a copy: memory bandwidth, not a busy core
    used, busy = twins.load_governor_twin(2, [(1.0, 1.25)] * 100)
    assert used[5:].count(1) >= 0.85 * 95
    assert not busy


def test_a_tiny_models_join_costs_are_not_a_busy_core():
    # 30 us tensors on one thread, 120 us on two: fork/join overhead, not a descheduled member
    used, busy = twins.load_governor_twin(2, [(30e-6, 120e-6)] * 50)
    assert used[5:].count(1) >= 40
    assert not busy


def test_the_load_follows_a_core_that_frees_up():
    used, busy = twins.load_governor_twin(2, [(1.0, 6.0)] * 40 + [(1.0, 0.6)] * 160)
    assert used[-100:].count(2) >= 95
    assert not busy


def test_a_load_on_one_thread_never_tries_a_team():
    used, busy = twins.load_governor_twin(1, [(1.0, 0.1)] * 50)
    assert set(used) == {1} and not busy


# ---- a real model -------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return guanaco_rt.Model(tiny_model(tmp_path_factory.mktemp("h3threads"), "q4_0", n_vocab=300), n_threads=2)


def test_the_load_reports_its_thread_choice(model):
    lt = model._engine.load_threads
    assert lt["threads"] in (1, 2)
    assert lt["one_thread_tensors"] + lt["multi_thread_tensors"] == len(model._engine.repacked)
    with guanaco_rt.Model(model.path, n_threads=1) as m1:
        lt1 = m1._engine.load_threads
        assert lt1["threads"] == 1 and lt1["multi_thread_tensors"] == 0 and not lt1["busy_core_found"]
        assert m1.repacked_bytes == model.repacked_bytes


def test_the_interleaved_bytes_do_not_depend_on_the_threads_chosen(model):
    logits = []
    for n in (1, 2):
        with guanaco_rt.Model(model.path, n_threads=n) as m:
            s = guanaco_rt.Session(m, n_ctx=64, n_threads=1)
            logits.append(s.eval([1, 5, 6, 7, 8, 9, 10, 11, 12, 13]).tobytes())
    assert logits[0] == logits[1]


def test_a_new_session_reports_the_models_record(model):
    st = guanaco_rt.Session(model, n_ctx=64).thread_stats()
    assert st["on_one_thread"] == st["model_on_one_thread"]


def test_the_kernel_state_refuses_no_model():
    with pytest.raises(ModelClosedError, match="None") as e:
        State(None, 16, 4)
    assert isinstance(e.value, GuanacoError)


def beside_a_spinner(script, model):
    """Run ``script`` (a child pinned to 2 CPUs) while a spinner keeps the first busy -> its JSON."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs 2 CPUs")
    spin = subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{cpus[0]}}})\n"
                             "while True: pass"])
    try:
        r = subprocess.run([sys.executable, "-c", script.format(cpus=set(cpus[:2])), model],
                           capture_output=True, text=True, timeout=300, **child())
    finally:
        spin.kill()
        spin.wait()
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


BUSY_LOAD = """
import json, os, sys
os.sched_setaffinity(0, {cpus})        # before OpenMP's threads exist: they inherit it
import guanaco_rt
out = []
for i in range(4):
    m = guanaco_rt.Model(sys.argv[1], n_threads=2)
    s = guanaco_rt.Session(m, n_ctx=64, n_threads=2)
    before = s.thread_stats()
    s.eval(m.tokenize("Hello there"))
    out.append((m._engine.load_threads, before, s.thread_stats()))
    s.close()
    m.close()
print(json.dumps(out))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")
def test_a_core_kept_busy_at_load_puts_the_load_and_the_first_short_call_on_one_thread(smollm2):
    runs = beside_a_spinner(BUSY_LOAD, smollm2)
    if all(lt["one_thread_tensors"] + lt["multi_thread_tensors"] == 0 for lt, _, _ in runs):
        pytest.skip("these kernels interleave nothing at load (no AVX2, or GUANACO_RT_ISA)")
    # Whether the team loses beside the spinner is the scheduler's call: with the child on
    # both CPUs it does not always (CI saw 1 load of 3 find the busy core, a quiet run 3 of 3).
    # The decision itself is tested above from given figures; here, that a busy core can be
    # found at all, and that a load which found one starts the first short call on one thread.
    assert any(lt["busy_core_found"] for lt, _, _ in runs), runs
    for lt, before, after in runs:
        assert lt["one_thread_tensors"] + lt["multi_thread_tensors"] == 211     # 30 layers x 7, and the tied output
        if lt["busy_core_found"]:
            assert lt["threads"] == 1 and before["on_one_thread"] and after["on_one_thread"], runs
            assert after["multi_thread_tokens"] == 0


BUSY_SHORT_CALLS = """
import json, os, sys, time
os.sched_setaffinity(0, {cpus})
import guanaco_rt
out = []
for i in range(3):
    # the generic kernels interleave nothing at load: only a call can find the busy core
    m = guanaco_rt.Model(sys.argv[1], n_threads=2, isa="generic")
    s1 = guanaco_rt.Session(m, n_ctx=64, n_threads=2)
    first = s1.thread_stats()
    t0 = time.perf_counter()
    s1.eval(m.tokenize("Hi there"))
    dt = time.perf_counter() - t0
    s2 = guanaco_rt.Session(m, n_ctx=64, n_threads=2)
    out.append((m._engine.load_threads, first, s1.thread_stats(), s2.thread_stats(), dt))
    s1.close(); s2.close(); m.close()
print(json.dumps(out))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")
def test_a_short_call_that_found_a_busy_core_starts_the_next_session_on_one_thread(smollm2):
    runs = beside_a_spinner(BUSY_SHORT_CALLS, smollm2)
    for load, first, _, _, _ in runs:
        assert load["one_thread_tensors"] + load["multi_thread_tensors"] == 0
        assert not first["on_one_thread"]                  # nothing known yet: the first call starts on 2
    hits = [s1["busy_core_found"] == 1 and s2["on_one_thread"] and s2["model_on_one_thread"]
            for _, _, s1, s2, _ in runs]
    assert sum(hits) >= 2, runs
