"""Constrained decoding: a JSON schema, a regular expression, a grammar or a list of
choices, compiled against a model's vocabulary, masks each step's logits.

Owns: the bridge to llguidance (the maintained engine llama.cpp uses; see the README's
"Structured output" for why it and not xgrammar), the compiled-constraint cache, and the
per-generation ``Guide`` that the decode loop drives:

    step n:  sample tok_n under mask_n  ->  guide.consume(tok_n)
             forward(tok_n) in C without the GIL  ||  mask_{n+1} on a worker thread
             (llguidance drops the GIL too)  ->  wait for the mask  ->  step n+1

so a mask that is ready before the forward pass ends costs no latency. We write no
grammar engine of our own: every rule of JSON Schema, Lark, GBNF and regex is
llguidance's. What we add is the vocabulary (each token's bytes as our tokenizers decode
them, special tokens set apart so text never matches them), limits on what a request may
ask the engine to build, and typed errors.
"""
from __future__ import annotations

import functools
import json
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConstraintError
from .tokenizer import CONTROL, UNKNOWN, UNUSED, USER_DEFINED

MAX_SOURCE_BYTES = 256 * 1024    # a schema, grammar or regex longer than this is refused before compiling
MAX_CHOICES = 10_000
CACHE_SIZE = 64                  # compiled constraints kept per vocabulary (least recently used go)
KINDS = ("json_schema", "regex", "grammar", "choices")
JSON_WHITESPACE = r"(?: |\n[ \t]{0,20})?"
# The budget close (Guide.steer). A short completion is found by walking one byte at a
# time: a byte that closes whenever the constraint allows one (inside a JSON string its
# quote, elsewhere } ] " , :), else content: of the first byte each class allows
# (punctuation, digits, lower and upper case letters), one after which a closing byte may
# follow, else the class least recently used, each class least recently used byte first,
# so that no pattern holds the walk in a loop (\d+x, a path's '/'), whitespace last.
WALK_IN_STRING = b'"'
WALK_OUTSIDE = b'}]",:'
WALK_CLASSES = (bytes(x for x in range(33, 127) if not chr(x).isalnum() and x not in b'"\\'), b"0123456789",
                bytes(range(97, 123)), bytes(range(65, 91)))
WALK_TAIL = b" \n"
CLOSE_GUARD = 32          # the close starts when the tokens left are within this of a completion's: one token
#                           may open much more than it writes (an object with required keys)
CLOSE_RECHECK = 16        # tokens between looks at the shortest completion while it is far off
CLOSE_WORK = 300          # matcher calls per generated token the far looks may take (a text that cannot close
#                           in time: a few % of a demo-model step); a completion that takes more is found later
CLOSE_TOP_K = 8           # under the close, the model's most likely allowed tokens tried for ones that still fit,
CLOSE_KEEP = 2            # up to this many
MAX_LITERALS = 64         # literal runs of a constraint's patterns the walk may try

def _engine():
    try:
        import llguidance
    except ImportError as e:        # pragma: no cover - llguidance is a dependency
        raise ConstraintError(f"constrained decoding needs the llguidance package ({e})") from None
    return llguidance


def token_bytes_for_engine(tokenizer, n_vocab):
    """Each token's bytes as the engine must see them: text tokens as the decode loop writes
    them; control, unused and unknown tokens (and user-defined ones spelled ``<...>``, as
    llama.cpp's llguidance bridge does) as 0xFF + their spelling, which no text matches;
    ids past the tokenizer's end (a padded embedding) as 0xFF + ``<[id]>``."""
    blob, offs, _ = tokenizer.byte_table
    types = _token_types(tokenizer)
    spell = _spellings(tokenizer)
    out = []
    for i in range(n_vocab):
        if i >= len(offs) - 1:
            out.append(f"\xff<[{i}]>".encode("latin-1"))
            continue
        ty = types[i] if i < len(types) else CONTROL
        b = blob[offs[i]:offs[i + 1]].tobytes()
        special = ty in (CONTROL, UNUSED, UNKNOWN) or (
            ty == USER_DEFINED and spell[i].startswith("<") and spell[i].endswith(">"))
        if special or not b:
            out.append(b"\xff" + (spell[i] or f"<[{i}]>").encode("utf-8"))
        else:
            out.append(b)
    return out


