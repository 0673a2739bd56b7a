"""llguidance against xgrammar as the constrained-decoding engine, on our two vocabularies
(the LLaMA SentencePiece one, 32000 tokens; the demo model's byte-level BPE one, 49152).

xgrammar needs torch, transformers and triton, so run this from a venv of its own, with
the worktree on the path (it imports only our GGUF reader and tokenizers):

    python3.11 -m venv /tmp/xg && /tmp/xg/bin/pip install torch==2.13.0 xgrammar==0.2.9 \\
        llguidance==1.9.1 numpy sentencepiece jsonschema regex
    PYTHONPATH=. /tmp/xg/bin/python benchmarks/constraint_engines.py \\
        --jsonschemabench /path/to/jsonschemabench        # optional: the coverage pool

Per engine and vocabulary it measures: the tokenizer set-up; the compile time of each
schema of tests/data/schemas/suite.jsonl and of three typical small schemas (xgrammar's
compile cache off, one compile thread each, the median of --repeats); the time to the
first mask; the per-token mask time along a walk both engines allow (each step computes
both masks on the same state, in alternating order, and takes a token their masks share);
the validity (jsonschema) of instances each engine yields alone on a seeded random walk;
and, in a child process per engine, the RSS of import, set-up and compiled grammars.
Both engines get the same JSON format: no whitespace, separators "," and ":".
"""
import argparse
import json
import mmap
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from importlib import metadata

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import make_schema_suite as suite_tool  # noqa: E402  (tools/ is no package)

SUITE = os.path.join(ROOT, "tests", "data", "schemas", "suite.jsonl")
SPM_VOCAB = os.path.join(ROOT, "..", "shared", "data", "ggml-vocab-llama-spm.gguf")
CONTROL, USER_DEFINED, UNKNOWN, UNUSED = 3, 4, 2, 5

