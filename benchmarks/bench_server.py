"""Server throughput: N concurrent streaming clients (the official openai client) against
`guanaco-rt serve` in one or more settings, and llama.cpp's `llama-server` beside it when
given its path. Prints, per server and client count, the aggregate completion tokens/s,
the time to first token (p50, p95) and the median request time.

    python benchmarks/bench_server.py [--model FILE] [--clients 1 2 4 8 16] \\
        [--config batch:8:2 nobatch:4:1 ...] [--llama-server PATH] [--max-tokens 64] [--requests 2]

A config is MODE:PARALLEL:THREADS, MODE ``batch`` (the sessions share each pass over the
weights, the default of --parallel > 1) or ``nobatch`` (each session decodes alone on
THREADS threads, --no-batch). llama-server runs with -np = the largest client count,
continuous batching and -t = --llama-threads. Every reply has --max-tokens tokens (end
tokens banned). The servers run one after the other, so compare ratios within one run.
Then: the time from a client's disconnect to the end of its generation (guanaco-rt).
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
from machine import cpu_flags  # benchmarks/machine.py

PROMPT = "Write a short story about lighthouse keeper number {} and the ship number {}."   # each request its own
NO_END = {"0": -100, "1": -100, "2": -100}     # the end tokens of the demo's vocabulary and of LLaMA's


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(proc, url, log):
    for _ in range(600):
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError("the server exited:\n" + log.read()[-2000:])
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not start")


def start_guanaco(model, mode, parallel, threads, ctx):
    port = free_port()
    log = open(f"/tmp/bench_server_{port}.log", "w+")
    args = [sys.executable, "-m", "guanaco_rt", "serve", "--port", str(port), "--parallel", str(parallel), "-c",
            str(ctx), "-t", str(threads)] + (["--no-batch"] if mode == "nobatch" else []) + ([model] if model else [])
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_up(proc, url, log)
    return proc, url, log


def start_llama_server(path, model, parallel, threads, ctx):
    port = free_port()
    log = open(f"/tmp/bench_llama_server_{port}.log", "w+")
    args = [path, "-m", model, "--port", str(port), "-np", str(parallel), "-c", str(ctx * parallel), "-t",
            str(threads), "-tb", str(threads), "--cont-batching", "--no-warmup", "-fa", "off"]
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_up(proc, url, log)
    return proc, url, log


def load(url, n_clients, n_requests, max_tokens, bias):
    """-> (aggregate completion tok/s, TTFTs, request times, {(client, request): reply text})"""
    def client(i):
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=900)
        out = []
        for j in range(n_requests):
            messages = [{"role": "user", "content": PROMPT.format(i, j)}]
            t0 = time.perf_counter()
            first, n, text = None, 0, []
            stream = c.chat.completions.create(model="any", messages=messages, max_tokens=max_tokens,
                                               temperature=0.8, seed=i, logit_bias=bias, stream=True,
                                               stream_options={"include_usage": True})
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text.append(chunk.choices[0].delta.content)
                    if first is None:
                        first = time.perf_counter() - t0
                if chunk.usage is not None:
                    n = chunk.usage.completion_tokens
            out.append((first if first is not None else time.perf_counter() - t0, time.perf_counter() - t0, n,
                        (i, len(out), "".join(text))))
        return out

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n_clients) as ex:
        res = [x for r in ex.map(client, range(n_clients)) for x in r]
    wall = time.perf_counter() - t0
    return (sum(r[2] for r in res) / wall, [r[0] for r in res], [r[1] for r in res],
            {r[3][:2]: r[3][2] for r in res})


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def disconnect_ms(url, log, bias, rounds=5):
    body = {"prompt": "Tell me a long story.", "max_tokens": 100000, "stream": True, "logit_bias": bias}
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
    p.add_argument("--model", default=None, help="a GGUF or ggjt file (default: the demo model)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--config", nargs="+", default=["batch:16:2"], help="MODE:PARALLEL:THREADS (see above)")
    p.add_argument("--llama-server", default=None, help="path of llama.cpp's llama-server, to run beside")
    p.add_argument("--llama-threads", type=int, default=2)
    p.add_argument("--requests", type=int, default=2, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--ctx", type=int, default=512, help="context per sequence")
    p.add_argument("--disconnect", action="store_true", help="also measure disconnect -> generation end")
    p.add_argument("--warmup", type=int, default=8, help="tokens of a first request before the figures")
    a = p.parse_args()
    model = a.model
    if model is None:
        from guanaco_rt.demo import demo_model_path
        model = demo_model_path()
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    print(f"model {os.path.basename(model)}; {a.max_tokens}-token streamed chat replies, {a.requests} per client\n")
    print("| server | clients | completion tok/s (all clients) | TTFT p50 s | TTFT p95 s | median request s |")
    print("|---|---|---|---|---|---|")
    servers = [("guanaco-rt " + c, c) for c in a.config]
    if a.llama_server:
        servers.append((f"llama-server -np {max(a.clients)} -t {a.llama_threads}", None))
    bias = NO_END
    for name, conf in servers:
        if conf is None:
            proc, url, log = start_llama_server(a.llama_server, model, max(a.clients), a.llama_threads, a.ctx)
        else:
            mode, par, thr = conf.split(":")
            proc, url, log = start_guanaco(model, mode, int(par), int(thr), a.ctx)
        try:
            load(url, 1, 1, a.warmup, bias)                           # warm-up
            texts = {}          # (client, request) -> the reply: seeded, so the same at any concurrency
            differ = 0
            for n in a.clients:
                tps, ttft, req, got = load(url, n, a.requests, a.max_tokens, bias)
                differ += sum(1 for k, v in got.items() if texts.setdefault(k, v) != v)
                print(f"| {name} | {n} | {tps:.1f} | {pct(ttft, 0.5):.3f} | {pct(ttft, 0.95):.3f} | "
                      f"{statistics.median(req):.2f} |", flush=True)
            print(f"|   (replies that differ from the same seed's at another client count: {differ}) | | | | | |")
            if conf is not None:
                h = httpx.get(url + "/health").json()
                if "batch" in h:
                    b = h["batch"]
                    print(f"|   (batch: {b['passes']} passes, occupancy {b['occupancy']:.2f}, "
                          f"{b.get('one_thread_passes', 0)} on one thread) | | | | | |", flush=True)
                if a.disconnect:
                    ms = disconnect_ms(url, log, bias)
                    print(f"\n{name}: disconnect -> generation ended: median {statistics.median(ms):.1f} ms, "
                          f"max {max(ms):.1f} ms over {len(ms)} disconnects\n")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