def _token_types(tokenizer):
    pieces = getattr(tokenizer, "pieces", None)         # SentencePiece: [(piece, score, type)]
    if pieces is not None:
        return [t for _, _, t in pieces]
    return list(tokenizer.types)


def _spellings(tokenizer):
    pieces = getattr(tokenizer, "pieces", None)
    if pieces is not None:
        return [p for p, _, _ in pieces]
    return list(tokenizer.tokens)


class _Wrapper:
    """What llguidance's TokenizerWrapper reads: token bytes, BOS/EOS, and a tokenize
    function (used only to turn forced text into tokens; masks come from the bytes)."""

    def __init__(self, tokenizer, tokens, eos):
        self.tokens = tokens
        self.eos_token_id = eos[0]
        self.bos_token_id = tokenizer.bos_id
        self.special_token_ids = [i for i, b in enumerate(tokens) if b[:1] == b"\xff"]
        self._tok = tokenizer

    def __call__(self, text):
        # text -> ids whose bytes are the text: SentencePiece's dummy-prefix space must not
        # come out of it. It is encoded after a newline, whose piece joins nothing, and
        # the newline's own ids are taken off again.
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        tok = self._tok
        if not getattr(tok, "add_space_prefix", False):
            return tok.encode(text, bos=False)
        head = tok.encode("\n", bos=False)
        ids = tok.encode("\n" + text, bos=False)
        if ids[:len(head)] == head:
            return ids[len(head):]
        return tok.encode(text, bos=False)         # pragma: no cover - a vocabulary that merges a newline


class Vocabulary:
    """A model's vocabulary in the engine (built once per tokenizer: about a second for
    50k tokens) and its cache of compiled constraints."""

    def __init__(self, tokenizer, n_vocab, eog_ids) -> None:
        llg = _engine()
        eos = [int(i) for i in eog_ids if 0 <= int(i) < n_vocab]
        if not eos:
            raise ConstraintError("this model's vocabulary has no end-of-generation token: a constraint could "
                                  "not end a generation")
        self.n_vocab = n_vocab
        self.tokens = token_bytes_for_engine(tokenizer, n_vocab)
        self.lltok = llg.LLTokenizer(llg.TokenizerWrapper(_Wrapper(tokenizer, self.tokens, eos)),
                                     n_vocab=n_vocab, eos_token=eos)
        self.limits = llg.LLParserLimits(verbose_errors=False)
        self.eog = eos
        # the budget close writes its completions with one-byte tokens
        one = {}
        for i, b in enumerate(self.tokens):
            if len(b) == 1 and b not in one:
                one[b] = i
        part = lambda bs: [one[bytes([x])] for x in bs if bytes([x]) in one]  # noqa: E731
        self.walk: tuple[list[int], list[int], list[list[int]], list[int]] = (
            part(WALK_IN_STRING), part(WALK_OUTSIDE), [part(c) for c in WALK_CLASSES], part(WALK_TAIL))
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, kind, key, make_grammar) -> Constraint:
        """The constraint of ``kind`` whose canonical source is ``key``, compiled once and
        kept (``make_grammar()`` -> llguidance's grammar text, called on a miss)."""
        with self._lock:
            hit = self._cache.get((kind, key))
            if hit is not None:
                self._cache.move_to_end((kind, key))
                return hit
        llg = _engine()
        try:
            grammar = make_grammar()
        except ValueError as e:         # llguidance: not JSON, or a GBNF grammar it cannot convert
            raise ConstraintError(f"{kind}: {e}", kind) from None
        matcher = llg.LLMatcher(self.lltok, grammar, log_level=0, limits=self.limits)
        if matcher.is_error():
            raise ConstraintError(f"{kind} cannot be compiled: {matcher.get_error()}", kind)
        c = Constraint(kind, key, self, matcher)
        with self._lock:
            self._cache[(kind, key)] = c
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return c


_vocabs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_vocabs_lock = threading.Lock()


