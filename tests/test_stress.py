"""Thread stress: 8 sessions on one Model across 4 Python threads with random cancels.
Whatever is not cancelled equals a serial run; after every cancel the cache is
consistent (its logits equal a fresh evaluation of its tokens)."""
import random
import threading

import numpy as np
import pytest

import guanaco_rt

from helpers import tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return guanaco_rt.Model(tiny_model(tmp_path_factory.mktemp("stress"), "q4_0", n_vocab=500, n_embd=256,
                                       n_layer=2), n_threads=2)


def job(model, k):
    return dict(prompt=[1] + [(7 * k + 3 * j) % 480 + 10 for j in range(20 + k)], seed=k, max_new_tokens=24)


def run(s, j):
    return s.generate(j["prompt"], max_new_tokens=j["max_new_tokens"], temperature=0.8, top_k=20)


def test_eight_sessions_four_threads_random_cancels(model):
    serial = []
    for k in range(8):
        with guanaco_rt.Session(model, n_ctx=128, n_threads=2, seed=k) as s:
            serial.append(run(s, job(model, k)).tokens)
    sessions = [guanaco_rt.Session(model, n_ctx=128, n_threads=2, seed=k) for k in range(8)]
    results, errors = {}, []
    rnd = random.Random(0)

    def worker(ks):
        try:
            for k in ks:
                results[k] = run(sessions[k], job(model, k))
        except Exception as e:         # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=([2 * i, 2 * i + 1],)) for i in range(4)]
    for th in threads:
        th.start()
    cancelled = set()
    while any(th.is_alive() for th in threads):
        k = rnd.randrange(8)
        if rnd.random() < 0.3:
            sessions[k].cancel()
            cancelled.add(k)
        threading.Event().wait(rnd.uniform(0.0, 0.01))
    for th in threads:
        th.join()
    assert not errors
    for k in range(8):
        r = results[k]
        if r.finish_reason != "cancelled":
            assert r.tokens == serial[k], k
        # the cache is consistent whatever happened: logits == a fresh evaluation of the tokens
        toks = sessions[k].tokens
        if toks and sessions[k]._state.logits() is not None:
            fresh = guanaco_rt.Session(model, n_ctx=128, n_threads=2).eval(toks)
            np.testing.assert_array_equal(sessions[k]._state.logits(), fresh)