TYPICAL = {
    "person": {"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string", "format": "email"}}, "required": ["name", "age"]},
    "weather-call": {"type": "object", "properties": {
        "location": {"type": "string", "description": "city and country"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location"]},
    "todo-list": {"type": "object", "properties": {
        "items": {"type": "array", "minItems": 1, "maxItems": 5, "items": {"type": "object", "properties": {
            "id": {"type": "integer"}, "title": {"type": "string", "maxLength": 40},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}}, "required": ["id", "title"]}},
        "done": {"type": "boolean"}}, "required": ["items", "done"]},
}


# ---- vocabularies --------------------------------------------------------------------
class Vocab:
    """One vocabulary as both engines need it: every token's bytes (ours), its GGUF spelling
    and type, the end-of-generation ids, and our tokenizer."""

    def __init__(self, label, path):
        from guanaco_rt import gguf_file, gguf_model
        from guanaco_rt.model import _gguf_tokenizer
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        g = gguf_file.parse(path, mm)
        v = gguf_model._vocab(g, len(g.metadata["tokenizer.ggml.tokens"]))
        self.tok = _gguf_tokenizer(v, path)
        self.load_s = time.perf_counter() - t0
        # the engines need text -> tokens whose bytes are that text: no SentencePiece dummy-prefix space
        self.tok_exact = _gguf_tokenizer(dict(v, add_space_prefix=False), path) if v["add_space_prefix"] else self.tok
        self.label, self.path, self.kind = label, path, v["model"]          # "llama" (SPM) or "gpt2"
        self.spellings, self.types, self.eog, self.bos = v["tokens"], v["types"], list(v["eog"]), v["bos"]
        self.n_vocab = len(self.spellings)
        self.bytes = [self.tok.token_bytes(i) for i in range(self.n_vocab)]

    def special(self, i):
        return self.types[i] in (CONTROL, USER_DEFINED) and self.spellings[i].startswith("<")


def llg_tokenizer(v):
    """llguidance.LLTokenizer (tools/make_schema_suite.lltokenizer: special tokens as b"\\xff" +
    their spelling, every EOG id an EOS, text encoded without the dummy-prefix space)."""
    return suite_tool.lltokenizer(v.spellings, v.types, v.bytes, v.eog, v.bos,
                                  lambda s: v.tok_exact.encode(s, bos=False))


def xgr_tokenizer(v):
    """xgrammar.TokenizerInfo from the GGUF spellings (BYTE_FALLBACK: "▁the", "<0x0A>";
    BYTE_LEVEL: "Ġthe"); control, unused and unknown tokens as "" so that xgrammar takes them
    for special tokens and never allows them (it would read "<|im_start|>" as text)."""
    import xgrammar as xgr
    spm = v.kind == "llama"
    enc = ["" if ty in (CONTROL, UNUSED, UNKNOWN) else s for s, ty in zip(v.spellings, v.types)]
    return xgr.TokenizerInfo(enc, xgr.VocabType.BYTE_FALLBACK if spm else xgr.VocabType.BYTE_LEVEL,
                             stop_token_ids=v.eog, add_prefix_space=spm)


# ---- the two engines behind one small interface --------------------------------------
class LLG:
    name = "llguidance"

    def __init__(self, v):
        import llguidance
        self.llg = llguidance
        t0 = time.perf_counter()
        self.tok = llg_tokenizer(v)
        self.setup_s = time.perf_counter() - t0
        self.options = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
        self.words = (v.n_vocab + 31) // 32

    def compile(self, schema):
        """-> (a matcher, seconds, warnings), or raises RuntimeError with the engine's message."""
        t0 = time.perf_counter()
        try:
            grammar = self.llg.LLMatcher.grammar_from_json_schema(schema, overrides=self.options)
        except ValueError as e:
            raise RuntimeError(str(e)) from None
        m = self.llg.LLMatcher(self.tok, grammar, log_level=0)
        dt = time.perf_counter() - t0
        if m.is_error():
            raise RuntimeError(m.get_error())
        return m, dt, m.get_grammar_warnings()

    def new_mask(self):
        return np.zeros(self.words, np.int32)

    def fill(self, m, mask):
        m.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)

    def accept(self, m, t):
        return m.consume_token(t)


class XGR:
    name = "xgrammar"

    def __init__(self, v):
        import xgrammar as xgr
        self.xgr = xgr
        t0 = time.perf_counter()
        info = xgr_tokenizer(v)
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.setup_s = time.perf_counter() - t0
        self.n_vocab = v.n_vocab

    def compile(self, schema):
        """As LLG.compile; the warnings are what xgrammar's C++ side prints to stderr (the
        keywords it ignores), caught at the file descriptor."""
        text = json.dumps(schema)
        with tempfile.TemporaryFile() as cap:
            saved = os.dup(2)
            sys.stderr.flush()
            os.dup2(cap.fileno(), 2)
            try:
                t0 = time.perf_counter()
                g = self.compiler.compile_json_schema(text, any_whitespace=False, separators=(",", ":"))
                m = self.xgr.GrammarMatcher(g)
                dt = time.perf_counter() - t0
            except Exception as e:          # xgrammar raises RuntimeError / InvalidJSONError / ...
                raise RuntimeError(f"{type(e).__name__}: {e}") from None
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            cap.seek(0)
            warnings = [line.split("Warning: ", 1)[1] for line in cap.read().decode(errors="replace").splitlines()
                        if "Warning: " in line]
        return m, dt, warnings

    def new_mask(self):
        return self.xgr.allocate_token_bitmask(1, self.n_vocab)

    def fill(self, m, mask):
        m.fill_next_token_bitmask(mask)

    def accept(self, m, t):
        return m.accept_token(t)


def as_words(engine, mask):
    return mask if isinstance(mask, np.ndarray) else mask.numpy()[0]


def allowed(words, n_vocab):
    return np.flatnonzero(np.unpackbits(words.view(np.uint8), bitorder="little")[:n_vocab])


