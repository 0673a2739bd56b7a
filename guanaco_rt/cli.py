"""The command line: guanaco-rt info | run | generate | chat | random-model | config.

Owns: argument parsing and printing. All model work goes through Model/Session.
"""
import argparse
import json
import logging
import math
import os
import sys

from .errors import GuanacoError

MAX_CTX = 1 << 20
I32 = 2**31 - 1


def _int(lo, hi):
    """An argparse type: an int in [lo, hi]."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is outside [{lo}, {hi}]")
        return v
    return parse


def _float(lo, hi, hi_open=False):
    """An argparse type: a finite float in [lo, hi] (or [lo, hi) with hi_open)."""
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v) or v < lo or v > hi or (hi_open and v == hi):
            raise argparse.ArgumentTypeError(f"{text} is outside [{lo}, {hi}{')' if hi_open else ']'}")
        return v
    return parse


def _bias(text):
    """--logit-bias ID=BIAS: ID an int, BIAS a finite float or -inf."""
    k, sep, v = text.partition("=")
    try:
        tok, bias = int(k), float(v)
    except ValueError:
        tok = bias = None
    if not sep or tok is None or math.isnan(bias) or bias == math.inf or tok < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ID=BIAS, ID a token id >= 0, BIAS a number or -inf")
    return tok, bias


def _sampling_args(p):
    # the library's own defaults, so that a command gives what the same call gives
    from .sampling import DEFAULTS as D
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", "--temp", type=_float(0, 1e6), default=D["temperature"],
                   help="0 = greedy (default %(default)s)")
    g.add_argument("--top-k", type=_int(-1, I32), default=D["top_k"], help="<= 0 disables (default %(default)s)")
    g.add_argument("--top-p", type=_float(0, 1), default=D["top_p"], help="1 disables (default %(default)s)")
    g.add_argument("--min-p", type=_float(0, 1), default=D["min_p"], help="0 disables (default %(default)s)")
    g.add_argument("--typical-p", type=_float(0, 1), default=D["typical_p"], help="1 disables (default %(default)s)")
    g.add_argument("--repeat-penalty", type=_float(1e-6, 1e6), default=D["repetition_penalty"],
                   help="divide the logits of recent tokens by this; 1 disables (default %(default)s)")
    g.add_argument("--repeat-last-n", type=_int(0, I32), default=D["repeat_last_n"],
                   help="window of the penalties (default %(default)s)")
    g.add_argument("--frequency-penalty", type=_float(-1e6, 1e6), default=D["frequency_penalty"],
                   help="subtract this times a token's count in the window (OpenAI's; default %(default)s)")
    g.add_argument("--presence-penalty", type=_float(-1e6, 1e6), default=D["presence_penalty"],
                   help="subtract this from every token in the window (OpenAI's; default %(default)s)")
    g.add_argument("--dry-multiplier", type=_float(0, 1e6), default=D["dry_multiplier"],
                   help="DRY: penalize a token that would extend a repeated sequence by this times "
                        "base^(length - allowed length); 0 disables (default %(default)s)")
    g.add_argument("--dry-base", type=_float(1, 1e6), default=D["dry_base"], help="DRY (default %(default)s)")
    g.add_argument("--dry-allowed-length", type=_int(0, I32), default=D["dry_allowed_length"],
                   help="DRY: repeats this long are free (default %(default)s)")
    g.add_argument("--dry-penalty-last-n", type=_int(-1, I32), default=D["dry_penalty_last_n"],
                   help="DRY's window in tokens; -1: the whole context (default %(default)s)")
    g.add_argument("--dry-sequence-breaker", action="append", default=None, metavar="TEXT",
                   help="DRY: a token holding TEXT ends any repeat (repeatable; replaces the defaults "
                        "\\n : \" *; 'none' for none)")
    g.add_argument("--logit-bias", action="append", type=_bias, default=[], metavar="ID=BIAS",
                   help="add BIAS to token ID's logit (repeatable; -inf bans it)")
    g.add_argument("--seed", type=_int(0, 2**64 - 1), default=None, help="RNG seed (default: random)")


def _lora_spec(text):
    """--lora FILE[:SCALE] -> (FILE, SCALE)"""
    from .lora import parse_spec
    path, scale = parse_spec(text)
    if not math.isfinite(scale):
        raise argparse.ArgumentTypeError(f"{text!r}: the scale must be a finite number")
    return path, scale


def _session_args(p):
    from .model import MAX_THREADS
    from .sampling import CLI_CONTEXT_POLICY
    p.add_argument("model", nargs="?", default=None,
                   help="a ggjt v3 (.ggmlv3.*.bin) or GGUF model file (default: the demo model, fetched on first use)")
    p.add_argument("-c", "--ctx-size", type=_int(2, MAX_CTX), default=2048,
                   help="context length n_ctx (default %(default)s)")
    p.add_argument("-b", "--batch-size", type=_int(1, MAX_CTX), default=64, help="prompt batch (default %(default)s)")
    p.add_argument("-t", "--threads", type=_int(1, MAX_THREADS), default=None,
                   help="threads (default: GUANACO_RT_THREADS, else the physical cores this process may use, "
                        "within its cgroup quota); on a busy machine fewer threads than cores can be faster")
    p.add_argument("--kv-f16", action="store_true", help="keep the KV cache in f16 (half the memory)")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]", type=_lora_spec,
                   help="a LoRA adapter applied at run time (GGUF of llama.cpp's convert_lora_to_gguf.py, or a "
                        "2023 ggla file), times SCALE (default 1); repeatable")
    p.add_argument("--lora-merge", action="append", default=[], metavar="FILE[:SCALE]", type=_lora_spec,
                   help="a LoRA adapter merged into the weights at load, requantized to their types (no run-time "
                        "cost, but the rounding of a 4-bit type can undo much of a small adapter); repeatable")
    p.add_argument("--context-policy", choices=["error", "shift"], default=CLI_CONTEXT_POLICY,
                   help="when the context fills: stop with an error, or drop the oldest tokens (chat: the "
                        "oldest turns) and go on (default %(default)s; the library's Session default is error)")


def _prompt_args(p, n_predict):
    _session_args(p)
    p.add_argument("-p", "--prompt", required=True, help="the prompt text")
    p.add_argument("-n", "--n-predict", type=_int(0, MAX_CTX), default=n_predict,
                   help="tokens to generate (default %(default)s)")
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--no-stats", action="store_true", help="do not print timings to stderr")
    p.add_argument("--chat", action="store_true",
                   help="the prompt is one user message in the model's chat format (Guanaco's, or the file's template)")
    p.add_argument("--system", default=None, help="with --chat: a system message")
    g = p.add_argument_group("constraint (at most one)")
    g.add_argument("--json-schema", metavar="FILE", default=None,
                   help="the output is JSON that fits this JSON Schema file ('-': any JSON object)")
    g.add_argument("--grammar", metavar="FILE", default=None,
                   help="the output fits this grammar file (llama.cpp's GBNF, or Lark)")
    g.add_argument("--regex", default=None, help="the output matches this regular expression")
    g.add_argument("--choice", action="append", default=None, metavar="TEXT",
                   help="the output is one of these strings (repeatable)")


def _read_text(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise GuanacoError(f"{what} {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _constraint_kw(a):
    """The generation's constraint keywords from --json-schema/--grammar/--regex/--choice."""
    kw = {}
    if getattr(a, "json_schema", None) is not None:
        kw["json_schema"] = {"type": "object"} if a.json_schema == "-" else _read_text(a.json_schema, "--json-schema")
    if getattr(a, "grammar", None) is not None:
        kw["grammar"] = _read_text(a.grammar, "--grammar")
    if getattr(a, "regex", None) is not None:
        kw["regex"] = a.regex
    if getattr(a, "choice", None):
        kw["choices"] = a.choice
    return kw


