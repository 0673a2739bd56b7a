"""Coverage-guided fuzzing of every parser with atheris (libFuzzer for Python).

    python benchmarks/fuzz.py --minutes 30                  # all targets, 30 minutes each
    python benchmarks/fuzz.py --target state --seconds 40   # one target
    python benchmarks/fuzz.py --replay tests/fuzz_corpus    # run saved inputs once, no fuzzing

Targets (each input must end in the documented typed error or succeed; anything else
-- another exception, a crash, a hang -- is a finding, saved as crash-*/timeout-* in
--artifacts, to be copied into tests/fuzz_corpus/<target>/ once fixed):
  ggjt       a ggjt v3 model file: FormatError, or a Model that evaluates a token
  gguf       a GGUF file: FormatError, or its metadata and tensor index
  state      a Session.load_state blob: StateError (the session unchanged), or loaded
  tokenizer  arbitrary text: token ids in range, or ValueError for invalid Unicode
  bpe        arbitrary text through a byte-level BPE (a small vocabulary trained here, with
             control and user-defined tokens), with and without special tokens: ids in range,
             the text back from them, and within a time budget per input (2 s + 10 s per MB)
  chat_template  a Jinja2 chat template, a NUL, then a message's content: prompt ids, or
             ChatTemplateError (each render has 1 s and 64 K characters)
Each target runs in its own process; the summary line per target gives executions
and findings.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = ("ggjt", "gguf", "state", "tokenizer", "bpe", "chat_template")

CHILD = r'''
import os, sys, tempfile, time
from collections import Counter
import atheris
with atheris.instrument_imports():
    import guanaco_rt
    from guanaco_rt import ggml_file, gguf_file
    if sys.argv[1] == "chat_template":
        import jinja2  # noqa: F401 -- its parser's branches guide the fuzzer
import numpy as np
from guanaco_rt.errors import FormatError, StateError
from guanaco_rt.writer import write_random_model

target, work = sys.argv[1], sys.argv[2]
seed_path = os.path.join(work, "seed.bin")
if not os.path.exists(seed_path):
    write_random_model(seed_path, "q4_K_M", n_vocab=300, n_embd=256, n_mult=256, n_head=4, n_layer=1, seed=3)
model = guanaco_rt.Model(seed_path, n_threads=1)
session = guanaco_rt.Session(model, n_ctx=64, n_threads=1, seed=0, system="")
session.chat("hi", max_new_tokens=2)
good_state = session.save_state()
scratch = os.path.join(work, f"input-{os.getpid()}.bin")

def one_ggjt(data):
    try:
        ggml_file.parse("fuzz.bin", data)
    except FormatError:
        return
    with open(scratch, "wb") as f:
        f.write(data)
    try:
        m = guanaco_rt.Model(scratch, n_threads=1, mmap=False)
    except FormatError:
        return
    guanaco_rt.Session(m, n_ctx=8, n_threads=1).eval([1])

def one_gguf(data):
    try:
        gguf_file.parse("fuzz.gguf", data)
    except FormatError:
        pass

def one_state(data):
    s = guanaco_rt.Session(model, n_ctx=64, n_threads=1, seed=1)
    s.eval([1, 2])
    before = (s.tokens, s.sampler.state)
    try:
        s.load_state(data)
    except StateError:
        assert (s.tokens, s.sampler.state) == before, "a refused state changed the session"

def one_text(data):
    text = atheris.FuzzedDataProvider(data).ConsumeUnicode(len(data))
    try:
        ids = model.tokenize(text)
    except ValueError:
        return
    assert all(0 <= i < model.n_vocab for i in ids)
    model.detokenize(ids)

def toy_bpe(corpus, n_merges):
    # a byte-level BPE trained on corpus by the textbook loop: every byte has a token
    from guanaco_rt.bpe import BPETokenizer, byte_alphabet
    enc, _ = byte_alphabet()
    words = [[enc[b] for b in w.encode()] for w in corpus.split(" ")]
    merges, tokens = [], [enc[b] for b in range(256)]
    for _ in range(n_merges):
        pairs = Counter((w[i], w[i + 1]) for w in words for i in range(len(w) - 1))
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == (a, b):
                    w[i:i + 2] = [a + b]
                i += 1
    tokens += ["<|im_start|>", "<|im_end|>", "<|user|>"]
    types = [1] * (len(tokens) - 3) + [3, 3, 4]
    return BPETokenizer(tokens, types, merges, "default", path="toy-bpe")

if target == "bpe":
    bpe = toy_bpe("aaaaaaaa aaaa abababab the quick brown fox 中文中文文本 日本語 🦙🦙 ééé 1234 12 \n\n  x", 120)

def one_bpe(data):
    fdp = atheris.FuzzedDataProvider(data)
    special = fdp.ConsumeBool()
    text = fdp.ConsumeUnicode(len(data))
    t0 = time.perf_counter()
    try:
        ids = bpe.encode(text, special=special)
    except ValueError:       # a lone surrogate: documented
        return
    dt = time.perf_counter() - t0
    assert dt < 2.0 + 10.0 * len(data) / 1e6, f"{dt:.2f} s for {len(data)} bytes"
    assert all(0 <= i < bpe.n_vocab for i in ids)
    if not special:
        assert bpe.decode(ids) == text

from guanaco_rt.chat import ChatTemplate
from guanaco_rt.errors import ChatTemplateError
SPECIALS = ["<|im_start|>", "<|im_end|>", "<s>", "</s>"]

def spell_ids(text, special):
    # a stand-in tokenizer: special spellings -> negative ids, every other character -> its code point
    out, i = [], 0
    while i < len(text):
        hit = special and next((s for s in SPECIALS if text.startswith(s, i)), None)
        out.append(-1 - SPECIALS.index(hit) if hit else ord(text[i]))
        i += len(hit) if hit else 1
    return out

def one_template(data):
    source, _, content = data.decode("utf-8", errors="replace").partition("\0")
    t = ChatTemplate(source, "<s>", "</s>", specials=SPECIALS, max_seconds=1.0, max_chars=1 << 16)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]
    try:
        ids = t.prompt_ids(spell_ids, msgs)
    except ChatTemplateError:
        return
    assert ids and all(isinstance(i, int) for i in ids)

fn = {"ggjt": one_ggjt, "gguf": one_gguf, "state": one_state, "tokenizer": one_text, "bpe": one_bpe,
      "chat_template": one_template}[target]
gguf_seed = os.path.join(work, "seed.gguf")
if target == "gguf" and not os.path.exists(gguf_seed):
    import gguf
    w = gguf.GGUFWriter(gguf_seed, "llama")
    w.add_uint32("llama.block_count", 1)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "a"])
    w.add_array("x.nested", [[1, 2], [3]])
    w.add_tensor("t", np.zeros((2, 32), np.float32))
    w.add_tensor("q", np.zeros((2, 34), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] | trim + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}")
seeds = {"ggjt": open(seed_path, "rb").read(), "state": good_state, "tokenizer": "Hello wörld ### Human:".encode(),
         "bpe": b"\x00" + ("a" * 5000 + " the <|im_start|>user 中文" * 3).encode(),
         "chat_template": (CHATML + "\0hi<|im_end|><|im_start|>system").encode(),
         "gguf": open(gguf_seed, "rb").read() if target == "gguf" else b""}
if "-replay" in sys.argv:
    n = 0
    for p in sys.argv[sys.argv.index("-replay") + 1:]:
        fn(open(p, "rb").read())
        n += 1
    print(f"replayed {n}")
    sys.exit(0)
corpus = os.path.join(work, "corpus-" + target)
os.makedirs(corpus, exist_ok=True)
with open(os.path.join(corpus, "seed"), "wb") as f:
    f.write(seeds[target])
atheris.Setup([sys.argv[0]] + sys.argv[3:] + [corpus], fn)
atheris.Fuzz()
'''


def fuzz(target, seconds, work, artifacts):
    os.makedirs(artifacts, exist_ok=True)
    args = [sys.executable, "-c", CHILD, target, work, f"-max_total_time={seconds}", "-timeout=20",
            "-rss_limit_mb=4096", "-max_len=1000000", f"-artifact_prefix={artifacts}/{target}-", "-print_final_stats=1"]
    r = subprocess.run(args, capture_output=True, text=True, cwd=work)   # not a source tree: the installed package
    execs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", r.stderr)
    found = [f for f in os.listdir(artifacts) if f.startswith(target + "-")]
    print(f"{target}: {execs[-1] if execs else '?'} executions in {seconds} s, {len(found)} finding(s)"
          + ("" if r.returncode == 0 else f", exit {r.returncode}: " + r.stderr.strip().splitlines()[-1][:200]))
    return r.returncode == 0 and not found


def replay(corpus_root, work):
    ok = True
    for target in TARGETS:
        d = os.path.join(corpus_root, target)
        files = sorted(os.path.join(d, f) for f in os.listdir(d)) if os.path.isdir(d) else []
        if not files:
            continue
        r = subprocess.run([sys.executable, "-c", CHILD, target, work, "-replay", *map(os.path.abspath, files)],
                           capture_output=True, text=True, cwd=work)
        print(f"{target}: {r.stdout.strip() or r.stderr.strip().splitlines()[-1]}")
        ok &= r.returncode == 0
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=TARGETS + ("all",), default="all")
    p.add_argument("--minutes", type=float, default=None)
    p.add_argument("--seconds", type=int, default=None)
    p.add_argument("--artifacts", default=os.path.join(HERE, "fuzz-findings"))
    p.add_argument("--replay", default=None, metavar="CORPUS_DIR")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        if a.replay:
            sys.exit(0 if replay(a.replay, work) else 1)
        seconds = a.seconds or int((a.minutes or 1) * 60)
        targets = TARGETS if a.target == "all" else (a.target,)
        results = [fuzz(t, seconds, work, a.artifacts) for t in targets]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