# ---- measurements --------------------------------------------------------------------
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def compile_times(engines, schemas, repeats):
    """Per schema and engine: the median compile time over ``repeats`` (engines alternate
    which goes first), the first mask's time, and the error of those that fail."""
    out = {e.name: {"ms": {}, "first_mask_ms": {}, "errors": {}, "warnings": {}} for e in engines}
    for k, (name, schema) in enumerate(schemas):
        for r in range(repeats):
            for e in (engines if (k + r) % 2 == 0 else engines[::-1]):
                if name in out[e.name]["errors"]:
                    continue
                try:
                    m, dt, warnings = e.compile(schema)
                except RuntimeError as err:
                    out[e.name]["errors"][name] = str(err)
                    continue
                if warnings:
                    out[e.name]["warnings"][name] = warnings
                mask = e.new_mask()
                t1 = time.perf_counter()
                e.fill(m, mask)
                t2 = time.perf_counter()
                out[e.name]["ms"].setdefault(name, []).append(dt * 1e3)
                out[e.name]["first_mask_ms"].setdefault(name, []).append((t2 - t1) * 1e3)
    for e in engines:
        for key in ("ms", "first_mask_ms"):
            out[e.name][key] = {n: statistics.median(ts) for n, ts in out[e.name][key].items()}
    return out


def choose(rng, ids, v, eos):
    """A seeded walk that leans to closing: half the time a token with a quote, bracket,
    brace or comma in it (strings and arrays end), a fifth of the time one with @ . - : /
    (e-mails, dates, URIs end), else any allowed token."""
    if eos in ids:
        return eos
    r = rng.random()
    for lo, hi, chars in ((0.0, 0.5, b'"]},'), (0.5, 0.7, b"@.-:/")):
        if lo <= r < hi:
            some = [t for t in ids.tolist() if any(c in v.bytes[t] for c in chars)]
            if some:
                return rng.choice(some)
    return int(ids[rng.randrange(len(ids))])


def joint_walk(engines, v, schema, seed, cap):
    """Walk a path both engines allow -> (per-engine mask µs per step, consume µs, text,
    why it stopped)."""
    ms = [e.compile(schema)[0] for e in engines]
    masks = [e.new_mask() for e in engines]
    rng = random.Random(seed)
    fill_us, take_us = [[] for _ in engines], [[] for _ in engines]
    out = []
    for step in range(cap):
        order = range(len(engines)) if step % 2 == 0 else range(len(engines) - 1, -1, -1)
        for i in order:
            t0 = time.perf_counter_ns()
            engines[i].fill(ms[i], masks[i])
            fill_us[i].append((time.perf_counter_ns() - t0) / 1e3)
        both = as_words(engines[0], masks[0]).copy()
        for e, m in zip(engines[1:], masks[1:]):
            both &= as_words(e, m)
        ids = allowed(both, v.n_vocab)
        if len(ids) == 0:
            return fill_us, take_us, b"".join(out), "no common token"
        t = choose(rng, ids, v, v.eog[0])
        if t in v.eog:
            return fill_us, take_us, b"".join(out), "end"
        for i in order:
            t0 = time.perf_counter_ns()
            ok = engines[i].accept(ms[i], t)
            take_us[i].append((time.perf_counter_ns() - t0) / 1e3)
            if not ok:
                return fill_us, take_us, b"".join(out), f"{engines[i].name} refused a token"
        out.append(v.bytes[t])
    return fill_us, take_us, b"".join(out), "cap"


def solo_walk(e, v, schema, seed, cap):
    """The text a seeded random walk under engine ``e`` alone yields, or None at the cap."""
    m = e.compile(schema)[0]
    mask = e.new_mask()
    rng = random.Random(seed)
    out = []
    for _ in range(cap):
        e.fill(m, mask)
        ids = allowed(as_words(e, mask), v.n_vocab)
        if len(ids) == 0:
            return None
        t = choose(rng, ids, v, v.eog[0])
        if t in v.eog:
            return b"".join(out)
        if not e.accept(m, t):
            return None
        out.append(v.bytes[t])
    return None


