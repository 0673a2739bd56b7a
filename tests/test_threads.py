"""The thread governor: decoding runs each token on one thread or on n_threads, whichever
is faster now (a core busy elsewhere makes a team slower than one thread alone), without
changing a bit of the results. The policy is tested on made-up timings (governor_twin);
real sessions check the bits and the bookkeeping."""
import pytest

import guanaco_rt
from guanaco_rt._kernels._twins import governor_twin

from helpers import tiny_model

FREE = (0.020, 0.011)     # s/token on one thread, on two: two threads win
BUSY = (0.020, 0.060)     # a core busy elsewhere: the pair waits for its descheduled half


def test_two_threads_stay_when_they_win():
    used, _ = governor_twin(2, [FREE] * 1000)
    assert used.count(2) >= 0.97 * len(used)          # tries of one thread cost < 3% of the tokens


def test_one_thread_takes_over_under_contention_at_once():
    used, prompt = governor_twin(2, [BUSY] * 1000)
    assert 1 in used[:4]                               # the first try comes after 2 tokens
    assert used[3:].count(1) >= 0.97 * len(used[3:])
    assert prompt[-1] == 1                             # prompt batches follow the current setting


def test_contention_that_comes_and_goes():
    t = [FREE] * 200 + [BUSY] * 200 + [FREE] * 800
    used, _ = governor_twin(2, t)
    assert used[200:203].count(1) >= 1                 # the slow token itself triggers a try
    assert used[203:400].count(1) >= 0.95 * 197
    back = used.index(2, 400 + 1) if 2 in used[401:] else None
    assert back is not None and used[400 + 600:].count(2) >= 0.97 * 200     # back on two threads
    assert all(u in (1, 2) for u in used)


def test_a_single_thread_setting_is_left_alone():
    used, prompt = governor_twin(1, [BUSY] * 50)
    assert set(used) == {1} and set(prompt) == {1}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return guanaco_rt.Model(tiny_model(tmp_path_factory.mktemp("threads"), "q4_K_M", n_vocab=300), n_threads=2)


def test_same_bits_with_and_without_the_governor(model):
    runs = []
    for adaptive, n in ((True, 2), (False, 2), (False, 1)):
        s = guanaco_rt.Session(model, n_ctx=256, n_threads=n, seed=3, adaptive_threads=adaptive)
        r = s.generate([1, 5, 6, 7], max_new_tokens=60, temperature=0.9, n_probs=2)
        runs.append((r.tokens, r.token_logprobs))
        st = s.thread_stats()
        counted = st["one_thread_tokens"] + st["multi_thread_tokens"]
        # every decoded token's forward pass is counted (the last token sampled needs none)
        assert counted == (len(r.tokens) - 1 if adaptive and n > 1 else 0)
    assert runs[0] == runs[1] == runs[2]


def test_the_setting_travels_with_fork(model):
    s = guanaco_rt.Session(model, n_ctx=64, adaptive_threads=False)
    s.eval([1, 2])
    assert s.fork()._state.adaptive_threads is False
    assert guanaco_rt.Session(model, n_ctx=64)._state.adaptive_threads is True