def _params(a):
    from .sampling import SamplingParams
    bias = dict(a.logit_bias)
    return SamplingParams(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                          typical_p=a.typical_p, repetition_penalty=a.repeat_penalty,
                          repeat_last_n=a.repeat_last_n, frequency_penalty=a.frequency_penalty,
                          presence_penalty=a.presence_penalty, logit_bias=bias, dry_multiplier=a.dry_multiplier,
                          dry_base=a.dry_base, dry_allowed_length=a.dry_allowed_length,
                          dry_penalty_last_n=a.dry_penalty_last_n, dry_sequence_breakers=_breakers(a))


def _breakers(a):
    from .sampling import DEFAULTS as D
    if a.dry_sequence_breaker is None:
        return D["dry_sequence_breakers"]
    if a.dry_sequence_breaker == ["none"]:
        return ()
    return tuple(b.encode("utf-8").decode("unicode_escape") if "\\" in b else b for b in a.dry_sequence_breaker)


def _model_path(a):
    if a.model is not None:
        return a.model
    from .demo import demo_model_path
    try:
        return demo_model_path(fetch=False)
    except GuanacoError:
        print("guanaco-rt: fetching the demo model (SmolLM2-135M-Instruct, 98 MB) ...", file=sys.stderr)
        return _pull_demo()