def vocabulary(model) -> Vocabulary:
    """The model's Vocabulary, built on first use and kept as long as its tokenizer lives."""
    tok = model.tokenizer
    with _vocabs_lock:
        v = _vocabs.get(tok)
        if v is None:
            eog = sorted({i for i in (getattr(tok, "eog_ids", None) or ()) if i is not None}
                         | {i for i in (tok.eos_id, getattr(tok, "eot_id", None)) if i is not None})
            v = _vocabs[tok] = Vocabulary(tok, model.n_vocab, eog)
        return v


@dataclass(frozen=True)
class Constraint:
    """A compiled constraint on one vocabulary; share it freely. ``guide()`` starts one
    generation's matcher from it."""
    kind: str
    source: str
    vocab: Vocabulary
    _template: Any

    @functools.cached_property
    def literals(self) -> list:
        """The literal runs of the regular expressions in this constraint (a schema's
        ``pattern``s, a regex), as one-byte token ids: the budget close tries them where a
        pattern needs text before it may close (``\\.md$``)."""
        if self.kind == "regex":
            patterns = [self.source]
        elif self.kind == "json_schema":
            patterns = []
            _patterns(json.loads(self.source.split(":", 1)[1]), patterns)
        else:
            return []
        in_string, outside, classes, tail = self.vocab.walk
        one = {self.vocab.tokens[t]: t for part in (in_string, outside, *classes, tail) for t in part}
        runs = {r for p in patterns for r in literal_runs(p)}
        return [[one[bytes([b])] for b in r] for r in sorted(runs, key=lambda r: (len(r), r))
                if all(bytes([b]) in one for b in r)][:MAX_LITERALS]

    def guide(self, schema_type=None) -> Guide:
        with self.vocab._lock:          # deep_copy reads the template; one at a time
            m = self._template.deep_copy()
        return Guide(self, m, schema_type)


class _MaskWorker:
    """A thread that fills a guide's mask buffer on request. Two plain locks hand the work
    over (a lock waits in C without the GIL), so a step costs two lock operations and no
    objects; llguidance drops the GIL while it computes."""

    def __init__(self, matcher, words) -> None:
        self._go, self._done = threading.Lock(), threading.Lock()
        self._go.acquire()
        self._done.acquire()
        self._stop = False
        self.error: BaseException | None = None
        args = (matcher.unsafe_compute_mask_ptr, words.ctypes.data, words.nbytes)
        self._thread = threading.Thread(target=self._run, args=args, name="guanaco_rt-mask", daemon=True)
        self._thread.start()

    def _run(self, compute, ptr, nbytes):
        while True:
            self._go.acquire()
            if self._stop:
                return
            try:
                compute(ptr, nbytes)
            except BaseException as e:      # handed to the decode loop, which raises it
                self.error = e
            self._done.release()

    def start(self):
        self._go.release()

    def wait(self):
        self._done.acquire()

    def close(self):
        self._stop = True
        self._go.release()
        self._thread.join()


