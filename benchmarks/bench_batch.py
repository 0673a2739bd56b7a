"""Batched decoding in process: N sessions of one Model generating at once, alone on their
own threads (each session its share of the cores, as --no-batch) against sharing passes
through a batcher, in alternating rounds; then the prefill chunk: a long prompt arriving
while the other sessions stream, its time to first token and the longest gap it causes
in the others' streams, per chunk size.

    python benchmarks/bench_batch.py [--model FILE] [--clients 1 2 4 8] [--tokens 32] [--rounds 2]
        [--chunks 8 16 32 64 128] [--threads 2] [--passes]

Every reply has --tokens tokens (end tokens banned). Speed varies between machines and
days: compare the ratios of one run.
"""
import argparse
import os
import statistics
import threading
import time

from machine import cpu_flags  # benchmarks/machine.py

import guanaco_rt

PROMPT = "Write a short story about a lighthouse keeper number {}."


def no_end(model):
    tk = model.tokenizer
    return {t: float("-inf") for t in {tk.eos_id, *getattr(tk, "eog_ids", ())} if t is not None}


def together(n, work):
    """work(0) ... work(n - 1) on n threads, released at once -> seconds from the release until all end"""
    go = threading.Barrier(n + 1)

    def one(i):
        go.wait()
        work(i)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def run_all(sessions, n_tokens, bias, on_piece=None):
    """every session generates n_tokens at once -> (aggregate tok/s, [time to first token])"""
    ttft = [None] * len(sessions)

    def one(i):
        t0 = time.perf_counter()
        for _ in sessions[i].stream(PROMPT.format(i), max_new_tokens=n_tokens, temperature=0, logit_bias=bias):
            if ttft[i] is None:
                ttft[i] = time.perf_counter() - t0
            if on_piece is not None:
                on_piece(i)
    wall = together(len(sessions), one)
    return sum(len(s.last_result.tokens) for s in sessions) / wall, ttft


def throughput(model, clients, n_tokens, rounds, threads):
    bias = no_end(model)
    print("| clients | alone, each on its share of threads: tok/s | batched: tok/s | ratio | occupancy |")
    print("|---|---|---|---|---|")
    for n in clients:
        alone_s = [guanaco_rt.Session(model, n_ctx=512, n_threads=max(1, threads // n)) for _ in range(n)]
        b = model.batcher(max_seqs=max(n, 1), chunk=32, n_threads=threads)
        batched_s = [guanaco_rt.Session(model, n_ctx=512, batcher=b) for _ in range(n)]
        a, c = [], []
        for _ in range(rounds):                 # alternating, so that a slow spell hits both
            for s in alone_s + batched_s:
                s.reset()
            a.append(run_all(alone_s, n_tokens, bias)[0])
            c.append(run_all(batched_s, n_tokens, bias)[0])
        occ = b.stats()["occupancy"]
        b.close()
        print(f"| {n} | {statistics.median(a):.1f} | {statistics.median(c):.1f} | "
              f"{statistics.median(c) / statistics.median(a):.2f}x | {occ:.2f} |", flush=True)


def chunk_sweep(model, chunks, n_streams, prompt_tokens, threads):
    """n_streams sessions stream; then a prompt of prompt_tokens arrives: its TTFT and the others' longest gap"""
    bias = no_end(model)
    long_prompt = [model.tokenizer.bos_id or 1] + (model.tokenize(" The lighthouse stood on the rock.",
                                                                   bos=False) * 200)[:prompt_tokens - 1]
    print(f"\n{n_streams} streams running, then a {prompt_tokens}-token prompt arrives:\n")
    print("| chunk | its TTFT s | others' longest gap between tokens, s | others' median gap s |")
    print("|---|---|---|---|")
    for chunk in chunks:
        b = model.batcher(max_seqs=n_streams + 1, chunk=chunk, n_threads=threads)
        streams = [guanaco_rt.Session(model, n_ctx=1024, batcher=b) for _ in range(n_streams)]
        newcomer = guanaco_rt.Session(model, n_ctx=1024, batcher=b)
        last = [None] * n_streams
        gaps = []
        window = {"on": False}

        def on_piece(i):
            now = time.perf_counter()
            if last[i] is not None and window["on"]:
                gaps.append(now - last[i])
            last[i] = now
        box = {}

        def streaming():
            box["r"] = run_all(streams, 10_000, bias, on_piece)
        t = threading.Thread(target=streaming)
        t.start()
        time.sleep(1.0)                         # the streams are decoding
        window["on"] = True
        t0 = time.perf_counter()
        first = None
        for _ in newcomer.stream(long_prompt, max_new_tokens=1, temperature=0, logit_bias=bias):
            first = time.perf_counter() - t0
        window["on"] = False
        for s in streams:
            s.cancel()
        t.join()
        b.close()
        print(f"| {chunk} | {first:.3f} | {max(gaps):.3f} | {statistics.median(gaps):.4f} |", flush=True)


def pass_times(model, shapes, threads):
    """one pass of each shape (the rows each sequence adds), its sequences lined up first
    (Batcher.pause): the pass's seconds, best of 2"""
    import numpy as np

    from guanaco_rt._kernels._engine import State
    rng = np.random.default_rng(0)
    b = model.batcher(max_seqs=16, chunk=64, n_threads=threads)
    print("\n| rows each sequence adds | rows | pass ms | rows/s |\n|---|---|---|---|")
    for shape in shapes:
        best = None
        for _ in range(2):
            states = []
            for _ in shape:
                s = State(model._engine, 512, 64, False, threads)
                s.prefill(rng.integers(3, 290, 20).astype(np.int32))
                s.attach(b)
                states.append(s)
            b.pause()
            threads_ = [threading.Thread(target=s.prefill, args=(rng.integers(3, 290, n).astype(np.int32),))
                        for s, n in zip(states, shape)]
            for t in threads_:
                t.start()
            while b.stats()["queued"] < len(shape):
                time.sleep(0.002)
            b.resume()
            for t in threads_:
                t.join()
            dt = b.stats()["last_pass_s"]
            best = dt if best is None else min(best, dt)
        print(f"| {shape} | {sum(shape)} | {1e3 * best:.1f} | {sum(shape) / best:.1f} |", flush=True)
    b.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--clients", type=int, nargs="*", default=[1, 2, 4, 8])
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunks", type=int, nargs="*", default=[8, 16, 32, 64, 128])
    p.add_argument("--streams", type=int, default=7)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--passes", action="store_true", help="time single passes of 1, 4, 8 sequences and a chunk")
    a = p.parse_args()
    path = a.model or guanaco_rt.demo_model_path()
    model = guanaco_rt.Model(path, n_threads=a.threads)
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    print(f"model {os.path.basename(path)}; {a.tokens} tokens a reply, {a.threads} threads\n")
    if a.clients:
        throughput(model, a.clients, a.tokens, a.rounds, a.threads)
    if a.chunks:
        chunk_sweep(model, a.chunks, a.streams, a.prompt_tokens, a.threads)
    if a.passes:
        pass_times(model, [[1], [1] * 4, [1] * 8, [32], [1] * 8 + [32]], a.threads)


if __name__ == "__main__":
    main()
