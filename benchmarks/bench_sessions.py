"""Embedding figures on a 7B-shape file: time to cancel a long prompt evaluation and a
generation, state blob size per 100 tokens, how fast a pure-Python thread runs while a
session generates (the GIL), the sampling chain's time per token, and the throughput
of 1, 2 and 4 concurrent sessions sharing one Model.

    python benchmarks/bench_sessions.py [--model PATH] [--threads 2]
"""
import argparse
import os
import threading
import time

import guanaco_rt

HERE = os.path.dirname(os.path.abspath(__file__))


def _cancel_midway(s, run, delay):
    """run() on another thread, s.cancel() after ``delay`` s -> (run's result, seconds from cancel() to return)."""
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("r", run()))
    th.start()
    time.sleep(delay)
    t0 = time.perf_counter()
    s.cancel()
    th.join()
    return out["r"], time.perf_counter() - t0


def cancel_latency(model, n_threads):
    s = guanaco_rt.Session(model, n_ctx=1024, n_threads=n_threads, kv_f16=True)
    ids = [1] + [100 + i % 30000 for i in range(900)]
    r, latency = _cancel_midway(s, lambda: s.generate(ids, max_new_tokens=4, temperature=0), 2.0)
    return latency, r.finish_reason, s.n_past


def cancel_decoding_latency(model, n_threads):
    s = guanaco_rt.Session(model, n_ctx=512, n_threads=n_threads, kv_f16=True)
    r, latency = _cancel_midway(s, lambda: s.generate([1, 100, 200], max_new_tokens=400, temperature=0.8,
                                                      logit_bias={2: float("-inf")}), 3.0)
    return latency, r.finish_reason, len(r.tokens)


def _spin_rate(seconds, during=None):
    """Increments per second of a pure-Python loop, alone or while ``during`` runs."""
    count, stop = [0], threading.Event()

    def spin():
        n = 0
        while not stop.is_set():
            n += 1
        count[0] = n
    th = threading.Thread(target=spin)
    t0 = time.perf_counter()
    th.start()
    if during is None:
        time.sleep(seconds)
    else:
        during()
    stop.set()
    th.join()
    return count[0] / (time.perf_counter() - t0)


def gil_share(model):
    # one kernel thread, so the spinning Python thread has the other core
    s = guanaco_rt.Session(model, n_ctx=256, n_threads=1, kv_f16=True, seed=0)
    s.generate([1, 100, 200], max_new_tokens=2, temperature=0.8)      # warm the pages
    idle = _spin_rate(3.0)
    res = {}
    busy = _spin_rate(0, lambda: res.setdefault("r", s.generate(
        [1, 300, 400], max_new_tokens=48, temperature=0.8, top_k=0, top_p=0.95, repetition_penalty=1.1,
        stop=["### Human:"], logit_bias={2: float("-inf")})))
    return busy / idle, res["r"].timings.generate_tokens_per_s


def sampling_cost(model):
    import numpy as np

    from guanaco_rt.sampling import Sampler, SamplingParams
    logits = (np.random.default_rng(0).standard_normal(model.n_vocab) * 3).astype(np.float32)
    hist = np.arange(100, 400, dtype=np.int32)
    out = {}
    for name, kw in (("defaults (top_k 40, top_p 0.95)", {}), ("top_k off, top_p 0.95", {"top_k": 0}),
                     ("top_k off, typical_p 0.9", {"top_k": 0, "typical_p": 0.9})):
        core = Sampler(0).core(SamplingParams(**kw), model.n_vocab)
        t0 = time.perf_counter()
        for _ in range(200):
            core.sample(logits, hist)
        out[name] = (time.perf_counter() - t0) / 200
    return out


def pool_thread_speed(model, n_threads):
    """Generation tok/s on the main thread, then on a thread-pool worker (as a web server
    would call it). Once more than one Python thread has run OpenMP regions, libgomp has
    more threads than cores and shortens its spin-wait, so each fork/join can sleep."""
    from concurrent.futures import ThreadPoolExecutor

    def job():
        s = guanaco_rt.Session(model, n_ctx=256, n_threads=n_threads, kv_f16=True, seed=0)
        r = s.generate([1] + list(range(200, 216)), max_new_tokens=32, temperature=0.8,
                       logit_bias={2: float("-inf")})
        return r.timings.generate_tokens_per_s
    main = max(job(), job())
    with ThreadPoolExecutor(2) as ex:
        pool = max(ex.submit(job).result() for _ in range(3))
    return main, pool


def state_sizes(model, n_threads):
    sizes = {}
    for kv_f16 in (False, True):
        s = guanaco_rt.Session(model, n_ctx=256, n_threads=n_threads, kv_f16=kv_f16)
        s.eval([1] + list(range(100, 199)))          # 100 tokens
        sizes["f16" if kv_f16 else "f32"] = len(s.save_state())
    return sizes


def concurrent(model, n_sessions, n_threads_total, n_gen=32):
    per = max(1, n_threads_total // n_sessions)
    sessions = [guanaco_rt.Session(model, n_ctx=256, n_threads=per, kv_f16=True, seed=i) for i in range(n_sessions)]
    prompts = [[1] + list(range(200 + 7 * i, 216 + 7 * i)) for i in range(n_sessions)]
    counts = [0] * n_sessions

    def run(i):
        r = sessions[i].generate(prompts[i], max_new_tokens=n_gen, temperature=0.8, logit_bias={2: -1e9})
        counts[i] = len(r.tokens)
    t0 = time.perf_counter()
    ths = [threading.Thread(target=run, args=(i,)) for i in range(n_sessions)]
    [t.start() for t in ths]
    [t.join() for t in ths]
    dt = time.perf_counter() - t0
    return sum(counts) / dt, per


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.path.join(HERE, "models", "random-7B.ggmlv3.q4_0.bin"))
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if not os.path.exists(a.model):
        from guanaco_rt.writer import write_random_model
        os.makedirs(os.path.dirname(a.model), exist_ok=True)
        write_random_model(a.model, "q4_0", n_vocab=32000, n_embd=4096, n_mult=256, n_head=32, n_layer=32, seed=7)
    model = guanaco_rt.Model(a.model, n_threads=a.threads)
    lat, reason, n_past = cancel_latency(model, a.threads)
    print(f"cancel: returned {lat * 1e3:.0f} ms after cancel() ({reason}; {n_past} prompt tokens kept)")
    lat, reason, n_gen = cancel_decoding_latency(model, a.threads)
    print(f"cancel during generation: returned {lat * 1e3:.0f} ms after cancel() ({reason}; {n_gen} tokens)")
    share, tps = gil_share(model)
    print(f"a pure-Python thread ran at {share * 100:.0f}% of its idle speed while a 1-thread session "
          f"generated ({tps:.2f} tokens/s, top_k off, top_p, penalties, stop string)")
    for name, sec in sampling_cost(model).items():
        print(f"sampling chain, {model.n_vocab} vocab, {name}: {sec * 1e3:.3f} ms per token")
    main, pool = pool_thread_speed(model, a.threads)
    print(f"generation, {a.threads} threads: {main:.2f} tokens/s on the main thread, {pool:.2f} on a thread-pool "
          f"worker after it")
    for k, v in state_sizes(model, a.threads).items():
        print(f"state blob, 100 tokens, {k} KV cache: {v / 1e6:.1f} MB")
    for n in (1, 2, 4):
        tps, per = concurrent(model, n, a.threads)
        print(f"{n} concurrent session(s), {per} thread(s) each: {tps:.2f} tokens/s in total")


if __name__ == "__main__":
    main()
