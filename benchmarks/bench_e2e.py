"""End-to-end speed: prompt and generation tokens/s and peak RSS, guanaco_rt side by
side with ctransformers and llama-cpp-python==0.1.78 (the August-2023 llama.cpp) on the
same 7B-shape random-weight file, same thread count, each runtime in its own process.

    python benchmarks/bench_e2e.py --ftype q4_0 q4_K_M --threads 2 [--peer-python PY]

Against the current llama.cpp (a recent llama-cpp-python in --peer-python), on GGUF copies
of the same tensors (guanaco_rt.writer.ggjt_to_gguf):

    python benchmarks/bench_e2e.py --gguf --ftype q4_0 q4_K_M q8_0 q2_K q5_K_M q6_K \
        --runtimes guanaco_rt llama.cpp --peer-python PY --repeat 3

The types only GGUF has (iq4_nl, iq4_xs, bf16) are GGUF copies of the q4_0 file's shapes with
random blocks of the type: --ftype iq4_nl iq4_xs.

The file is written with guanaco_rt's writer if missing (benchmarks/models/). Peers
are looked up in --peer-python (default: this interpreter); a missing peer is skipped.
Prints a Markdown table with the ratios to llama.cpp (else to the first runtime).

Runtimes: guanaco_rt (the default: adaptive threads), guanaco_rt@N (N threads),
guanaco_rt/fixed (the thread governor off), llama.cpp, ctransformers. --isa U1 U2 ... runs each
guanaco_rt runtime once per kernel unit (named e.g. guanaco_rt+avx512); the AVX-512 unit against
the AVX2 unit, alternating pairs:

    python benchmarks/bench_e2e.py --model demo --isa avx512 avx2 --runtimes guanaco_rt@1 --pairs 5 Contention: with
one of 2 cores busy, the default against one thread and against the governor off:

    python benchmarks/bench_e2e.py --ftype q4_0 --busy-cores 1 --runtimes guanaco_rt@1 guanaco_rt guanaco_rt/fixed
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

RUNNER = r'''
import json, sys, time, resource
import numpy as np
kind, path = sys.argv[1], sys.argv[2]
n_threads, n_prompt, n_gen, n_batch = (int(a) for a in sys.argv[3:7])
rng = np.random.default_rng(0)
n_vocab = int(sys.argv[7])
prompt = [1] + [int(t) for t in rng.integers(3, n_vocab, n_prompt - 1)]
gen = [int(t) for t in rng.integers(3, n_vocab, n_gen)]
t0 = time.perf_counter()
if kind.startswith("guanaco_rt"):
    # guanaco_rt: the default (adaptive threads); guanaco_rt@N: N threads; guanaco_rt/fixed: the
    # thread governor off (always n_threads, as before it existed)
    import guanaco_rt
    kind, _, isa = kind.partition("+")
    if "@" in kind:
        n_threads = int(kind.split("@")[1])
    m = guanaco_rt.Model(path, n_threads=n_threads, isa=isa or None)
    s = guanaco_rt.Session(m, n_ctx=n_prompt + n_gen + 8, n_batch=n_batch, kv_f16=True,
                           adaptive_threads=not kind.endswith("/fixed"))
    load = time.perf_counter() - t0
    ev_prompt = lambda: s.eval(prompt)
    ev_one = lambda t: s.eval([t])
elif kind == "llama.cpp":
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=n_prompt + n_gen + 8, n_threads=n_threads, n_batch=512, verbose=False)
    load = time.perf_counter() - t0
    ev_prompt = lambda: llm.eval(prompt)
    ev_one = lambda t: llm.eval([t])
elif kind == "ctransformers":
    from ctransformers import AutoModelForCausalLM
    llm = AutoModelForCausalLM.from_pretrained(path, model_type="llama", context_length=n_prompt + n_gen + 8,
                                               threads=n_threads, batch_size=512, gpu_layers=0)
    load = time.perf_counter() - t0
    ev_prompt = lambda: llm.eval(prompt, batch_size=512, threads=n_threads)
    ev_one = lambda t: llm.eval([t], batch_size=1, threads=n_threads)
t0 = time.perf_counter(); ev_prompt(); tp = time.perf_counter() - t0
t0 = time.perf_counter()
for t in gen:
    ev_one(t)
tg = time.perf_counter() - t0
print(json.dumps({"load_s": load, "prompt_tps": n_prompt / tp, "gen_tps": n_gen / tg,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


# types no ggjt file has: GGUF only, the q4_0 file's tensors as random blocks of the type
RETYPED = {"iq4_nl": 20, "iq4_xs": 23, "bf16": 30}


def model_path(ftype, models_dir, gguf=False):
    path = os.path.join(models_dir, f"random-7B.ggmlv3.{ftype}.bin")
    copy = os.path.join(models_dir, f"random-7B.{ftype}.gguf")
    if (gguf or ftype in RETYPED) and os.path.exists(copy):
        return copy
    if ftype in RETYPED:
        from guanaco_rt.writer import ggjt_to_gguf
        print(f"writing {copy} ...", file=sys.stderr)
        ggjt_to_gguf(model_path("q4_0", models_dir), copy, retype=RETYPED[ftype])
        return copy
    if not os.path.exists(path):
        from guanaco_rt.writer import write_random_model
        os.makedirs(models_dir, exist_ok=True)
        print(f"writing {path} ...", file=sys.stderr)
        write_random_model(path, ftype, n_vocab=32000, n_embd=4096, n_mult=256, n_head=32, n_layer=32, seed=7)
    if gguf:
        from guanaco_rt.writer import ggjt_to_gguf
        print(f"writing {copy} ...", file=sys.stderr)
        ggjt_to_gguf(path, copy)
        return copy
    return path


def warm_page_cache(path):
    # every runtime starts with the file in the page cache: otherwise whichever runs first
    # pays for the disk reads in its prompt time
    with open(path, "rb", buffering=0) as f:
        while f.read(64 << 20):
            pass


def vocab_size(path):
    # from the header alone: a Model here would interleave weights in this process, and its
    # peak RSS would carry over into every runner forked from it (ru_maxrss survives exec)
    from guanaco_rt import gguf_file, gguf_model
    from guanaco_rt.ggml_file import open_mmap, parse
    mm, _, _ = open_mmap(path)
    if gguf_file.is_gguf(mm):
        return gguf_model.load(gguf_file.parse(path, mm)).hparams.n_vocab
    return parse(path, mm).hparams.n_vocab


def run(python, kind, path, a):
    warm_page_cache(path)
    n_vocab = vocab_size(path)      # prompt ids drawn from this model's vocab
    cmd = [python, "-c", RUNNER, kind, path, str(a.threads), str(a.n_prompt), str(a.n_gen), str(a.n_batch),
           str(n_vocab)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ftype", nargs="+", default=["q4_0", "q4_K_M"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-prompt", type=int, default=128)
    p.add_argument("--n-gen", type=int, default=64)
    p.add_argument("--n-batch", type=int, default=64, help="guanaco_rt prompt batch")
    p.add_argument("--repeat", type=int, default=1, help="runs per runtime; the median is reported")
    p.add_argument("--peer-python", default=sys.executable)
    p.add_argument("--models-dir", default=os.path.join(HERE, "models"))
    p.add_argument("--runtimes", nargs="+", default=["guanaco_rt", "llama.cpp", "ctransformers"])
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--model", nargs="+", default=None, metavar="FILE",
                   help="these model files instead of --ftype (e.g. a GGUF file; 'demo': the demo model)")
    p.add_argument("--pairs", type=int, default=0,
                   help="instead of the table: N back-to-back pairs of the first and the second runtime "
                        "(llama.cpp by default), in alternating order; prints the median and quartiles of the "
                        "paired ratios")
    p.add_argument("--gguf", action="store_true",
                   help="every runtime reads a GGUF copy of the --ftype file (written beside it once): the "
                        "current llama.cpp reads GGUF only")
    p.add_argument("--isa", nargs="+", default=None, metavar="UNIT",
                   help="run each guanaco_rt runtime once per kernel unit (guanaco_rt+UNIT; see guanaco-rt config)")
    p.add_argument("--busy-cores", type=int, default=0,
                   help="keep this many cores busy (a spinning process each) during every run: contention")
    a = p.parse_args()
    if a.isa:
        a.runtimes = [f"{k}+{u}" if k.startswith("guanaco_rt") else k for k in a.runtimes
                      for u in (a.isa if k.startswith("guanaco_rt") else [None])]
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.busy_cores)]
    try:
        _main(a)
    finally:
        for b in busy:
            b.kill()


def _paired(a, targets):
    import statistics
    mine, other = a.runtimes[0], a.runtimes[1]
    for ft, path in targets:
        path = path or model_path(ft, a.models_dir, a.gguf)
        ratios = {"prompt_tps": [], "gen_tps": []}
        absolute = {mine: {k: [] for k in ratios}, other: {k: [] for k in ratios}}
        for i in range(a.pairs):
            order = [mine, other] if i % 2 == 0 else [other, mine]
            r = {k: run(sys.executable if k.startswith("guanaco_rt") else a.peer_python, k, path, a) for k in order}
            if any("error" in v for v in r.values()):
                print(f"{ft}: {r}")
                return
            for k in ratios:
                ratios[k].append(r[mine][k] / r[other][k])
                for kind in (mine, other):
                    absolute[kind][k].append(r[kind][k])
        out = []
        for k, v in ratios.items():
            v = sorted(v)
            out.append(f"{k.split('_')[0]} {statistics.median(v):.2f} ({v[len(v) // 4]:.2f}-{v[3 * len(v) // 4]:.2f})")
        print(f"| {ft} | {a.threads} | {a.pairs} | " + " | ".join(out) + " |")
        print("    tok/s, median: " + "; ".join(
            f"{kind} prompt {statistics.median(v['prompt_tps']):.2f} gen {statistics.median(v['gen_tps']):.2f}"
            for kind, v in absolute.items()))


def _main(a):
    from guanaco_rt._kernels import _engine
    print(f"CPU features: {' '.join(sorted(_engine.cpu_features()))}")
    rows = []
    if a.model:
        from guanaco_rt import demo_model_path
        targets = [(os.path.basename(m), demo_model_path() if m == "demo" else m) for m in a.model]
    else:
        targets = [(ft, None) for ft in a.ftype]
    if a.pairs:
        if len(a.runtimes) < 2 or a.runtimes[0] == a.runtimes[1]:
            raise SystemExit("--pairs compares the first two --runtimes: give two different ones")
        print(f"| model | threads | pairs | {a.runtimes[0]} / {a.runtimes[1]} prompt: median (quartiles) "
              "| generation |")
        print("|---|---|---|---|---|")
        return _paired(a, targets)
    for ft, path in targets:
        path = path or model_path(ft, a.models_dir, a.gguf)
        size_gb = os.path.getsize(path) / 1e9
        res = {}
        # the runtimes take turns, repeat by repeat: this machine's speed drifts by up to 1.5x
        # within a minute, and back-to-back runs of one runtime would all land in one phase
        runs_of = {kind: [] for kind in a.runtimes}
        for _ in range(a.repeat):
            for kind in a.runtimes:
                py = sys.executable if kind.startswith("guanaco_rt") else a.peer_python
                runs_of[kind].append(run(py, kind, path, a))
        for kind, runs in runs_of.items():
            ok = [r for r in runs if "error" not in r]
            if not ok:
                res[kind] = runs[0]
                continue
            med = lambda k: sorted(r[k] for r in ok)[len(ok) // 2]  # noqa: E731
            res[kind] = {k: med(k) for k in ok[0]}
        rows.append((ft, size_gb, res))
        print(json.dumps({"ftype": ft, "size_gb": size_gb, **res}), file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump([{"ftype": ft, "size_gb": sz, **res} for ft, sz, res in rows], f, indent=1)
    busy = f", {a.busy_cores} core(s) kept busy" if a.busy_cores else ""
    print(f"\n{a.n_prompt}-token prompt, {a.n_gen} generated, {a.threads} threads{busy}; tok/s (ratio to "
          f"{'llama.cpp' if 'llama.cpp' in a.runtimes else a.runtimes[0]})\n")
    print("| type | GB | runtime | prompt tok/s | gen tok/s | peak RSS MB | load s |")
    print("|---|---|---|---|---|---|---|")
    for ft, sz, res in rows:
        base = res.get("llama.cpp") or res.get(a.runtimes[0], {})
        for kind, r in res.items():
            if "error" in r:
                print(f"| {ft} | {sz:.2f} | {kind} | error: {r['error']} | | | |")
                continue

            def fmt(k):
                s = f"{r[k]:.2f}"
                if r is not base and base.get(k):
                    s += f" ({r[k] / base[k]:.2f}x)"
                return s
            print(f"| {ft} | {sz:.2f} | {kind} | {fmt('prompt_tps')} | {fmt('gen_tps')} | "
                  f"{r['peak_rss_mb']:.0f} | {r['load_s']:.2f} |")


if __name__ == "__main__":
    main()
