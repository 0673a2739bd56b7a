"""Server throughput: `guanaco-rt serve` on the demo model (or MODEL), driven by N concurrent
clients with the official openai client; aggregate generated tokens/s, request latency,
and the time from a client's disconnect to the end of its generation.

    python benchmarks/bench_server.py [--model FILE] [--clients 1 2 4 8] [--parallel 2] [--threads 1]

Each client sends --requests chat completions of --max-tokens tokens (end-of-text banned,
so every reply has the same length); one server per --parallel value.
"""
import argparse
import concurrent.futures
import os
import re
import socket
import statistics
import subprocess
import sys
import time

import httpx
import openai

NO_END = {"0": -100, "1": -100, "2": -100}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model, parallel, threads, ctx):
    port = free_port()
    log = open(f"/tmp/bench_server_{port}.log", "w+")
    args = [sys.executable, "-m", "guanaco_rt", "serve", "--port", str(port), "--parallel", str(parallel), "-c",
            str(ctx), "-t", str(threads)] + ([model] if model else [])
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


def load(url, n_clients, n_requests, max_tokens):
    messages = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]

    def client(i):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        out = []
        for _ in range(n_requests):
            t0 = time.perf_counter()
            r = c.chat.completions.create(model="any", messages=messages, max_tokens=max_tokens, temperature=0.8,
                                          seed=i, logit_bias=NO_END)
            out.append((time.perf_counter() - t0, r.usage.completion_tokens))
        return out

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n_clients) as ex:
        res = [x for r in ex.map(client, range(n_clients)) for x in r]
    wall = time.perf_counter() - t0
    toks = sum(n for _, n in res)
    return toks / wall, statistics.median(t for t, _ in res), toks


def disconnect_ms(url, log, rounds=5):
    body = {"prompt": "Tell me a long story.", "max_tokens": 100000, "stream": True, "logit_bias": NO_END}
    for _ in range(rounds):
        with httpx.Client(timeout=30) as h, h.stream("POST", url + "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            for _ in range(8):
                next(lines)
        while httpx.get(url + "/health").json()["busy"]:
            time.sleep(0.01)
    log.flush()
    with open(log.name) as f:
        return [float(x) for x in re.findall(r"client gone: generation \S+ ended ([\d.]+) ms", f.read())]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--parallel", type=int, nargs="+", default=[2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--requests", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=64)
    a = p.parse_args()
    print(f"{a.max_tokens}-token chat replies, {a.requests} per client, {a.threads} thread(s) per session, "
          f"{os.cpu_count()} cores\n")
    print("| sessions | clients | generated tok/s (all clients) | median request s |")
    print("|---|---|---|---|")
    for par in a.parallel:
        proc, url, log = start(a.model, par, a.threads, 512)
        try:
            load(url, 1, 1, 8)                                  # warm-up
            for n in a.clients:
                tps, lat, _ = load(url, n, a.requests, a.max_tokens)
                print(f"| {par} | {n} | {tps:.1f} | {lat:.2f} |", flush=True)
            ms = disconnect_ms(url, log)
        finally:
            proc.terminate()
            proc.wait()
        print(f"\ndisconnect -> generation ended ({par} sessions): median {statistics.median(ms):.1f} ms, "
              f"max {max(ms):.1f} ms over {len(ms)} disconnects\n")


if __name__ == "__main__":
    main()
