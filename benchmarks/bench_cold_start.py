"""Cold start: N chat requests with one system prompt arriving together at a fresh LLM
(no session holds the system prompt yet), with SessionPool's cold-start wait (each request
waits for the earliest running one whose prompt shares 16+ more positions, then copies
them) and without it (COLD_SHARE_MIN = 10**9: each request evaluates the system prompt).
Alternating rounds, a fresh LLM each; prints the time until every reply is done and the
time to first token (p50, max).

    python benchmarks/bench_cold_start.py [--model FILE] [--clients 8] [--rounds 2] [--tokens 16]
"""
import argparse
import statistics
import time

from bench_batch import together  # benchmarks/bench_batch.py
from machine import cpu_flags  # benchmarks/machine.py

import guanaco_rt
from guanaco_rt.api import LLM, SessionPool
from guanaco_rt.demo import demo_model_path

SYSTEM = ("You are a careful assistant for a shipping company. Answer questions about lighthouses, "
          "harbours, tides and the ships that pass them, briefly and precisely. When you do not know, "
          "say so. Use metric units. Never invent ship names or dates. ") * 2
NO_END = {"0": -100, "1": -100, "2": -100}     # the end tokens of the demo's vocabulary and of LLaMA's


def burst(m, n, tokens, cold_min):
    SessionPool.COLD_SHARE_MIN = cold_min
    with LLM(m, n_ctx=512, n_sessions=n) as llm:
        ttft = [0.0] * n

        def run(i):
            t0 = time.perf_counter()
            msgs = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Tell me about lighthouse {i}."}]
            for ch in llm.create_chat_completion(msgs, max_tokens=tokens, temperature=0, stream=True,
                                                 logit_bias=NO_END):
                if not ttft[i] and ch["choices"] and ch["choices"][0]["delta"].get("content"):
                    ttft[i] = time.perf_counter() - t0
        wall = together(n, run)
        return wall, ttft, llm.pool.shared_tokens, llm.pool.cold_waits


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a GGUF or ggjt file (default: the demo model)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--tokens", type=int, default=16, help="tokens of each reply")
    a = p.parse_args()
    m = guanaco_rt.Model(a.model or demo_model_path())
    default = SessionPool.COLD_SHARE_MIN
    print(f"CPU: {cpu_flags()}")
    print(f"{a.clients} chat requests with a {len(m.tokenize(SYSTEM))}-token system prompt at a fresh LLM, "
          f"{a.tokens}-token replies\n")
    print("| round | cold-start wait | all done s | TTFT p50 s | TTFT max s | shared positions | waits |")
    print("|---|---|---|---|---|---|---|")
    try:
        for r in range(a.rounds):
            for on in (True, False):
                t, ttft, shared, waits = burst(m, a.clients, a.tokens, default if on else 10 ** 9)
                print(f"| {r + 1} | {'on' if on else 'off'} | {t:.2f} | {statistics.median(ttft):.3f} | "
                      f"{max(ttft):.3f} | {shared} | {waits} |", flush=True)
    finally:
        SessionPool.COLD_SHARE_MIN = default


if __name__ == "__main__":
    main()