def validates(schema, text):
    import jsonschema
    try:
        inst = json.loads(text.decode("utf-8"))
    except ValueError:
        return False, "not JSON"
    cls = jsonschema.validators.validator_for(schema)
    errs = list(cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(inst))
    return (not errs), (errs[0].message[:100] if errs else "")


# ---- memory, in a child per engine ---------------------------------------------------
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(engine, label, path, suite_path):
    base = rss_mb()
    t0 = time.perf_counter()
    __import__("llguidance" if engine == "llguidance" else "xgrammar")
    imp_s = time.perf_counter() - t0
    after_import = rss_mb()
    v = Vocab(label, path)
    before = rss_mb()
    e = (LLG if engine == "llguidance" else XGR)(v)
    after_setup = rss_mb()
    kept = []
    for name, schema in load_suite(suite_path):
        try:
            kept.append(e.compile(schema)[0])
        except RuntimeError:
            pass
    after = rss_mb()
    print(json.dumps({"import_s": imp_s, "import_mb": after_import - base, "setup_mb": after_setup - before,
                      "grammars": len(kept), "grammars_mb": after - after_setup, "peak_mb": after}))


def memory(engine, v, suite_path):
    r = subprocess.run([sys.executable, __file__, "--memory-child", engine, v.label, v.path, "--suite", suite_path],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- install weight ------------------------------------------------------------------
def closure(dist_name):
    """The distribution and every requirement it pulls in (no extras), as installed here."""
    seen, todo = {}, [dist_name]
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            d = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = d
        for req in d.requires or ():
            if "extra ==" in req:
                continue
            head = req.split(";")[0].strip()
            for sep in "<>=!~[( ":
                head = head.split(sep)[0]
            todo.append(head)
    return seen


def installed_mb(d):
    total = 0
    for f in d.files or ():
        p = d.locate_file(f)
        try:
            total += os.path.getsize(p)
        except OSError:
            pass
    return total / 2**20


# ---- the report ----------------------------------------------------------------------
def load_suite(path):
    with open(path, encoding="utf-8") as f:
        return [(f"{r['source'].split('/')[-1]}/{r['name']}", r["schema"]) for r in map(json.loads, f)]


def cpu_flags():
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    keep = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c", "sse4_2", "bmi2"))
    return model, keep


def pool_schemas(repo, per_subset):
    """The coverage pool: the suite's rule without the llguidance filter, per_subset per subset."""
    import jsonschema
    pool = []
    for subset in suite_tool.SUBSETS:
        files = suite_tool.read_subset(repo, subset)
        keyed = sorted((suite_tool.hashlib.sha256(f"{subset}/{n}".encode()).hexdigest(), n, raw) for n, raw in files)
        n = 0
        for _, name, raw in keyed:
            if n >= per_subset:
                break
            try:
                s = json.loads(raw)
                if not isinstance(s, dict) or len(json.dumps(s, separators=(",", ":")).encode()) >= \
                        suite_tool.MAX_BYTES or suite_tool.has_remote_ref(s):
                    continue
                jsonschema.validators.validator_for(s).check_schema(s)
            except (ValueError, jsonschema.SchemaError):
                continue
            pool.append((f"{subset}/{name}", s))
            n += 1
    return pool


def short(msg):
    msg = msg.replace("\n", " ")
    return msg[:110]


def stats_row(xs):
    return f"{statistics.median(xs):.2f} / {pct(xs, 95):.2f} / {max(xs):.2f}" if xs else "-"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default=SUITE)
    ap.add_argument("--llama-vocab", default=SPM_VOCAB)
    ap.add_argument("--demo", default=None, help="the demo model (default: guanaco_rt's cache)")
    ap.add_argument("--repeats", type=int, default=3, help="compiles per schema and engine (median)")
    ap.add_argument("--cap", type=int, default=200, help="tokens per walk at most")
    ap.add_argument("--jsonschemabench", help="jsonschemabench git dir: compile coverage on a wider pool")
    ap.add_argument("--pool-per-subset", type=int, default=40)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--limit", type=int, default=None, help="the first LIMIT suite schemas only")
    ap.add_argument("--memory-child", nargs=3, metavar=("ENGINE", "LABEL", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(*args.memory_child, args.suite)
        return 0

    from guanaco_rt.demo import demo_model_path
    model, flags = cpu_flags()
    print(f"CPU: {model}; {os.cpu_count()} cores; flags: {' '.join(flags)}")
    print(f"Python {platform.python_version()}; llguidance {metadata.version('llguidance')}, "
          f"xgrammar {metadata.version('xgrammar')}; the machine is shared, figures are one run")
    suite = load_suite(args.suite)[:args.limit]
    typical = list(TYPICAL.items())
    cases = [(f"typical/{n}", s) for n, s in typical] + suite
    vocabs = [Vocab("llama-spm-32000", os.path.abspath(args.llama_vocab)),
              Vocab("smollm2-bpe-49152", args.demo or demo_model_path(fetch=False))]
    results = {}
    for v in vocabs:
        print(f"\n## {v.label} ({v.n_vocab} tokens, EOG {v.eog}); our tokenizer loads in {v.load_s * 1e3:.0f} ms")
        # set-up twice, alternating, keep the second (warm imports)
        engines = None
        for order in ((LLG, XGR), (XGR, LLG)):
            built = {cls.name: cls(v) for cls in order}
        engines = [built["llguidance"], built["xgrammar"]]
        comp = compile_times(engines, cases, args.repeats)
        walk = {e.name: {"fill": [], "take": []} for e in engines}
        ends, valid_joint, odd = Counter(), Counter(), []
        for k, (name, schema) in enumerate(cases):
            if any(name in comp[e.name]["errors"] for e in engines):
                continue
            fill, take, text, why = joint_walk(engines, v, schema, seed=k, cap=args.cap)
            ends[why] += 1
            if why not in ("end", "cap"):
                odd.append(f"{name}: {why} after {len(take[0])} tokens, {text[-40:]!r}")
            for e, f_, t_ in zip(engines, fill, take):
                walk[e.name]["fill"] += f_
                walk[e.name]["take"] += t_
            if why == "end":
                valid_joint[validates(schema, text)[0]] += 1
        solo = {}
        for e in engines:
            c, bad = Counter(), []
            for k, (name, schema) in enumerate(cases):
                if name in comp[e.name]["errors"]:
                    continue
                text = solo_walk(e, v, schema, seed=1000 + k, cap=args.cap)
                if text is None:
                    c["no end within the cap"] += 1
                    continue
                ok, why = validates(schema, text)
                c["valid" if ok else "invalid"] += 1
                if not ok:
                    bad.append(f"{name}: {why}")
            solo[e.name] = (c, bad)
        mem = {} if args.no_memory else {e.name: memory(e.name, v, args.suite) for e in engines}
        results[v.label] = (engines, comp, walk, ends, valid_joint, solo, mem)

        print("\n| engine | set-up ms | suite compiled | compile ms median / p95 / max | first mask ms median "
              "| typical compile ms (person, weather-call, todo-list) | mask µs/token median / p95 / max "
              "| consume µs/token median |")
        print("|---|---|---|---|---|---|---|---|")
        for e in engines:
            c = comp[e.name]
            suite_ms = [c["ms"][n] for n, _ in suite if n in c["ms"]]
            first = [c["first_mask_ms"][n] for n, _ in suite if n in c["first_mask_ms"]]
            typ = ", ".join(f"{c['ms'].get('typical/' + n, float('nan')):.2f}" for n, _ in typical)
            w = walk[e.name]
            print(f"| {e.name} | {e.setup_s * 1e3:.0f} | {len(suite_ms)}/{len(suite)} | {stats_row(suite_ms)} | "
                  f"{statistics.median(first):.3f} | {typ} | {statistics.median(w['fill']):.1f} / "
                  f"{pct(w['fill'], 95):.1f} / {max(w['fill']):.0f} | {statistics.median(w['take']):.1f} |")
        n_steps = len(walk["llguidance"]["fill"])
        print(f"\njoint walks: {dict(ends)}, {n_steps} mask steps; instances that validate: {dict(valid_joint)}"
              + (f"; {'; '.join(odd)}" if odd else ""))
        for e in engines:
            c, bad = solo[e.name]
            print(f"{e.name} alone, seeded random walks: {dict(c)}" + (f"; invalid: {bad[:6]}" if bad else ""))
            errs, warns = comp[e.name]["errors"], comp[e.name]["warnings"]
            if errs:
                print(f"{e.name} cannot compile {len(errs)}: " + "; ".join(f"{n}: {short(m)}" for n, m in errs.items()))
            if warns:
                kinds = Counter(short(w)[:80] for ws in warns.values() for w in set(ws))
                print(f"{e.name} compiles {len(warns)} with warnings (keywords it ignores): {dict(kinds)}")
        if mem:
            print("\n| engine | import s | import RSS MB | set-up RSS MB | suite grammars kept | their RSS MB |")
            print("|---|---|---|---|---|---|")
            for name, m in mem.items():
                if "error" in m:
                    print(f"| {name} | error: {m['error']} |")
                else:
                    print(f"| {name} | {m['import_s']:.2f} | {m['import_mb']:.0f} | {m['setup_mb']:.0f} | "
                          f"{m['grammars']} | {m['grammars_mb']:.0f} |")

    if args.jsonschemabench:
        repo = args.jsonschemabench
        if not os.path.isfile(os.path.join(repo, "HEAD")):
            repo = os.path.join(repo, ".git")
        pool = pool_schemas(repo, args.pool_per_subset)
        v = vocabs[1]
        engines = results[v.label][0]
        print(f"\n## Coverage on a wider pool: {len(pool)} JSONSchemaBench schemas ({args.pool_per_subset} per subset "
              f"of {', '.join(suite_tool.SUBSETS)}, the suite's rule without the llguidance filter), {v.label}")
        comp = compile_times(engines, pool, 1)
        print("\n| engine | compiled | compile ms median / p95 / max |")
        print("|---|---|---|")
        for e in engines:
            ms = list(comp[e.name]["ms"].values())
            print(f"| {e.name} | {len(ms)}/{len(pool)} | {stats_row(ms)} |")
        for e in engines:
            errs, warns = comp[e.name]["errors"], comp[e.name]["warnings"]
            kinds = Counter(short(m)[:70] for m in errs.values())
            print(f"\n{e.name} fails on {len(errs)}:")
            for m, n in kinds.most_common(12):
                print(f"  {n:3d}  {m}")
            kinds = Counter(short(w)[:80] for ws in warns.values() for w in set(ws))
            print(f"{e.name} compiles {len(warns)} with warnings (ignored keywords):")
            for m, n in kinds.most_common(12):
                print(f"  {n:3d}  {m}")
        only = {e.name: set(comp[e.name]["ms"]) for e in engines}
        print(f"\ncompiled by llguidance only: {len(only['llguidance'] - only['xgrammar'])}, "
              f"by xgrammar only: {len(only['xgrammar'] - only['llguidance'])}")

    print("\n## Install weight (this venv; the package and every requirement it pulls in)")
    print("\n| package | requirements | own MB | with requirements MB |")
    print("|---|---|---|---|")
    for name in ("llguidance", "xgrammar"):
        c = closure(name)
        own = installed_mb(c[name])
        deps = sorted(k for k in c if k != name)
        print(f"| {name} | {', '.join(deps) or 'none'} | {own:.0f} | {sum(installed_mb(d) for d in c.values()):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
