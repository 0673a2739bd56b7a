"""What a constraint costs: generation speed under a JSON schema against unconstrained
generation of as many tokens, side by side in one run; compile time; the first call.

    python benchmarks/bench_constrained.py [--model FILE] [--threads 1] [--tokens 200] [--pairs 5]

Both runs of a pair generate exactly ``--tokens`` tokens from the same chat prompt (the
unconstrained one with the end-of-generation tokens banned, the constrained one under a
schema that asks for more items than fit), so each pass is over the same positions. The
pairs alternate, and the ratio of the medians is reported. Also: the vocabulary's
preparation (the first constrained call on a model pays it once), the compile time of
a few typical schemas (first and cached), and the mask's own time per step.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from machine import cpu_flags  # benchmarks/machine.py

import guanaco_rt  # noqa: E402
from guanaco_rt import constrain  # noqa: E402

LONG = {"type": "object", "properties": {"items": {"type": "array", "minItems": 200, "items": {
    "type": "object", "properties": {"name": {"type": "string", "maxLength": 24}, "qty": {"type": "integer"},
                                     "unit": {"enum": ["g", "kg", "ml", "l", "pcs"]}},
    "required": ["name", "qty", "unit"], "additionalProperties": False}}}, "required": ["items"]}
TYPICAL = {
    "person": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                                                "email": {"type": "string", "format": "email"}},
               "required": ["name", "age"]},
    "order": {"type": "object", "properties": {
        "id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{6}$"}, "lines": {"type": "array", "items": {
            "type": "object", "properties": {"sku": {"type": "string"}, "n": {"type": "integer"}},
            "required": ["sku", "n"]}, "minItems": 1, "maxItems": 20},
        "status": {"enum": ["new", "paid", "shipped"]}, "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
        "required": ["id", "lines", "status"]},
    "event": {"type": "object", "properties": {"title": {"type": "string"},
                                               "date": {"type": "string", "format": "date"},
                                               "where": {"type": "object", "properties": {
                                                   "city": {"type": "string"}, "lat": {"type": "number"},
                                                   "lon": {"type": "number"}}, "required": ["city"]}},
              "required": ["title", "date", "where"]},
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a GGUF or ggjt file (default: the demo model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=5)
    a = ap.parse_args()
    print(f"# CPU: {cpu_flags()}")
    print(f"# load average: {os.getloadavg()[0]:.2f}, threads {a.threads}")
    path = a.model or guanaco_rt.demo_model_path()
    model = guanaco_rt.Model(path, n_threads=a.threads)
    t0 = time.perf_counter()
    constrain.vocabulary(model)
    print(f"vocabulary prepared (once per model): {(time.perf_counter() - t0) * 1e3:.0f} ms "
          f"for {model.n_vocab} tokens")
    for name, schema in TYPICAL.items():
        t0 = time.perf_counter()
        c, _ = constrain.compile_constraint(model, json_schema=schema)
        t1 = time.perf_counter()
        constrain.compile_constraint(model, json_schema=schema)
        t2 = time.perf_counter()
        g = c.guide()
        g.start_mask()
        g.mask()
        t3 = time.perf_counter()
        g.close()
        print(f"compile {name}: {(t1 - t0) * 1e3:.2f} ms first, {(t2 - t1) * 1e3:.3f} ms cached; "
              f"first mask {(t3 - t2) * 1e3:.2f} ms")
    s = guanaco_rt.Session(model, n_threads=a.threads, adaptive_threads=False)
    prompt = s.chat_prompt("List groceries for a big party as JSON.")
    eog = set(model.tokenizer.eog_ids or ()) | {model.tokenizer.eos_id}
    ban = {int(i): float("-inf") for i in eog if i is not None}
    free, guided = [], []
    last = None
    for _ in range(a.pairs):
        for which in ("free", "json"):
            kw = {"json_schema": LONG} if which == "json" else {"logit_bias": ban}
            s.reset()
            r = s.generate(prompt, max_new_tokens=a.tokens, temperature=0, **kw)
            assert len(r.tokens) == a.tokens, (which, r.finish_reason, len(r.tokens))
            (free if which == "free" else guided).append(r.timings.generate_tokens_per_s)
            if which == "json":
                last = r
    f, g = statistics.median(free), statistics.median(guided)
    print(f"generation, {a.tokens} tokens, median of {a.pairs} alternating pairs: unconstrained {f:.1f} tok/s, "
          f"JSON schema {g:.1f} tok/s, ratio {g / f:.3f}")
    print(f"  per pair: {', '.join(f'{y / x:.3f}' for x, y in zip(free, guided))}")
    # the mask's own cost per step, on the constrained run's tokens
    c, _ = constrain.compile_constraint(model, json_schema=LONG)
    gd = c.guide()
    times = []
    for tok in last.tokens:
        t0 = time.perf_counter()
        gd.start_mask()
        gd.mask()
        times.append((time.perf_counter() - t0) * 1e6)
        gd.consume(tok)
    gd.close()
    times.sort()
    print(f"mask per step (computed alone): median {times[len(times) // 2]:.0f} us, "
          f"p95 {times[int(len(times) * 0.95)]:.0f} us; a token's forward pass: {1e6 / f:.0f} us")
    print(json.dumps({"free_tok_s": f, "json_tok_s": g, "ratio": g / f}))


if __name__ == "__main__":
    main()