class Guide:
    """One generation's walk through a constraint: the matcher, and its mask buffer
    (``words``: llguidance's bitmask, bit i of word i // 32 set when token i may come
    next), filled on a worker thread while the forward pass runs. ``close()`` ends the
    worker."""

    def __init__(self, constraint, matcher, schema_type=None) -> None:
        self.constraint = constraint
        self.matcher = matcher
        self.schema_type = schema_type            # a pydantic model to parse the text into, or None
        self.words = np.full((constraint.vocab.n_vocab + 31) // 32, -1, np.int32)
        self._worker: _MaskWorker | None = None
        self._running = False
        self.n_consumed = 0
        # the budget close: set budget (max_new_tokens) and logits (a callable -> the next
        # token's logits) to let mask() steer the end of the text into the budget
        self.budget: int | None = None
        self.logits = None
        self.close_steps = 0                      # steps where the close set aside the model's first choice
        self._watch_from = -1                     # tokens left at or below which to look each step
        self._quoted = self._escaped = False      # the text ends inside a JSON string / after its backslash
        self._plan: list | None = None            # the completion the close forced the first token of
        self._closing = False                     # the close checks each step's tokens from here on
        self._last = -1                           # the last token consumed
        self.work = 0                             # matcher calls the close's walks made
        self._need = 0                            # the matcher calls the next far look needs in hand

    def start_mask(self):
        """Begin computing the next mask on the worker thread (wait for it with ``mask()``)."""
        if self._worker is None:
            self._worker = _MaskWorker(self.matcher, self.words)
        self._worker.start()
        self._running = True

    def wait(self):
        """Let a mask in flight finish (its buffer is ours; nothing may write it after we go)."""
        if self._running:
            self._running = False
            self._worker.wait()

    def mask(self):
        """The next step's mask, once the worker is done with it."""
        self.wait()
        err = self._worker.error if self._worker is not None else None
        if err is not None:
            raise ConstraintError(f"{self.constraint.kind}: the engine failed: {err}", self.constraint.kind)
        if self.matcher.is_error():
            raise ConstraintError(f"{self.constraint.kind}: {self.matcher.get_error()}", self.constraint.kind)
        if self.budget is not None and self.logits is not None:
            self.steer(self.budget - self.n_consumed)
        return self.words

    # -- the budget close -----------------------------------------------------------------
    def shortest_completion(self, cap, max_work=None):
        """-> the token ids of a short text that completes the constraint from here (an
        end-of-generation token last when the constraint ends open, as a top-level number
        may), or None when the walk finds none within ``cap`` bytes (or ``max_work``
        matcher calls). The matcher is left as it was."""
        m = self.matcher
        if m.is_stopped():
            return []
        vocab = self.constraint.vocab
        in_string, outside, classes, tail = vocab.walk
        body = [list(c) for c in classes]           # each class in its order of use; the classes too
        walked = []
        quoted, escaped = self._quoted, self._escaped
        stop_at = None if max_work is None else self.work + max_work
        while not m.is_accepting() and len(walked) < cap and (stop_at is None or self.work < stop_at):
            self.work += 5
            t = next((t for t in (in_string if quoted else outside) if m.try_consume_tokens([t]) == 1), None)
            step = [t] if t is not None else self._content(body, quoted)
            if step is None:
                t = next((t for t in tail if m.try_consume_tokens([t]) == 1), None)
                if t is None:
                    break               # no one-byte token goes on from here
                step = [t]
            for t in step:
                walked.append(t)
                if escaped:
                    escaped = False
                elif vocab.tokens[t] == b'"':
                    quoted = not quoted
        done, stopped = m.is_accepting(), m.is_stopped()
        if walked:
            m.rollback(len(walked))
        if not done:
            return None
        ids = walked
        if len(walked) > 1:             # the same text in the tokenizer's (fewer) tokens, if they fit
            ids = vocab.lltok.tokenize_bytes(b"".join(vocab.tokens[t] for t in walked))
            if len(ids) >= len(walked) or m.validate_tokens(ids) != len(ids):
                ids = walked
        return ids + ([] if stopped else [vocab.eog[0]])

    def _content(self, body, quoted):
        # -> the content tokens to write (consumed), or None. body: the byte classes, each a
        # list of one-byte tokens, least recently used first, in their own such order. Of the
        # first byte each class allows: one after which a closing byte may follow (a pattern's
        # ':'), else a literal run of the constraint's patterns that does the same (".md"),
        # else the first class's; the byte and its class go to the back of their lists.
        m = self.matcher
        closers = self.constraint.vocab.walk[0 if quoted else 1]

        def closes():
            return any(m.validate_tokens([c]) == 1 for c in closers)

        picks = []                      # (class index, index in class)
        for ci, cls in enumerate(body):
            for i, t in enumerate(cls):
                if m.try_consume_tokens([t]) == 1:
                    self.work += i + 2
                    if closes():
                        cls.append(cls.pop(i))
                        body.append(body.pop(ci))
                        return [t]
                    m.rollback(1)
                    picks.append((ci, i))
                    break
            else:
                self.work += len(cls)
        for run in self.constraint.literals:
            self.work += 1
            k = m.try_consume_tokens(run)
            if k == len(run) and closes():
                return run
            if k:
                m.rollback(k)
        if not picks:
            return None
        ci, i = picks[0]
        t = body[ci].pop(i)
        body[ci].append(t)
        body.append(body.pop(ci))
        m.consume_token(t)
        return [t]

    def steer(self, left):
        """Narrow the mask so that the text still closes within ``left`` more tokens. Once
        the tokens left come within CLOSE_GUARD of a completion's (shortest_completion),
        only tokens after which a completion still fits stay allowed, tried in the model's
        order (up to CLOSE_KEEP of its CLOSE_TOP_K most likely allowed tokens); when none of
        them does, the completion's own next token. A completion, once forced, is followed to its end
        unless a shorter one turns up. A constraint that cannot close in time is left
        alone (the generation then ends at max_new_tokens, incomplete)."""
        plan, self._plan = self._plan, None
        if plan and self._last == plan[0]:
            plan = plan[1:]              # the last token followed the plan: the rest still completes it
        else:
            plan = None
        # far from the end (or with no completion found so far) a look every CLOSE_RECHECK
        # tokens, all of them costing CLOSE_WORK matcher calls per token at most; near it, each step
        allowance = None
        if not self._closing and left > self._watch_from:
            allowance = CLOSE_WORK * (self.n_consumed + CLOSE_RECHECK) - self.work
            if self.n_consumed % CLOSE_RECHECK or allowance < self._need:
                return
        cap = 8 * left + 64                # more bytes than ``left`` tokens will ever carry: hopeless
        work = self.work
        best = self.shortest_completion(cap, allowance)
        if best is None and allowance is not None and self.work - work >= allowance:
            self._need = 2 * allowance     # cut short: the next look waits for twice the calls
        elif best is not None:
            self._need = 0
        if plan is not None and (best is None or len(plan) <= len(best)):
            best = plan
        if best is None or len(best) > left and not self._closing:
            self._watch_from = -1          # cannot close in time now: look again every CLOSE_RECHECK tokens
            return
        # a token may open more than it writes (an object with required keys): look each step
        # from well before the completion's length
        self._watch_from = len(best) + CLOSE_GUARD + CLOSE_RECHECK
        if len(best) + CLOSE_GUARD < left:
            return
        self._closing = True
        words = self.words.view(np.uint32)
        allowed = np.unpackbits(words.view(np.uint8), bitorder="little")[:self.constraint.vocab.n_vocab]
        x = np.where(allowed.astype(bool), self.logits(), -np.inf)
        order = np.argsort(-x, kind="stable")[:min(CLOSE_TOP_K, int(allowed.sum()))]
        keep = []
        eog = set(self.constraint.vocab.eog)
        for t in order.tolist():
            if len(keep) == CLOSE_KEEP:
                break
            if t in eog or best and t == best[0] and len(best) <= left:
                keep.append(t)          # the constraint is complete, or t starts a completion that fits
            elif self._fits_after(t, left - 1, cap):
                keep.append(t)
        if not keep and best:
            keep = [best[0]]
        # if the model takes best[0], the rest of best completes the text in time (a walk from
        # after it need not be as short: the walk is not the same from every point of its path)
        self._plan = best
        words[:] = 0
        for t in keep:
            words[t >> 5] |= np.uint32(1) << np.uint32(t & 31)
        if len(order) and keep[:1] != order[:1].tolist():
            self.close_steps += 1       # the model's first choice would not have closed in time

    def _fits_after(self, t, left, cap):
        # would a completion still fit in ``left`` tokens after token t?
        quotes = self._quoted, self._escaped
        if not self.matcher.consume_token(t):
            raise ConstraintError(f"{self.constraint.kind}: token {t} was refused: {self.matcher.get_error()}",
                                  self.constraint.kind)
        self._track_quotes(self.constraint.vocab.tokens[t])
        try:
            rest = self.shortest_completion(cap)
        finally:
            self.matcher.rollback(1)
            self._quoted, self._escaped = quotes
        return rest is not None and len(rest) <= left

    def close(self):
        self.wait()
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def consume(self, tok) -> bool:
        """Advance over a sampled token -> True when the constraint is complete (only an
        end-of-generation token may follow)."""
        if not self.matcher.consume_token(int(tok)):
            raise ConstraintError(f"{self.constraint.kind}: token {tok} was refused: {self.matcher.get_error()}",
                                  self.constraint.kind)
        self.n_consumed += 1
        self._last = int(tok)
        self._track_quotes(self.constraint.vocab.tokens[int(tok)])
        return self.matcher.is_stopped()

    def _track_quotes(self, b):
        # whether the text so far ends inside a JSON string (the walk closes that first)
        for c in b:
            if self._escaped:
                self._escaped = False
            elif c == 0x5C and self._quoted:
                self._escaped = True
            elif c == 0x22:
                self._quoted = not self._quoted

    def parse(self, text):
        """The generated text as data (a JSON schema's constraint): the pydantic object when a
        model class gave the schema, else the JSON value; None if it is incomplete."""
        if self.constraint.kind != "json_schema" or not self.matcher.is_accepting():
            return None
        if self.schema_type is not None:
            return self.schema_type.model_validate_json(text)
        return json.loads(text)


def _patterns(node, out, depth=0):
    # every "pattern" string (and patternProperties key) of a schema, into out
    if depth > 64:
        return
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "pattern" and isinstance(v, str):
                out.append(v)
            elif k == "patternProperties" and isinstance(v, dict):
                out.extend(x for x in v if isinstance(x, str))
            _patterns(v, out, depth + 1)
    elif isinstance(node, list):
        for v in node:
            _patterns(v, out, depth + 1)


def literal_runs(regex):
    """The runs of literal text in a regular expression (escaped punctuation counts, a
    class, group, repetition or anchor ends a run): r"^.*\\.md$" -> [b".md"]. Only printable
    ASCII; a rough reading, used to guide a search, never to decide what is valid."""
    runs, cur, i, n = [], bytearray(), 0, len(regex)
    while i < n:
        c = regex[i]
        lit = None
        if c == "\\" and i + 1 < n:
            if not regex[i + 1].isalnum():
                lit = regex[i + 1]
            i += 2
        elif c == "[":                  # a class: skip to its end
            j = i + 1
            while j < n and regex[j] != "]":
                j += 2 if regex[j] == "\\" else 1
            i = j + 1
        elif c == "{":                  # a repetition: it also repeats the run's last byte
            i = regex.find("}", i) + 1 or n
            cur = cur[:-1]
        elif c in "?*+":
            i += 1
            cur = cur[:-1]              # optional or repeated: not part of a fixed run
        elif c in ".^$()|":
            i += 1
        else:
            lit = c
            i += 1
        if lit is not None and 32 < ord(lit) < 127 and lit not in '"\\':
            cur.append(ord(lit))
        elif lit is None and cur:
            runs.append(bytes(cur))
            cur = bytearray()
    if cur:
        runs.append(bytes(cur))
    return [r for r in runs if r]


def _check_source(kind, text):
    n = len(text.encode("utf-8", "surrogatepass"))
    if n > MAX_SOURCE_BYTES:
        raise ConstraintError(f"{kind} is {n} bytes, above the limit {MAX_SOURCE_BYTES}", kind)
    return text


def schema_of(json_schema):
    """A schema as given -> (its canonical JSON text, the pydantic model to parse into or None).
    Accepts a dict, a JSON string, True (any JSON value) or a pydantic model class."""
    model_type = None
    if isinstance(json_schema, type) and hasattr(json_schema, "model_json_schema"):
        model_type = json_schema
        json_schema = json_schema.model_json_schema()
    if isinstance(json_schema, str):
        _check_source("json_schema", json_schema)
        try:
            json_schema = json.loads(json_schema)
        except ValueError as e:
            raise ConstraintError(f"json_schema is not JSON: {e}", "json_schema") from None
    if json_schema is True:
        json_schema = {}
    if not isinstance(json_schema, dict):
        raise ConstraintError(f"json_schema must be an object (a dict, JSON text or a pydantic model), "
                              f"got {type(json_schema).__name__}", "json_schema")
    try:
        text = json.dumps(json_schema, allow_nan=False)     # key order kept: properties come in it
    except (TypeError, ValueError, RecursionError) as e:
        raise ConstraintError(f"json_schema cannot be written as JSON: {type(e).__name__}: {e}",
                              "json_schema") from None
    return _check_source("json_schema", text), model_type


SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
NOT_SCHEMAS = ("enum", "const", "default", "examples", "required")
MAX_INT_DIGITS = 16


def llama_cpp_defaults(schema):
    """The schema as llama.cpp's schema grammars read it (a copy): an object with
    ``properties`` and no ``additionalProperties`` takes no other keys, and an integer
    without bounds has at most 16 digits. Outputs stay valid under the schema as given;
    without these a small model invents keys, or writes digits, until max_new_tokens.
    ``"additionalProperties": true`` or explicit bounds say otherwise. Objects under ``allOf``
    (whose branches share their properties), with ``$ref``, ``patternProperties`` or
    ``unevaluatedProperties``, or that require a key they do not declare, are left alone."""
    def walk(node, in_allof=False):
        if isinstance(node, list):
            return [walk(x, in_allof) for x in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for k, v in node.items():
            if k in SCHEMA_MAPS and isinstance(v, dict):
                out[k] = {name: walk(sub) for name, sub in v.items()}
            elif k in NOT_SCHEMAS:
                out[k] = v
            else:
                out[k] = walk(v, in_allof or k == "allOf")
        declared = out.get("properties")
        needed = out.get("required") if isinstance(out.get("required"), list) else []
        if (isinstance(declared, dict) and "additionalProperties" not in out and not in_allof
                and all(name in declared for name in needed)      # a required key it does not declare
                and not any(k in out for k in ("allOf", "$ref", "patternProperties", "unevaluatedProperties"))):
            out["additionalProperties"] = False
        if out.get("type") == "integer" and not any(
                k in out for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "const")):
            out["minimum"], out["maximum"] = -(10 ** MAX_INT_DIGITS - 1), 10 ** MAX_INT_DIGITS - 1
        return out
    return walk(schema)


def compile_constraint(model, *, json_schema=None, regex=None, grammar=None, choices=None, strict=True):
    """The keyword constraints of a generation call -> (Constraint, pydantic type or None),
    or None when none is given. At most one may be given. ``strict``: a JSON schema keyword
    the engine does not implement is an error (False: it is ignored, as llguidance's
    ``lenient``). Raises ConstraintError naming what cannot be compiled."""
    given = [(k, v) for k, v in (("json_schema", json_schema), ("regex", regex), ("grammar", grammar),
                                 ("choices", choices)) if v is not None]
    if not given:
        return None
    if len(given) > 1:
        raise ConstraintError(f"give one constraint, not {' and '.join(k for k, _ in given)}", given[1][0])
    kind, value = given[0]
    llg = _engine()
    vocab = vocabulary(model)
    model_type = None
    if kind == "json_schema":
        text, model_type = schema_of(value)
        # whitespace as llama.cpp's schema grammars allow it: none, one space, or a newline and up
        # to 20 of indentation (unbounded runs let a weak model loop on blank lines)
        opts = {"lenient": not strict, "whitespace_pattern": JSON_WHITESPACE}
        make = lambda: llg.LLMatcher.grammar_from_json_schema(  # noqa: E731
            json.dumps(llama_cpp_defaults(json.loads(text))), overrides=opts)
        key = f"{int(bool(strict))}:{text}"
    elif kind == "regex":
        if not isinstance(value, str):
            raise ConstraintError(f"regex must be a str, got {type(value).__name__}", kind)
        key = _check_source(kind, value)
        make = lambda: llg.LLMatcher.grammar_from_regex(key)  # noqa: E731
    elif kind == "grammar":
        if not isinstance(value, str):
            raise ConstraintError(f"grammar must be a str (Lark or GBNF), got {type(value).__name__}", kind)
        key = _check_source(kind, value)
        make = lambda: llg.grammar_from("grammar", key)  # noqa: E731
    else:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ConstraintError(f"choices must be a list of strings, got {type(value).__name__}", kind)
        items = list(value)
        if not items or len(items) > MAX_CHOICES or not all(isinstance(x, str) and x for x in items):
            raise ConstraintError(f"choices must be 1 to {MAX_CHOICES} non-empty strings, got {len(items)} "
                                  f"item(s)" + ("" if all(isinstance(x, str) and x for x in items)
                                                else " with a non-string or empty one"), kind)
        key = _check_source(kind, json.dumps(items))
        lark = "start: " + " | ".join(json.dumps(x) for x in items)
        make = lambda: llg.LLMatcher.grammar_from_lark(lark)  # noqa: E731
    return vocab.compile(kind, key, make), model_type