def _open(a):
    from . import Model, Session
    model = Model(_model_path(a), n_threads=a.threads, lora=a.lora_merge)
    session = Session(model, n_ctx=a.ctx_size, n_batch=a.batch_size, kv_f16=a.kv_f16,
                      seed=getattr(a, "seed", None), context_policy=a.context_policy,
                      system=getattr(a, "system", None), lora=a.lora)
    session.prompt_progress = _prompt_feedback()
    return model, session


def _short(v, limit=8):
    if isinstance(v, list):
        head = ", ".join(repr(x) for x in v[:limit])
        return f"[{head}{', ...' if len(v) > limit else ''}] ({len(v)} items)"
    text = repr(v)
    return text if len(text) <= 100 else text[:97] + "..."


def cmd_info_gguf(a, buf):
    from . import gguf_file
    g = gguf_file.parse(a.model, buf)
    if a.json:
        tensors = [{"name": t.name, "shape": list(t.shape), "type": t.type_name, "offset": t.offset,
                    "nbytes": t.nbytes} for t in g.tensors.values()]
        meta = {k: v for k, v in g.metadata.items()}
        print(json.dumps({"path": g.path, "format": f"GGUF v{g.version}", "metadata": meta, "tensors": tensors},
                         indent=1))
        return 0
    print(f"file:    {g.path} ({g.size / 1e9:.3f} GB, GGUF v{g.version}, alignment {g.alignment})")
    from .gguf_model import ARCHS
    arch = g.metadata.get("general.architecture")
    print(f"family:  {arch} ({'runs' if arch in ARCHS else 'not supported'}; the families this runtime runs: "
          f"{', '.join(ARCHS)})")
    from .ggml_types import GGML_TYPES, WEIGHT_TYPES
    counts = {}
    for t in g.tensors.values():
        counts[t.type_name] = counts.get(t.type_name, 0) + 1
    print(f"types:   {', '.join(f'{n} x{c}' for n, c in counts.items())} (the types this runtime reads: "
          f"{', '.join(GGML_TYPES[t].name for t in WEIGHT_TYPES)})")
    print("metadata:")
    for k, v in g.metadata.items():
        print(f"  {k} ({g.types[k]}) = {_short(v)}")
    print(f"{'tensor':<40} {'shape':>14} {'type':>5} {'bytes':>12}")
    for t in g.tensors.values():
        shape = "x".join(str(d) for d in t.shape)
        print(f"{t.name:<40} {shape:>14} {t.type_name:>5} {t.nbytes:>12}")
    return 0


