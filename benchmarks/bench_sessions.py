"""Embedding figures on a 7B-shape file: time to cancel a long prompt evaluation, state
blob size per 100 tokens, and the throughput of 1, 2 and 4 concurrent sessions sharing
one Model.

    python benchmarks/bench_sessions.py [--model PATH] [--threads 2]
"""
import argparse
import os
import threading
import time

import guanaco_rt

HERE = os.path.dirname(os.path.abspath(__file__))


def cancel_latency(model, n_threads):
    s = guanaco_rt.Session(model, n_ctx=1024, n_threads=n_threads, kv_f16=True)
    ids = [1] + [100 + i % 30000 for i in range(900)]
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("r", s.generate(ids, max_new_tokens=4, temperature=0)))
    th.start()
    time.sleep(2.0)
    t0 = time.perf_counter()
    s.cancel()
    th.join()
    latency = time.perf_counter() - t0
    return latency, out["r"].finish_reason, s.n_past


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
    for k, v in state_sizes(model, a.threads).items():
        print(f"state blob, 100 tokens, {k} KV cache: {v / 1e6:.1f} MB")
    for n in (1, 2, 4):
        tps, per = concurrent(model, n, a.threads)
        print(f"{n} concurrent session(s), {per} thread(s) each: {tps:.2f} tokens/s in total")


if __name__ == "__main__":
    main()