def cmd_info(a):
    from . import Model
    from .ggml_file import open_mmap
    from .ggml_types import GGML_TYPES
    from .gguf_file import is_gguf
    buf = open_mmap(a.model)[0]
    if is_gguf(buf):
        return cmd_info_gguf(a, buf)
    m = Model(a.model)
    hp = m.hparams.as_dict()
    if a.json:
        tensors = [{"name": t.name, "shape": list(t.shape), "type": t.type_name, "offset": t.offset,
                    "nbytes": t.nbytes} for t in m.tensors.values()]
        print(json.dumps({"path": m.path, "hparams": hp, "tensors": tensors}, indent=1))
        return 0
    print(f"file:    {m.path} ({os.path.getsize(m.path) / 1e9:.3f} GB, ggjt v{hp['version']})")
    print("hparams: " + " ".join(f"{k}={v}" for k, v in hp.items() if k != "version"))
    counts = {}
    for t in m.tensors.values():
        counts[t.type_name] = counts.get(t.type_name, 0) + 1
    print("types:   " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
    print(f"{'tensor':<40} {'shape':>14} {'type':>5} {'bytes':>12}")
    for t in m.tensors.values():
        shape = "x".join(str(d) for d in t.shape)
        print(f"{t.name:<40} {shape:>14} {GGML_TYPES[t.type].name:>5} {t.nbytes:>12}")
    return 0


# ---- feedback on long work: progress bars on a terminal (tqdm when installed) -------------
def _show_progress():
    v = os.environ.get("GUANACO_RT_PROGRESS", "")      # "1"/"0" override the terminal check
    return v == "1" or (v != "0" and sys.stderr.isatty())


class _Bar:
    """A progress bar on stderr: tqdm if installed, else one rewritten line. Nothing at all
    off a terminal (or with GUANACO_RT_PROGRESS=0)."""

    def __init__(self, total, desc, unit="", scale=False):
        self.total, self.desc, self.unit, self._tqdm = total, desc, unit, None
        try:
            from tqdm import tqdm
            self._tqdm = tqdm(total=total, desc=desc, unit=unit or "it", unit_scale=scale, file=sys.stderr,
                              leave=False, dynamic_ncols=True)
        except ImportError:
            pass

    def update_to(self, n):
        if self._tqdm is not None:
            self._tqdm.update(n - self._tqdm.n)
        else:
            sys.stderr.write(f"\r{self.desc}: {100 * n / max(1, self.total):5.1f}% ({n}/{self.total} {self.unit})")
            sys.stderr.flush()

    def note(self, text):
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(text)

    def close(self):
        if self._tqdm is not None:
            self._tqdm.close()
        else:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _bar(total, desc, unit="", scale=False):
    return _Bar(total, desc, unit, scale) if _show_progress() else None


class _LazyBar:
    """A progress(done, total, ...) callback whose bar opens on the first call, once the
    total is known; ``shown`` says whether there is one (off a terminal there is not)."""

    def __init__(self, desc, unit="", scale=False):
        self.desc, self.unit, self.scale, self.bar = desc, unit, scale, None

    @property
    def shown(self):
        return bool(self.bar)

    def __call__(self, done, total, note=None):
        if self.bar is None:
            self.bar = _bar(total, self.desc, self.unit, self.scale) or False
        if self.bar:
            self.bar.update_to(done)
            if note:
                self.bar.note(note)

    def close(self):
        if self.bar:
            self.bar.close()


def _prompt_feedback(note_after_s=1.0):
    """Session.prompt_progress for the CLI: once a prompt looks like taking more than a
    second, say so (on a terminal, with a bar)."""
    import time
    st = {}

    def progress(done, total):
        now = time.perf_counter()
        if done == 0:                        # a new prompt
            st.clear()
            st.update(t0=now, said=False, bar=None)
            return
        if not st["said"] and done < total and (now - st["t0"]) / done * total > note_after_s:
            st["said"] = True
            st["bar"] = _bar(total, f"evaluating the prompt ({total} tokens)", "tok")
            if st["bar"] is None:
                print(f"guanaco-rt: evaluating the prompt ({total} tokens) ...", file=sys.stderr)
        if st["bar"] is not None:
            st["bar"].update_to(done)
            if done >= total:
                st["bar"].close()
                st["bar"] = None
    return progress


def _print_stream(stream, out=None):
    out = sys.stdout if out is None else out       # the one of now: a caller may have redirected it
    for piece in stream:
        out.write(piece)
        out.flush()
    out.write("\n")
    return stream.result


def _report(r):
    t = r.timings
    logging.getLogger("guanaco_rt").info(
        "finish=%s prompt %d tok (%d reused) %.1f tok/s, generated %d tok %.2f tok/s",
        r.finish_reason, t.prompt_tokens, t.reused_tokens, t.prompt_tokens_per_s, t.generated_tokens,
        t.generate_tokens_per_s)
    sys.stderr.write(f"\n[{r.finish_reason}] prompt: {t.prompt_tokens} tokens, {t.prompt_tokens_per_s:.2f} tok/s; "
                     f"generated: {t.generated_tokens} tokens, {t.generate_tokens_per_s:.2f} tok/s\n")


def cmd_generate(a):
    _, s = _open(a)
    stops = a.stop or []
    if a.chat:       # one user turn in the model's chat format; the reply alone is printed
        if a.stop is None and s.template is None:
            from .chat import DEFAULT_STOP
            stops = DEFAULT_STOP
        stream = s.stream(s.chat_prompt(a.prompt), max_new_tokens=a.n_predict, stop=stops, params=_params(a),
                          **_constraint_kw(a))
    else:
        stream = s.stream(a.prompt, max_new_tokens=a.n_predict, stop=stops, params=_params(a), **_constraint_kw(a))
        if not a.quiet_prompt:
            sys.stdout.write(a.prompt)
    r = _print_stream(stream)
    if not a.no_stats:
        _report(r)
    return 0


def _line_editing():
    """Arrow keys and history for input() when a person types: importing readline is what
    turns them on. True if on."""
    if not sys.stdin.isatty():
        return False
    try:
        import readline  # noqa: F401
    except ImportError:                      # a Python built without it
        return False
    return True


def _chat_labels(session):
    """(the user's prompt, the reply's prefix) in the model's own role names: Guanaco's
    ``### Human:`` turns for its format, the template's roles for a chat-template model."""
    if session.template is None:
        return "### Human: ", "### Assistant: "
    return "user: ", "assistant: "


def cmd_chat(a):
    _, s = _open(a)
    if a.system is not None:
        s.conversation.system = a.system
    params = _params(a)
    _line_editing()
    you, reply = _chat_labels(s)
    print("guanaco-rt chat: type a message; /help for commands", file=sys.stderr)
    while True:
        try:
            line = input(you)
        except EOFError:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if _chat_command(s, line):
                break
            continue
        sys.stdout.write(reply)
        first = [True]

        def show(piece):
            if first[0]:
                piece = piece.lstrip()
                first[0] = not piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        try:
            s.chat(line, max_new_tokens=a.n_predict, params=params, callback=show)
        except KeyboardInterrupt:
            s.cancel()
        except (GuanacoError, ValueError) as e:     # the conversation so far is kept
            sys.stdout.write("\n")
            print(f"[error: {e}]", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        if a.stats and s.last_result is not None:
            t = s.last_result.timings
            print(f"[{t.generated_tokens} tokens, {t.generate_tokens_per_s:.1f} tok/s; prompt {t.prompt_tokens} "
                  f"new + {t.reused_tokens} cached tokens, {t.prompt_tokens_per_s:.1f} tok/s]", file=sys.stderr)
    return 0


CHAT_HELP = """commands:
  /help         this list
  /reset        forget the conversation
  /save FILE    save the session (KV cache, conversation, RNG) to FILE
  /load FILE    restore a session saved with /save
  /quit         leave (also Ctrl-D)"""


def _chat_command(s, line):
    """Run one /command; True to quit. Errors are reported and the conversation kept."""
    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    if cmd in ("/quit", "/exit"):
        return True
    try:
        if cmd == "/help":
            print(CHAT_HELP, file=sys.stderr)
        elif cmd == "/reset":
            s.reset()
            print("[conversation cleared]", file=sys.stderr)
        elif cmd in ("/save", "/load") and not arg:
            print(f"[{cmd} needs a file name: {cmd} FILE]", file=sys.stderr)
        elif cmd == "/save":
            blob = s.save_state()
            with open(arg, "wb") as f:
                f.write(blob)
            print(f"[saved {s.n_past} tokens to {arg}]", file=sys.stderr)
        elif cmd == "/load":
            with open(arg, "rb") as f:
                s.load_state(f.read())
            print(f"[loaded {s.n_past} tokens, {len(s.conversation.turns)} turns]", file=sys.stderr)
        else:
            print(f"[unknown command {cmd!r}; /help lists them]", file=sys.stderr)
    except (OSError, GuanacoError) as e:
        print(f"[{cmd} failed: {e}]", file=sys.stderr)
    return False


def cmd_run(a):
    """Greedy generation, printed as it comes."""
    from .sampling import DEFAULTS
    a.temperature, a.repeat_penalty = 0.0, 1.0
    a.top_k, a.top_p, a.min_p, a.typical_p, a.repeat_last_n = 40, 1.0, 0.0, 1.0, DEFAULTS["repeat_last_n"]
    a.frequency_penalty = a.presence_penalty = 0.0
    a.dry_multiplier, a.dry_base, a.dry_allowed_length, a.dry_penalty_last_n = 0.0, 1.75, 2, -1
    a.dry_sequence_breaker = None
    a.logit_bias, a.seed = [], 0
    a.quiet_prompt = False
    return cmd_generate(a)


def cmd_random_model(a):
    from .ggml_file import open_mmap, parse
    from .writer import vocab_from_gguf, write_random_model
    vocab = None
    if a.vocab_gguf:
        vocab = vocab_from_gguf(a.vocab_gguf)
    if a.n_embd % a.n_head or (a.n_embd // a.n_head) % 2:
        raise GuanacoError(f"--n-embd {a.n_embd} must split into --n-head {a.n_head} heads of an even size")
    bar = _LazyBar(f"writing {os.path.basename(a.output)}", "B", scale=True)
    try:
        hp = write_random_model(a.output, a.ftype, n_vocab=a.n_vocab, n_embd=a.n_embd, n_mult=a.n_mult,
                                n_head=a.n_head, n_layer=a.n_layer, vocab=vocab, seed=a.seed, progress=bar)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {a.output}: {e.strerror}") from None
    finally:
        bar.close()
    try:           # the file must be one our own loader accepts
        parse(a.output, open_mmap(a.output)[0])
    except GuanacoError:
        os.remove(a.output)
        raise
    print(f"wrote {a.output}: {a.ftype}, n_vocab={hp.n_vocab} n_embd={hp.n_embd} n_head={hp.n_head} "
          f"n_layer={hp.n_layer} n_ff={hp.n_ff}, {os.path.getsize(a.output) / 1e6:.1f} MB")
    return 0


def cmd_perplexity(a):
    from . import Model
    from .metrics import perplexity
    m = Model(a.model, n_threads=a.threads)
    with open(a.textfile, encoding="utf-8", errors="replace") as f:
        text = f.read()
    bar = _LazyBar(f"perplexity, chunks of {a.ctx_size}", "chunk")

    def progress(done, total, ppl):
        bar(done, total, f"PPL {ppl:.4f}")
        if not bar.shown:
            print(f"[{done}/{total}] chunks of {a.ctx_size} tokens, PPL so far {ppl:.4f}", file=sys.stderr)
    try:
        r = perplexity(m, text, n_ctx=a.ctx_size, n_batch=a.batch_size, progress=progress)
    finally:
        bar.close()
    print(f"{r.n_chunks} chunks of {r.n_ctx} tokens, {r.n_scored} scored")
    print(r)
    return 0


def _pull_demo():
    from .demo import demo_model_path
    bar = _LazyBar("extracting and checking", "B", scale=True)
    try:
        return demo_model_path(quiet=not _show_progress(), progress=bar)
    finally:
        bar.close()


def cmd_pull_demo(a):
    print(_pull_demo())
    return 0


def cmd_serve(a):
    try:
        from .server import check_bind, serve
    except ImportError as e:
        print(f"guanaco-rt: error: the server needs the 'server' extra (Starlette and uvicorn); from a checkout of "
              f"guanaco_rt: pip install '.[server]' ({e})", file=sys.stderr)
        return 2
    from .api import LLM
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    api_key = a.api_key or os.environ.get("GUANACO_RT_API_KEY") or None
    check_bind(a.host, api_key, a.insecure_no_key, warn=False)      # before the model loads: fail fast
    llm = LLM(_model_path(a), n_ctx=a.ctx_size, n_sessions=a.parallel, n_threads=a.threads,
              n_batch=a.batch_size, kv_f16=a.kv_f16, model_name=a.model_name, prefill_chunk=a.prefill_chunk,
              batch=False if a.no_batch else None, lora=a.lora, lora_merge=a.lora_merge)
    logging.getLogger("guanaco_rt.server").info(
        "serving %s on http://%s:%d/v1 (%d session(s) of %d tokens, %s%d thread(s)%s)", llm.model_name, a.host,
        a.port, a.parallel, a.ctx_size, "decoded in one batch on " if llm.batcher is not None else "",
        llm.pool.session_kw["n_threads"], ", API key required" if api_key else "")
    try:
        serve(llm, a.host, a.port, api_key, a.max_queue, insecure_no_key=a.insecure_no_key)
    finally:
        llm.close()
    return 0


def cmd_config(a):
    from . import show_config
    from ._kernels import dispatch
    try:
        cfg = show_config()
    except GuanacoError as e:          # a GUANACO_RT_ISA this machine cannot run: what it can, and why not
        print(json.dumps({"units": dispatch.config_units(), "error": str(e)}, indent=1))
        print(f"guanaco-rt: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(cfg, indent=1))
    return 0 if cfg["isa"] else 1      # a unit this CPU runs failed to load (its error is in the output)


PRESETS = {"7B": (4096, 32, 32), "13B": (5120, 40, 40), "tiny": (256, 4, 2)}


def cmd_quantize(a):
    from .quantizer import quantize
    bar = _LazyBar(f"quantizing to {a.type}", "tensor")

    def progress(done, total, name):
        bar(done, total, name)
    try:
        types = quantize(a.input, a.output, a.type, allow_requantize=a.allow_requantize, threads=a.threads,
                         progress=progress, rules=a.rules, imatrix=a.imatrix, format=a.format)
    finally:
        bar.close()
    counts = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    print(f"{a.output}: {len(types)} tensors (" + ", ".join(f"{n} {t}" for t, n in sorted(counts.items())) + ")")
    return 0


def build_parser():
    from . import __version__
    from .ggml_types import FTYPE_BY_NAME
    p = argparse.ArgumentParser(prog="guanaco-rt",
                                description="Run LLaMA-family models (Guanaco's ggjt v3 .bin files and GGUF files).")
    p.add_argument("--version", action="version", version=f"guanaco-rt {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    # -v after the subcommand too; SUPPRESS: absent there, it leaves the top level's value
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log to stderr")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def command(name, help):
        return sub.add_parser(name, help=help, description=help, parents=[common])

    s = command("info", "hparams (GGUF: the metadata) and every tensor's name, shape, type and size")
    s.add_argument("model", help="a ggjt v3 (.ggmlv3.*.bin) or GGUF model file")
    s.add_argument("--json", action="store_true", help="print it all as one JSON object")
    s.set_defaults(fn=cmd_info)

    s = command("run", "greedy generation from a prompt, printed as it comes")
    _prompt_args(s, n_predict=64)
    s.set_defaults(fn=cmd_run)

    s = command("generate", "sampled generation with every sampling option")
    _prompt_args(s, n_predict=128)
    s.add_argument("--quiet-prompt", action="store_true", help="do not echo the prompt")
    _sampling_args(s)
    s.set_defaults(fn=cmd_generate)

    s = command("chat", "interactive chat in the model's format (/reset, /save FILE, /load FILE)")
    _session_args(s)
    s.add_argument("-n", "--n-predict", type=_int(1, MAX_CTX), default=256,
                   help="most tokens in one reply (default %(default)s)")
    s.add_argument("--system", default=None, help="system message (default: the template's, or Guanaco's)")
    s.add_argument("--stats", action="store_true", help="after each reply, show its tokens/s")
    _sampling_args(s)
    s.set_defaults(fn=cmd_chat)

    s = command("random-model", "write a random-weight ggjt v3 model (for tests and benchmarks)")
    s.add_argument("output", help="the file to write")
    s.add_argument("--ftype", default="q4_0", choices=sorted(FTYPE_BY_NAME),
                   help="the weights' type, as llama.cpp names a file's (default %(default)s)")
    s.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="shape: 7B (4096/32/32), 13B, tiny (256/4/2); overrides --n-embd/--n-head/--n-layer")
    s.add_argument("--n-vocab", type=_int(3, 1 << 20), default=32000, help="vocabulary size (default %(default)s)")
    s.add_argument("--n-embd", type=_int(32, 1 << 16), default=256, help="embedding width (default %(default)s)")
    s.add_argument("--n-mult", type=_int(1, 1 << 16), default=256,
                   help="the feed-forward width is rounded up to a multiple of this (default %(default)s)")
    s.add_argument("--n-head", type=_int(1, 1024), default=4, help="attention heads (default %(default)s)")
    s.add_argument("--n-layer", type=_int(1, 1024), default=2, help="layers (default %(default)s)")
    s.add_argument("--vocab-gguf", default=None, help="take the vocab from a GGUF vocab file")
    s.add_argument("--seed", type=_int(0, 2**32 - 1), default=0, help="seed of the weights (default %(default)s)")
    s.set_defaults(fn=cmd_random_model)

    s = command("perplexity", "perplexity on a text file (llama.cpp's method): PPL = value +/- error")
    s.add_argument("model", help="a ggjt v3 or GGUF model file")
    s.add_argument("textfile", help="UTF-8 text to score")
    s.add_argument("-c", "--ctx-size", type=_int(4, 1 << 16), default=512, help="chunk length (default %(default)s)")
    s.add_argument("-b", "--batch-size", type=_int(1, 1 << 16), default=64,
                   help="tokens evaluated at once (default %(default)s)")
    s.add_argument("-t", "--threads", type=_int(1, 256), default=None,
                   help="threads (default: GUANACO_RT_THREADS, else the physical cores this process may use, "
                        "within its cgroup quota)")
    s.set_defaults(fn=cmd_perplexity)

    s = command("pull-demo", "fetch and verify the demo model (SmolLM2-135M-Instruct) into the cache")
    s.set_defaults(fn=cmd_pull_demo)

    s = command("serve", "an OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/embeddings)")
    s.add_argument("model", nargs="?", default=None, help="a GGUF or ggjt v3 model file (default: the demo model)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default %(default)s); any other than loopback needs --api-key")
    s.add_argument("--port", type=_int(0, 65535), default=8000, help="TCP port (default %(default)s)")
    s.add_argument("--parallel", type=_int(1, 256), default=1,
                   help="generations at once, one session each; more than one share each pass over the weights "
                        "(one batch), on all the threads")
    s.add_argument("--no-batch", action="store_true",
                   help="with --parallel > 1: each session decodes alone, on its own share of the threads "
                        "(the weights read once per session and token)")
    s.add_argument("--prefill-chunk", type=_int(1, 4096), default=32,
                   help="with --parallel > 1: a prompt's tokens per shared pass, between the other generations' "
                        "tokens (default %(default)s)")
    s.add_argument("--max-queue", type=_int(0, 1 << 16), default=64,
                   help="requests that may wait for a session; more get HTTP 429 (default %(default)s)")
    s.add_argument("-c", "--ctx-size", type=_int(16, MAX_CTX), default=2048,
                   help="context per session (default %(default)s)")
    s.add_argument("-b", "--batch-size", type=_int(1, MAX_CTX), default=64,
                   help="prompt tokens evaluated at once (default %(default)s)")
    s.add_argument("-t", "--threads", type=_int(1, 256), default=None,
                   help="threads (default: all the cores; with --parallel > 1 the shared passes run on them)")
    s.add_argument("--api-key", default=None, help="require this key (default: GUANACO_RT_API_KEY, else none)")
    s.add_argument("--insecure-no-key", action="store_true",
                   help="allow a --host beyond loopback without an API key (anyone who reaches the port may use it)")
    s.add_argument("--model-name", default=None, help="the model id clients see (default: the file name)")
    s.add_argument("--kv-f16", action="store_true", help="keep the KV caches in f16 (half the memory)")
    s.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]", type=_lora_spec,
                   help="a LoRA adapter applied at run time to every session (GGUF of llama.cpp's "
                        "convert_lora_to_gguf.py, or a 2023 ggla file), times SCALE (default 1); repeatable")
    s.add_argument("--lora-merge", action="append", default=[], metavar="FILE[:SCALE]", type=_lora_spec,
                   help="a LoRA adapter merged into the weights at load, requantized to their types (no run-time "
                        "cost, but the rounding of a 4-bit type can undo much of a small adapter); repeatable")
    s.set_defaults(fn=cmd_serve)

    s = command("config", "the ISA units built, the one in use and why; OpenMP and thread count")
    s.set_defaults(fn=cmd_config)

    s = command("quantize", "quantize an F32/F16/BF16 GGUF (or ggjt v3) model into a GGUF file of one of "
                            "llama.cpp's types, as llama-quantize does")
    s.add_argument("input", help="the model file to quantize")
    s.add_argument("output", help="the GGUF file to write")
    s.add_argument("type", type=str.upper, metavar="TYPE",
                   choices=["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
                            "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"], help="the file type, e.g. Q4_K_M")
    s.add_argument("--allow-requantize", action="store_true",
                   help="also take tensors that are already quantized (they lose precision twice)")
    s.add_argument("-t", "--threads", type=_int(1, 256), default=None, help="threads (default: all cores)")
    s.add_argument("--rules", choices=["2026", "2025"], default="2026",
                   help="whose per-tensor rules: llama.cpp's of 2026 (default) or of 2025 (Q2_K/Q3_K rows "
                        "not a multiple of 256 fall back to IQ4_NL, not Q4_0)")
    s.add_argument("--imatrix", metavar="FILE", default=None,
                   help="an importance matrix from llama.cpp's llama-imatrix (GGUF or legacy .dat), used as "
                        "llama-quantize --imatrix uses it")
    s.add_argument("--format", choices=["gguf", "ggjt"], default="gguf",
                   help="the output's container: GGUF (default) or ggjt v3, the 2023 format of the Guanaco "
                        "files (LLaMA without GQA only)")
    s.set_defaults(fn=cmd_quantize)
    return p


def main(argv=None):
    p = build_parser()
    a = p.parse_args(argv)
    if getattr(a, "preset", None):
        a.n_embd, a.n_head, a.n_layer = PRESETS[a.preset]
    if a.verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        return a.fn(a)
    except BrokenPipeError:  # e.g. piped into head
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        return 130
    except (GuanacoError, ValueError, TypeError, OSError) as e:
        # bad input, a bad environment (GUANACO_RT_ISA, GUANACO_RT_THREADS), a full disk: a message, not a traceback
        print(f"guanaco-rt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
