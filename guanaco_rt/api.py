"""OpenAI-shaped completions beside Session: ``LLM.create_completion`` and
``LLM.create_chat_completion`` return the dicts, and with ``stream=True`` yield the
chunks, of the OpenAI API and llama-cpp-python's ``Llama``.

Owns: the pool of sessions on one shared Model (the server's too), turning OpenAI
request parameters into a generation, and the response shapes.

Parameter names follow OpenAI (and HF, then llama-cpp-python, where OpenAI has none);
where ours differ, the mapping is:

=====================  ===============================================================
OpenAI / llama-cpp      guanaco_rt
=====================  ===============================================================
max_tokens              max_new_tokens (None: until the context is full)
stop                    stop (a string or a list; the stop text is not returned)
seed                    the session RNG reseeded for this call (None: it runs on)
temperature, top_p,     the same (0 temperature: greedy)
top_k, min_p, typical_p
frequency_penalty,      the same (OpenAI's additive penalties)
presence_penalty
repeat_penalty          repetition_penalty (llama.cpp's multiplicative one)
dry_multiplier,         the same (llama-server's DRY repetition penalty; off by default)
dry_base, ...
logit_bias              logit_bias, token id (int or its decimal string) -> bias
logprobs (completion)   n_probs: the top N (0..20) per token, plus the token's own
logprobs, top_logprobs  n_probs = top_logprobs (chat)
(chat)
response_format         json_object: any JSON object; json_schema: its ``schema``, with
                        ``strict`` (a keyword the engine lacks is then an error, else ignored)
json_schema, grammar,   llama.cpp's server's constraint parameters (grammar: GBNF or Lark),
regex, choices          and Session's regex and choices
tools, tool_choice,     the same (see guanaco_rt.tools for how tools reach the model);
parallel_tool_calls     a reply with calls has message.tool_calls, finish "tool_calls"
=====================  ===============================================================

Defaults are llama-cpp-python's (temperature 0.8, top_p 0.95, top_k 40, min_p 0.05,
no repeat penalty; 16 tokens for a completion, up to the context's end for a chat).
finish_reason is "stop" (a stop string, EOS or end of turn), "length" (max_tokens or
a full context; a call cut short is in tool_calls, its arguments as far as written, as
OpenAI sends it), "tool_calls" (a reply with complete calls)
or, for a generation cancelled with ``cancel()``, "cancelled". With tools, logprobs
are not given (null).
What we keep that the peers do not: any thread may ``cancel()`` a stream, the pool
shares one Model across threads with the GIL released, and errors are typed
(``InvalidRequestError`` names the bad parameter).
"""
from __future__ import annotations

import collections
import json
import os
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

from . import lora as _lora
from . import tools as tc
from .chat import DEFAULT_STOP, guanaco_prompt
from .constrain import compile_constraint
from .errors import (
    Cancelled,
    ChatTemplateError,
    ConstraintError,
    ContextFullError,
    InvalidRequestError,
    ModelClosedError,
)
from .model import Model, default_threads
from .sampling import DEFAULTS, Sampler, SamplingParams
from .session import Session, common_prefix
from .tokenizer import unicode_problem

MAX_TOP_LOGPROBS = 20
ROLES = ("system", "developer", "user", "assistant", "tool")


class _Running:
    """A request that SessionPool handed a session with a prompt: its session (None while it
    is being made), its prompt's ids, and when acquire() returned (None before)."""
    __slots__ = ("session", "ids", "handed")

    def __init__(self, session: Session | None, ids: list[int]):
        self.session, self.ids = session, ids
        self.handed: float | None = None


class SessionPool:
    """Up to ``size`` Sessions on one Model, handed out one caller at a time. Callers wait in
    arrival order; a free session whose cache shares the longest prefix with the caller's
    prompt is preferred (a chat's next turn lands where its history is cached). When another
    session of the pool, free or busy, holds a longer prefix of the prompt, the one handed
    out copies its K/V entries first (Session.copy_prefix): once a session holds a system
    prompt or a template's preamble, requests that share it do not evaluate it again.
    Requests that start together, before any session holds it: each waits for the earliest
    running request whose prompt shares at least ``COLD_SHARE_MIN`` more positions with its
    own to evaluate them, then copies them (``cold_waits`` counts those waits), rather than
    evaluating them beside it. ``shared_tokens`` counts the positions copied."""

    COLD_SHARE_MIN = 16        # positions worth waiting for
    COLD_SHARE_MAX_S = 60.0    # the longest wait (a leader that stops short: its prompt cut to fit n_ctx)
    COLD_SHARE_IDLE_S = 0.5    # a leader handed its session this long ago that is not using it is not waited for

    def __init__(self, model: Model, size: int = 1, **session_kw):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidRequestError(f"the pool size must be an int >= 1, got {size!r}", "n_sessions")
        self.model, self.size, self.session_kw = model, size, session_kw
        self._free: list[Session] = []
        self._all: list[Session] = []       # every open session, free or busy: the prefix sources
        self._created = 0
        self.shared_tokens = 0
        self.cold_waits = 0
        # the requests handed a session with a prompt, in the order they were; a request waits
        # only for those before it, so waits form no cycle
        self._running: list[_Running] = []
        self._cond = threading.Condition()
        self._line: collections.deque = collections.deque()     # waiting callers, first come first
        self._closed = False

    @property
    def waiting(self) -> int:
        return len(self._line)

    @property
    def busy(self) -> int:
        return self._created - len(self._free)

    def acquire(self, ids=None, timeout: float | None = None, cancel: CancelHandle | None = None) -> Session:
        """A session for a prompt (``ids``: the one whose cached prefix is longest is preferred),
        after the callers ahead in line. Raises TimeoutError after ``timeout`` s, Cancelled
        when ``cancel`` is cancelled while it waits (in line, or for a cold start's leader),
        ModelClosedError once the pool is closed."""
        ticket = object()
        deadline = None if timeout is None else time.monotonic() + timeout
        unhook = cancel._on_cancel(self._wake) if cancel is not None else None
        try:
            return self._acquire(ticket, ids, timeout, deadline, cancel)
        finally:
            if unhook is not None:
                unhook()

    def _wake(self):
        with self._cond:
            self._cond.notify_all()

    def _acquire(self, ticket, ids, timeout, deadline, cancel):
        with self._cond:
            self._line.append(ticket)
            try:
                while True:
                    if self._closed:
                        raise ModelClosedError("the session pool is closed (its LLM was closed)")
                    if cancel is not None and cancel.cancelled:
                        raise Cancelled("the request was cancelled while it waited for a session")
                    if self._line[0] is ticket and (self._free or self._created < self.size):
                        break
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"no free session within {timeout} s")
                    self._cond.wait(left)
            finally:
                self._line.remove(ticket)
                self._cond.notify_all()      # the next in line may go now
            if self._free:
                best = max(range(len(self._free)), key=lambda i: common_prefix(self._free[i].tokens, ids or []))
                s = self._free.pop(best)
            else:
                s = None
                self._created += 1
            ahead = list(self._running)      # the requests handed out before this one, still running
            entry = None
            if ids:
                entry = _Running(s, list(ids))
                self._running.append(entry)
        if s is None:
            try:
                s = Session(self.model, **self.session_kw)
            except BaseException:
                with self._cond:
                    self._created -= 1
                    if entry is not None:
                        self._running.remove(entry)
                    self._cond.notify_all()
                raise
            with self._cond:
                self._all.append(s)
                if entry is not None:
                    entry.session = s
        if entry is not None:
            try:
                self._share(s, ids, ahead, cancel)
            except BaseException:
                self.release(s)
                raise
            with self._cond:
                entry.handed = time.monotonic()
        return s

    def _share(self, s, ids, ahead, cancel=None):
        with self._cond:
            sources = [o for o in self._all if o is not s]
        own = common_prefix(s.tokens, ids)
        got = s.copy_prefix(ids, sources) if sources else own
        # cold start: an earlier request that will hold more of this prompt than any session does
        # (the last position is evaluated anyway, for its logits). One that ends short of it (it
        # was cancelled) hands the wait on to the next such request still running, if any
        waited = False
        while ahead:
            leader, want = None, got + self.COLD_SHARE_MIN - 1
            for e in ahead:
                c = min(common_prefix(e.ids, ids), len(ids) - 1)
                if c > want:
                    leader, want = e, c
            if leader is None:
                break
            if not waited:
                with self._cond:
                    self.cold_waits += 1
                waited = True
            o = self._await(leader, s, ids, want, cancel)
            if o is not None:
                got = max(got, s.copy_prefix(ids, [o]))
            with self._cond:
                ahead = [e for e in ahead if e is not leader and any(e is r for r in self._running)]
        if got > own:
            with self._cond:
                self.shared_tokens += got - own

    def _await(self, leader, s, ids, want, cancel=None):
        # until the leader's session holds the first ``want`` positions of ids (its prompt's
        # evaluation went past them), or it is given back (it may hold them: a short request
        # ends between two looks), or it idles (its caller holds it but runs nothing on it:
        # COLD_SHARE_IDLE_S after acquire() returned it), or it went past them with other
        # tokens (its prompt was cut to fit n_ctx: three looks in a row), or COLD_SHARE_MAX_S
        # -> that session, or None (the pool closed, or a session that cannot be copied from:
        # another KV type or adapters). Polled (a batcher's pass takes 5-300 ms): its n_past,
        # the tokens only then. Cancelled when ``cancel`` is
        deadline = time.monotonic() + self.COLD_SHARE_MAX_S
        pause = 0.001
        past = 0
        while True:
            if cancel is not None and cancel.cancelled:
                raise Cancelled("the request was cancelled while it waited for a cold start's shared prefix")
            with self._cond:
                o, handed = leader.session, leader.handed
                gone = not any(e is leader for e in self._running)
                if self._closed or (o is None and gone):
                    return None
                if gone:
                    return o
            if handed is not None and o is not None and not o._busy.locked() and \
                    time.monotonic() - handed > self.COLD_SHARE_IDLE_S:
                return o
            st = o._state if o is not None else None
            if o is not None and (st is None or o.kv_f16 != s.kv_f16 or o._adapters() != s._adapters()):
                return None
            if st is not None and st.n_past >= want:
                if common_prefix(st.tokens(), ids) >= want:
                    return o
                past += 1
                if past >= 3:
                    return o
            else:
                past = 0
            if time.monotonic() >= deadline:
                return o
            time.sleep(pause)
            pause = min(2 * pause, 0.01)

    def release(self, session: Session) -> None:
        with self._cond:
            for i, e in enumerate(self._running):
                if e.session is session:
                    del self._running[i]
                    break
            if self._closed:
                session.close()
                if session in self._all:
                    self._all.remove(session)
            else:
                self._free.append(session)
            self._cond.notify_all()

    @contextmanager
    def session(self, ids=None, timeout=None, cancel=None):
        s = self.acquire(ids, timeout, cancel)
        try:
            yield s
        finally:
            self.release(s)

    def close(self) -> None:
        """Close the free sessions; the running calls are cancelled (they end within a token,
        as cancelled) and their sessions closed as they come back; callers waiting in line get
        ModelClosedError."""
        with self._cond:
            self._closed = True
            for s in self._free:
                s.close()
                self._all.remove(s)
            self._free.clear()
            busy = list(self._all)
            self._cond.notify_all()
        for s in busy:
            s.hold_cancel()


# ---- request checks ----------------------------------------------------------------------
def _number(name, v, lo=None, hi=None, integer=False):
    ok_type = int if integer else (int, float)
    if isinstance(v, bool) or not isinstance(v, ok_type):
        raise InvalidRequestError(f"{name} must be {'an integer' if integer else 'a number'}, got {v!r}", name)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InvalidRequestError(f"{name}={v!r} is outside [{lo}, {hi}]", name)
    return v


def _dry(multiplier=DEFAULTS["dry_multiplier"], base=DEFAULTS["dry_base"], allowed=DEFAULTS["dry_allowed_length"],
         last_n=DEFAULTS["dry_penalty_last_n"], breakers=None):
    """llama-server's DRY parameters -> SamplingParams' (checked, named as the request names them)."""
    _number("dry_multiplier", multiplier, 0)
    _number("dry_base", base, 1)
    _number("dry_allowed_length", allowed, 0, 2**31 - 1, integer=True)
    _number("dry_penalty_last_n", last_n, -1, 2**31 - 1, integer=True)
    if breakers is None:
        breakers = DEFAULTS["dry_sequence_breakers"]
    elif not isinstance(breakers, list) or not all(isinstance(b, str) and b for b in breakers):
        raise InvalidRequestError(f"dry_sequence_breakers must be a list of non-empty strings, got {breakers!r:.80}",
                                  "dry_sequence_breakers")
    return {"dry_multiplier": float(multiplier), "dry_base": float(base), "dry_allowed_length": allowed,
            "dry_penalty_last_n": last_n, "dry_sequence_breakers": tuple(breakers)}


def _stops(stop):
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) for s in stops):
        raise InvalidRequestError(f"stop must be a string or a list of strings, got {stop!r}", "stop")
    if len(stops) > 16:
        raise InvalidRequestError(f"stop has {len(stops)} strings; at most 16", "stop")
    for i, s in enumerate(stops):
        problem = unicode_problem(s)
        if problem:
            raise InvalidRequestError(f"stop[{i}] is not valid Unicode: {problem}", "stop")
    return [s for s in stops if s]


def _logit_bias(bias, n_vocab):
    out = {}
    if bias is None:
        return out
    if not isinstance(bias, dict):
        raise InvalidRequestError(f"logit_bias must be an object of token id -> bias, got {bias!r:.60}", "logit_bias")
    for k, v in bias.items():
        try:
            tok = int(k)
        except (TypeError, ValueError):
            raise InvalidRequestError(f"logit_bias key {k!r} is not a token id", "logit_bias") from None
        if not 0 <= tok < n_vocab:
            raise InvalidRequestError(f"logit_bias token id {tok} is outside [0, {n_vocab})", "logit_bias")
        out[tok] = float(_number("logit_bias", v, -100, 100))
    return out


def _text_of(content, i):
    # a message's content: a string, or a list of text parts
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise InvalidRequestError(f"messages[{i}].content: only text parts are supported, got {p!r:.80}",
                                          f"messages[{i}].content")
            parts.append(p["text"])
        return "".join(parts)
    raise InvalidRequestError(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}]")


def _template_kwargs(kw) -> dict | None:
    """chat_template_kwargs: a JSON object of variables for the chat template, or None."""
    if kw is None:
        return None
    if not isinstance(kw, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kw):
        raise InvalidRequestError("chat_template_kwargs must be an object whose keys are names", "chat_template_kwargs")
    reserved = sorted(set(kw) & {"messages", "add_generation_prompt", "bos_token", "eos_token"})
    if reserved:
        raise InvalidRequestError(f"chat_template_kwargs cannot set {', '.join(reserved)}", "chat_template_kwargs")
    return kw


def normalize_messages(messages) -> list[dict]:
    """OpenAI chat messages -> [{"role", "content"}] with text content, plus an assistant's
    ``tool_calls`` (arguments parsed into objects, as HF gives them to templates; content
    may then be None) and a tool message's ``tool_call_id``; anything else is an
    InvalidRequestError naming the message (images are not supported)."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidRequestError(f"messages[{i}] must be an object", f"messages[{i}]")
        role = m.get("role")
        if role not in ROLES:
            raise InvalidRequestError(f"messages[{i}].role {role!r} is not one of {list(ROLES)}",
                                      f"messages[{i}].role")
        content = m.get("content")
        msg = {"role": "system" if role == "developer" else role}
        if role == "assistant" and m.get("tool_calls"):
            msg["content"] = None if content is None else _text_of(content, i)
            msg["tool_calls"] = tc.check_tool_calls(m["tool_calls"], i)
        else:
            msg["content"] = _text_of(content, i)
        if role == "tool":
            cid = m.get("tool_call_id")
            if not isinstance(cid, str):    # OpenAI requires it: it ties the result to its call
                raise InvalidRequestError(f"messages[{i}].tool_call_id must be a string (the id of the call this "
                                          f"message answers), got {cid!r:.40}", f"messages[{i}].tool_call_id")
            msg["tool_call_id"] = cid
        out.append(msg)
    return out


def _response_format(rf) -> dict:
    """OpenAI's response_format -> the constraint keywords it stands for ({} for text)."""
    if rf is None:
        return {}
    if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
        raise InvalidRequestError("response_format must be an object whose type is 'text', 'json_object' or "
                                  f"'json_schema', got {rf!r:.80}", "response_format")
    if rf["type"] == "text":
        return {}
    if rf["type"] == "json_object":
        # llama-cpp-python and llama.cpp's server take a schema here too: {"type": "json_object", "schema": {...}}
        schema = rf.get("schema", {"type": "object"})
        if not isinstance(schema, dict):
            raise InvalidRequestError("response_format.schema must be an object", "response_format.schema")
        return {"json_schema": schema}
    js = rf.get("json_schema")
    if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
        raise InvalidRequestError("response_format.json_schema must be an object with a 'schema' object",
                                  "response_format.json_schema")
    strict = js.get("strict", False)
    if not isinstance(strict, bool) and strict is not None:
        raise InvalidRequestError(f"response_format.json_schema.strict must be a boolean, got {strict!r}",
                                  "response_format.json_schema.strict")
    return {"json_schema": js.get("schema", {}), "strict": bool(strict)}


class _Request:
    """One request's checked parameters."""

    def __init__(self, llm, ids, max_tokens, stops, params, seed, n, top_n, echo_text=None, chat=False,
                 constraint=None, tools=None):
        self.llm, self.ids, self.max_tokens, self.stops, self.params = llm, ids, max_tokens, stops, params
        self.seed, self.n, self.echo_text, self.chat = seed, n, echo_text, chat
        self.top_n = top_n              # log-probabilities: None (not asked for) or how many alternatives
        self.constraint = constraint    # compile_constraint's (Constraint, type), or None
        self.tools = tools              # a _ToolPlan when the model may call tools, else None


class _ToolPlan:
    """How a request's reply may call tools: ``mode`` 'auto' (text, or calls once the
    syntax's trigger is written) or 'required' (calls only; ``name``: that function's);
    ``constraint``: the call grammar from the reply's start."""

    def __init__(self, llm, tools, mode, name, parallel):
        self.tools, self.mode, self.name, self.parallel = tools, mode, name, parallel
        self.syntax = tc.syntax_for(llm.template)
        # compiled now: a schema the engine refuses fails the call, not the stream
        self.constraint = tc.compile_tools(llm.model, tools, self.syntax, parallel, name)


class LLM:
    """A Model and a pool of Sessions behind OpenAI-shaped calls.

    ``model``: a path (GGUF or ggjt v3), an open Model, or None for the demo model.
    ``n_sessions`` sessions of ``n_ctx`` tokens each serve that many calls at once (from
    as many threads); further calls wait in line. With more than one (unless ``batch`` is
    False), their generations share passes over the weights (Model.batcher): each step
    decodes the next token of every running call at the cost of little more than one,
    on ``n_threads`` threads (default: all the cores), and a new call's prompt joins
    ``prefill_chunk`` tokens at a time between the others' tokens. Each call's tokens and
    log-probabilities are the same bits as alone. Without batching, ``n_threads`` is per
    session (default: the cores shared out among the sessions). ``kv_f16`` halves the cache's memory, as
    llama.cpp's default does, and moves the logits by about as much as llama.cpp's own
    f16 cache does (on the demo model, greedy answers can change). ``lora``: LoRA adapters
    ``[(path, scale), ...]`` applied at run time by every session (Session's ``lora``);
    ``lora_merge``: adapters merged into the weights at load (Model's ``lora``; a path only)."""

    def __init__(self, model: str | os.PathLike | Model | None = None, *, n_ctx: int = 2048,
                 n_sessions: int = 1, n_threads: int | None = None, n_batch: int = 64, kv_f16: bool = False,
                 template: str | None = None, model_name: str | None = None, batch: bool | None = None,
                 prefill_chunk: int = 32, lora=None, lora_merge=None):
        if model is None:
            from .demo import demo_model_path
            model = demo_model_path()
        self._owns_model = not isinstance(model, Model)
        if batch is None:
            batch = not isinstance(n_sessions, bool) and isinstance(n_sessions, int) and n_sessions > 1
        if n_threads is None:
            n_threads = default_threads() if batch else max(1, default_threads() // max(1, n_sessions))
        if lora_merge and isinstance(model, Model):
            raise InvalidRequestError("lora_merge needs a model path: a loaded Model's weights are shared as they are; "
                                      "load it with Model(path, lora=...)", "lora_merge")
        self.model: Model = model if isinstance(model, Model) else Model(model, n_threads=n_threads, lora=lora_merge)
        self.model_name = model_name or os.path.basename(str(self.model.path))
        self.n_ctx = n_ctx
        # run-time adapters: read once, each session its own tables over the shared A and B
        self.lora = _lora.check(self.model, _lora.normalize(lora))
        self.batcher = None
        if batch:
            if isinstance(n_sessions, bool) or not isinstance(n_sessions, int) or n_sessions < 1:
                raise InvalidRequestError(f"the pool size must be an int >= 1, got {n_sessions!r}", "n_sessions")
            self.batcher = self.model.batcher(max_seqs=n_sessions, chunk=prefill_chunk, n_threads=n_threads)
        self.pool = SessionPool(self.model, n_sessions, n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads,
                                kv_f16=kv_f16, template=template, batcher=self.batcher, lora=self.lora or None)
        self._rate_lock = threading.Lock()
        self._rate = collections.deque([(time.monotonic(), 0)])     # batch_stats' marks
        first = self.pool.acquire()             # made now: bad settings fail here, not on a request
        self.template = first.template          # every session's chat format; None: Guanaco's ### Human:
        self.pool.release(first)
        self.created = int(time.time())

    # -- requests -------------------------------------------------------------------------
    def _sampling(self, temperature, top_p, top_k, min_p, typical_p, frequency_penalty, presence_penalty,
                  repeat_penalty, logit_bias, n_probs, dry=()):
        _number("temperature", temperature, 0, 2)
        _number("top_p", top_p, 0, 1)
        _number("top_k", top_k, -(2**31 - 1), 2**31 - 1, integer=True)
        _number("min_p", min_p, 0, 1)
        _number("typical_p", typical_p, 0, 1)
        _number("frequency_penalty", frequency_penalty, -2, 2)
        _number("presence_penalty", presence_penalty, -2, 2)
        _number("repeat_penalty", repeat_penalty, 0)
        if top_p == 0:
            temperature = 0.0               # OpenAI: top_p 0 keeps only the most likely token
        bias = _logit_bias(logit_bias, self.model.n_vocab)
        dry = _dry(*dry)
        try:
            return SamplingParams(temperature=float(temperature), top_k=top_k, top_p=float(top_p) or 1.0,
                                  min_p=float(min_p), typical_p=float(typical_p) or 1.0,
                                  repetition_penalty=float(repeat_penalty) or 1.0,
                                  frequency_penalty=float(frequency_penalty),
                                  presence_penalty=float(presence_penalty),
                                  logit_bias=bias, n_probs=n_probs, **dry)
        except ValueError as e:
            raise InvalidRequestError(str(e)) from None

    def _max_tokens(self, max_tokens, n_prompt, param):
        if n_prompt >= self.n_ctx:
            raise InvalidRequestError(f"the prompt is {n_prompt} tokens; this model's context is {self.n_ctx}",
                                      param, "context_length_exceeded")
        room = self.n_ctx - n_prompt
        if max_tokens is None:
            return room
        _number("max_tokens", max_tokens, 0, integer=True)
        return min(max_tokens, room)            # as llama-cpp-python: the context's end is a "length" stop

    def _common(self, n, seed):
        _number("n", n, 1, 16, integer=True)
        if seed is not None:
            _number("seed", seed, 0, 2**64 - 1, integer=True)
        return n, seed

    def _constraint(self, response_format=None, json_schema=None, grammar=None, regex=None, choices=None):
        """A request's constraint parameters, compiled (cached per schema) -> (Constraint,
        type) or None. What cannot be compiled is an InvalidRequestError (HTTP 400) naming
        the parameter and what the engine refused."""
        kw = _response_format(response_format)
        given = [k for k, v in (("json_schema", json_schema), ("grammar", grammar), ("regex", regex),
                                ("choices", choices)) if v is not None]
        if kw and given or len(given) > 1:
            names = (["response_format"] if kw else []) + given
            raise InvalidRequestError(f"give one constraint, not {' and '.join(names)}", given[-1])
        if not kw:
            kw = {"json_schema": json_schema, "grammar": grammar, "regex": regex, "choices": choices}
        param = "response_format" if response_format is not None else (given[0] if given else None)
        try:
            return compile_constraint(self.model, **kw)
        except ConstraintError as e:
            raise InvalidRequestError(str(e), param) from None

    def create_completion(self, prompt: str | list[int], max_tokens: int | None = 16,
                          temperature: float = DEFAULTS["temperature"], top_p: float = DEFAULTS["top_p"],
                          top_k: int = DEFAULTS["top_k"], min_p: float = DEFAULTS["min_p"],
                          typical_p: float = DEFAULTS["typical_p"],
                          stop: str | list[str] | None = None, seed: int | None = None,
                          frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                          repeat_penalty: float = DEFAULTS["repetition_penalty"], logit_bias: dict | None = None,
                          logprobs: int | None = None, echo: bool = False, n: int = 1, stream: bool = False,
                          stream_options: dict | None = None, cancel: CancelHandle | None = None,
                          json_schema: dict | None = None, grammar: str | None = None, regex: str | None = None,
                          choices: list[str] | None = None, dry_multiplier: float = DEFAULTS["dry_multiplier"],
                          dry_base: float = DEFAULTS["dry_base"],
                          dry_allowed_length: int = DEFAULTS["dry_allowed_length"],
                          dry_penalty_last_n: int = DEFAULTS["dry_penalty_last_n"],
                          dry_sequence_breakers: list[str] | None = None):
        """OpenAI's /v1/completions: a ``text_completion`` dict, or with ``stream`` an iterator
        (with ``cancel()``) of ``text_completion`` chunks. ``prompt``: text (BOS is added as
        the file says) or token ids. ``cancel``: a ``CancelHandle`` another thread may use to
        stop the call, before it starts too (a stream's own ``cancel()`` does the same). ``json_schema``,
        ``grammar`` (GBNF or Lark), ``regex``, ``choices``: at most one constraint on the
        text (see Session.generate)."""
        n, seed = self._common(n, seed)
        constraint = self._constraint(None, json_schema, grammar, regex, choices)
        if logprobs is not None:
            _number("logprobs", logprobs, 0, MAX_TOP_LOGPROBS, integer=True)
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = self.model.tokenize(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                         for t in prompt):
            if min(prompt) < 0 or max(prompt) >= self.model.n_vocab:
                raise InvalidRequestError(f"prompt token ids must be in [0, {self.model.n_vocab})", "prompt")
            ids = list(prompt)
        else:
            raise InvalidRequestError("prompt must be a string, a list of one string, or a non-empty list of "
                                      "token ids", "prompt")
        if not ids:
            raise InvalidRequestError("the prompt is empty", "prompt")
        params = self._sampling(temperature, top_p, top_k, min_p, typical_p, frequency_penalty, presence_penalty,
                                repeat_penalty, logit_bias, 0 if logprobs is None else max(1, logprobs),
                                (dry_multiplier, dry_base, dry_allowed_length, dry_penalty_last_n,
                                 dry_sequence_breakers))
        req = _Request(self, ids, self._max_tokens(max_tokens, len(ids), "prompt"), _stops(stop), params, seed, n,
                       logprobs, (prompt if isinstance(prompt, str) else self.model.detokenize(ids)) if echo else None,
                       constraint=constraint)
        if stream:
            return ChunkStream(req, _include_usage(stream_options), cancel)
        return _complete(req, cancel)

    def create_chat_completion(self, messages: list[dict], max_tokens: int | None = None,
                               temperature: float = DEFAULTS["temperature"], top_p: float = DEFAULTS["top_p"],
                               top_k: int = DEFAULTS["top_k"], min_p: float = DEFAULTS["min_p"],
                               typical_p: float = DEFAULTS["typical_p"], stop: str | list[str] | None = None,
                               seed: int | None = None, frequency_penalty: float = 0.0,
                               presence_penalty: float = 0.0, repeat_penalty: float = DEFAULTS["repetition_penalty"],
                               logit_bias: dict | None = None, logprobs: bool = False,
                               top_logprobs: int | None = None, n: int = 1, stream: bool = False,
                               stream_options: dict | None = None, max_completion_tokens: int | None = None,
                               cancel: CancelHandle | None = None, chat_template_kwargs: dict | None = None,
                               response_format: dict | None = None, json_schema: dict | None = None,
                               grammar: str | None = None, regex: str | None = None,
                               choices: list[str] | None = None, tools: list[dict] | None = None,
                               tool_choice: str | dict | None = None, parallel_tool_calls: bool = True,
                               dry_multiplier: float = DEFAULTS["dry_multiplier"],
                               dry_base: float = DEFAULTS["dry_base"],
                               dry_allowed_length: int = DEFAULTS["dry_allowed_length"],
                               dry_penalty_last_n: int = DEFAULTS["dry_penalty_last_n"],
                               dry_sequence_breakers: list[str] | None = None):
        """OpenAI's /v1/chat/completions: a ``chat.completion`` dict, or with ``stream`` an
        iterator (with ``cancel()``) of ``chat.completion.chunk`` dicts. The prompt is the
        model's chat template (a GGUF file's own; Guanaco's ``### Human:`` turns for ggjt);
        message content is always text, never special tokens. ``chat_template_kwargs``: more
        variables for the chat template, as vLLM's and llama.cpp's servers take them
        (``{"enable_thinking": false}`` for Qwen3). A stream gives its session
        back when it ends, is closed (or its ``with`` block left), or is dropped.
        ``response_format`` (OpenAI's json_object or json_schema) or one of ``json_schema``,
        ``grammar``, ``regex``, ``choices`` constrains the reply (see Session.generate).
        ``tools`` (OpenAI's function tools) may be called as ``tool_choice`` allows: 'auto'
        (the default with tools: text, or calls written under the call grammar once the
        model starts one), 'required' (one call or more, or exactly one without
        ``parallel_tool_calls``), a named function, or 'none'. A reply with calls has
        ``message.tool_calls`` (``arguments`` a JSON string that fits the function's
        ``parameters``), ``content`` the text before them or None, and finish_reason
        "tool_calls"; streamed, ``delta.tool_calls`` as OpenAI sends them."""
        n, seed = self._common(n, seed)
        constraint = self._constraint(response_format, json_schema, grammar, regex, choices)
        tool_list = tc.check_tools(tools) if tools is not None else None
        mode, name = tc.check_tool_choice(tool_choice, tool_list)
        if not isinstance(parallel_tool_calls, bool):
            raise InvalidRequestError(f"parallel_tool_calls must be a boolean, got {parallel_tool_calls!r}",
                                      "parallel_tool_calls")
        if mode != "none" and constraint is not None:
            raise InvalidRequestError("tools that may be called and a constraint on the reply cannot go together "
                                      "(pass tool_choice='none', or drop the constraint)", "tool_choice")
        plan = _ToolPlan(self, tool_list, mode, name, parallel_tool_calls) if mode != "none" else None
        if max_completion_tokens is not None:
            max_tokens = max_completion_tokens
        if not isinstance(logprobs, bool):
            raise InvalidRequestError(f"logprobs must be a boolean, got {logprobs!r}", "logprobs")
        if top_logprobs is not None:
            _number("top_logprobs", top_logprobs, 0, MAX_TOP_LOGPROBS, integer=True)
            if not logprobs:
                raise InvalidRequestError("top_logprobs needs logprobs=true", "top_logprobs")
        msgs = normalize_messages(messages)
        ids, default_stop = self.chat_prompt(msgs, _template_kwargs(chat_template_kwargs), tool_list,
                                             offer=mode != "none")
        stops = _stops(stop) if stop is not None else default_stop
        params = self._sampling(temperature, top_p, top_k, min_p, typical_p, frequency_penalty, presence_penalty,
                                repeat_penalty, logit_bias, max(1, top_logprobs or 0) if logprobs else 0,
                                (dry_multiplier, dry_base, dry_allowed_length, dry_penalty_last_n,
                                 dry_sequence_breakers))
        req = _Request(self, ids, self._max_tokens(max_tokens, len(ids), "messages"), stops, params, seed, n,
                       (top_logprobs or 0) if logprobs else None, chat=True, constraint=constraint, tools=plan)
        if stream:
            return ChunkStream(req, _include_usage(stream_options), cancel)
        return _complete(req, cancel)

    __call__ = create_completion

    def chat_prompt(self, messages: list[dict], variables: dict | None = None, tools: list[dict] | None = None,
                    offer: bool = True) -> tuple[list[int], list[str]]:
        """Normalized messages -> (prompt ids, default stop strings) in this model's chat format;
        ``variables``: the chat template's extra variables (Guanaco's turns have none).
        ``tools`` (checked): given to a template that takes them, else described in the
        system message (guanaco_rt.tools.FALLBACK_INTRO) when ``offer``; past calls and tool
        results become text for such a template."""
        if tc.takes_tools(self.template):
            _no_special_spelling(self.template, messages, tools)
            messages = tc.native_messages(messages)
            if tools:
                variables = {**(variables or {}), "tools": tools}
        else:
            messages = tc.fallback_messages(messages, tools if offer else None)
        if self.template is None:           # Guanaco's turns: all of it is text, no special tokens
            return self.model.tokenize(guanaco_prompt(messages)), list(DEFAULT_STOP)
        try:
            # special tokens from the template's own text only; message content is text
            ids = self.template.model_prompt_ids(self.model, messages, variables=variables)
        except ChatTemplateError as e:
            raise InvalidRequestError(str(e), "messages") from None
        return ids, []

    def create_embedding(self, input, model: str | None = None, encoding_format: str = "float",
                         dimensions: int | None = None, pooling: str | None = None,
                         cancel: CancelHandle | None = None) -> dict:
        """OpenAI's /v1/embeddings: one vector per input (a string, a list of strings, token
        ids, or lists of them), pooled (``pooling``; default the file's ``pooling_type``, else
        mean) and normalized as llama.cpp's server does; ``encoding_format`` "float" or
        "base64"; ``dimensions`` only as the model's width. Runs beside the chat sessions, on
        a sequence of its own (the Model is shared). ``cancel`` is accepted for the server's
        sake and does nothing: an embedding is one forward pass per input. ``model`` is accepted
        and ignored, as llama-cpp-python does (this LLM serves one model)."""
        from .embeddings import openai_embedding
        return openai_embedding(self.model, self.model_name, input, encoding_format, dimensions, pooling)

    def embed(self, input, normalize: bool = False, truncate: bool = True, return_count: bool = False):
        """llama-cpp-python's ``Llama.embed``: the embedding of a string (a list of floats), or
        of each string of a list (a list of them); a file whose pooling is "none" gives one
        vector per token instead. ``normalize``: to unit length (off by default, as there).
        ``truncate``: an input longer than the context keeps its first n_ctx tokens (else
        InvalidRequestError). ``return_count``: also return the number of tokens embedded."""
        from .embeddings import default_pooling, embed, token_lists
        from .errors import InvalidArgumentError
        try:
            lists = token_lists(self.model, [input] if isinstance(input, str) else input, "input")
        except InvalidArgumentError as e:
            raise InvalidRequestError(str(e), "input") from None
        if truncate:
            lists = [ids[:self.n_ctx] for ids in lists]
        elif max(len(ids) for ids in lists) > self.n_ctx:
            n = max(len(ids) for ids in lists)
            raise InvalidRequestError(f"an input is {n} tokens, above this LLM's context of {self.n_ctx} "
                                      "(truncate=True keeps the first n_ctx)", "input", "context_length_exceeded")
        vecs = embed(self.model, lists, pooling=default_pooling(self.model), normalize=normalize,
                     max_tokens=self.n_ctx)
        out = [v.tolist() for v in vecs]
        out = out[0] if isinstance(input, str) else out
        return (out, sum(len(ids) for ids in lists)) if return_count else out

    def models(self) -> dict:
        """/v1/models"""
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created,
                                            "owned_by": "guanaco_rt"}]}

    def batch_stats(self) -> dict | None:
        """What the shared passes did (None without batching): ``passes``, their mean
        ``occupancy`` (sequences a pass) and ``last_pass_s``, ``rows`` evaluated (prompt and
        generated tokens), ``members`` (calls generating now), ``queued`` (sequences waiting
        for the pass in flight), ``rows_per_s`` while a pass runs, and ``tokens_per_s``:
        rows a second since the latest call at least a second ago (or the start)."""
        if self.batcher is None:
            return None
        d = self.batcher.stats()
        now = time.monotonic()
        with self._rate_lock:
            marks = self._rate                  # (time, rows) of earlier calls, the start first
            while len(marks) > 1 and now - marks[1][0] >= 1.0:
                marks.popleft()                 # marks[0]: the latest at least a second ago
            t, rows = marks[0]
            marks.append((now, d["rows"]))
            if len(marks) > 64:
                del marks[1]
        d["tokens_per_s"] = (d["rows"] - rows) / max(now - t, 1e-9)
        return d

    def close(self) -> None:
        """Cancel the running calls (a generation that has started ends within a token, as
        cancelled; a call still setting up raises ModelClosedError), fail the waiting ones with
        ModelClosedError, stop the batcher, and close the Model if this LLM opened it."""
        self.pool.close()
        if self.batcher is not None:
            self.batcher.close()
        if self._owns_model:
            self.model.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc):
        self.close()


def _no_special_spelling(template, messages, tools):
    """The template writes tools and calls' arguments as JSON of its own (message content is
    guarded by ChatTemplate.prompt_ids, these are not): one that spells a special token
    (``<|im_end|>``) would become that token, so it is refused, naming where it is."""
    rx = template.special_rx
    if rx is None:
        return
    spots = [(f"tools[{i}]", t) for i, t in enumerate(tools or [])]
    spots += [(f"messages[{i}].tool_calls[{j}].function", c["function"])
              for i, m in enumerate(messages) for j, c in enumerate(m.get("tool_calls") or [])]
    for where, value in spots:
        hit = rx.search(json.dumps(value, ensure_ascii=False))
        if hit:
            raise InvalidRequestError(f"{where} spells the special token {hit.group()!r}, which this chat template "
                                      "would write as that token", where)


def _include_usage(opts):
    if opts is None:
        return False
    if not isinstance(opts, dict):
        raise InvalidRequestError("stream_options must be an object", "stream_options")
    return bool(opts.get("include_usage", False))


# ---- running a request -----------------------------------------------------------------
def _finish(reason):
    return {"stop": "stop", "eos": "stop", "no_candidates": "stop", "length": "length",
            "context_full": "length"}.get(reason, reason)


def _run(session, req, callback_stream=True):
    """One choice's TextStream on ``session`` (reseeded when the request has a seed)."""
    if req.seed is not None:
        session.sampler.set_state(Sampler(req.seed).state)
    return session._stream(req.ids, req.max_tokens, req.stops, req.params, {}, callback_stream,
                           n_keep=session.n_keep, constraint=req.constraint)


def _resume_point(model, ids, gen, text):
    """Where a free reply that stopped at a call's trigger goes on under the call grammar:
    (prompt ids + the generated tokens wholly inside ``text``, the rest of ``text`` that the
    grammar must write first, tokens kept). The session still caches that prefix."""
    target, acc, k = text.encode("utf-8"), b"", 0
    for t in gen:
        b = model.tokenizer.token_bytes(t)
        if not target.startswith(acc + b):
            break
        acc, k = acc + b, k + 1
    while k:
        try:
            acc.decode("utf-8")
            break
        except UnicodeDecodeError:      # a character split between tokens: resume before it
            k -= 1
            acc = acc[:len(acc) - len(model.tokenizer.token_bytes(gen[k]))]
    return list(ids) + list(gen[:k]), target[len(acc):].decode("utf-8"), k


def _tool_events(s, req, seen_text=None):
    """One choice of a request that may call tools, on session ``s``: yields ("text", piece)
    and ("calls", [tool_calls deltas]); returns (content text, calls, finish reason,
    tokens generated). 'auto' runs free with the syntax's trigger as a stop string; if the
    reply stopped there, it goes on from its text under the call grammar (llama.cpp's lazy
    grammar, done as two generations on the same cached prefix)."""
    plan, m = req.tools, req.llm.model
    ids, budget, constraint, lead, kept, text = req.ids, req.max_tokens, plan.constraint, "", 0, ""
    if req.seed is not None:
        s.sampler.set_state(Sampler(req.seed).state)
    if plan.mode == "auto":
        with s._stream(req.ids, req.max_tokens, req.stops + [plan.syntax.trigger], req.params, {}, True,
                       n_keep=s.n_keep) as stream:
            for piece in _pieces(stream):
                yield "text", piece
        res = stream.result
        text = res.text
        written = b"".join(m.tokenizer.token_bytes(t) for t in res.tokens).decode("utf-8", "replace")
        if res.finish_reason != "stop" or plan.syntax.trigger not in written[len(text):]:
            return text, [], _finish(res.finish_reason), len(res.tokens)
        ids, lead, kept = _resume_point(m, req.ids, res.tokens, text)
        budget = max(0, req.max_tokens - kept)
        constraint = tc.compile_tools(m, plan.tools, plan.syntax, plan.parallel, plan.name, lead)
    reader = tc.CallReader(plan.syntax, len(lead))
    held, ready, repeat = [], [], None         # deltas of a second or later call, sent once it is complete
    with s._stream(ids, budget, [], req.params, {}, True, n_keep=s.n_keep, constraint=constraint) as stream:
        for piece in _pieces(stream):
            for d in reader.feed(piece):
                (held if d["index"] else ready).append(d)
            while held and reader.n_done > held[0]["index"]:
                k = held[0]["index"]
                if reader.repeats(k):
                    # a call made again word for word: a small model looping through the
                    # grammar's "one more call"; the reply ends before it
                    repeat = k
                    break
                ready += [d for d in held if d["index"] == k]
                held = [d for d in held if d["index"] != k]
            if ready:
                yield "calls", ready
                ready = []
            if repeat is not None:
                n_gen = len(stream.tokens_so_far()[0])
                break
        else:
            n_gen = len(stream.result.tokens)
    calls = [c for k, c in enumerate(reader.calls) if c in reader.complete() and (repeat is None or k < repeat)]
    reason = "tool_calls" if calls else _finish(stream.result.finish_reason)
    cut = [c for c in reader.calls if c not in calls and not any(
        d["function"]["name"] == c["function"]["name"]
        and d["function"]["arguments"].startswith(c["function"]["arguments"]) for d in calls)]
    if repeat is None and _finish(stream.result.finish_reason) == "length" and cut:
        # a call cut by max_tokens: as OpenAI, it is in the reply with the arguments written so far
        # (not valid JSON) and the reply ends in "length", so the cut shows. One that so far
        # repeats a complete call is the loop the repeat rule above ends, and is left out.
        calls, reason = calls + cut, "length"
    return text, calls, reason, kept + n_gen


def _run_tools(s, req, on_event=None):
    """_tool_events to its end -> its return value (``on_event`` sees each event)."""
    events = _tool_events(s, req)
    try:
        while True:
            ev = next(events)
            if on_event is not None:
                on_event(ev)
    except StopIteration as stop:
        return stop.value


def _pieces(stream):
    """A TextStream's pieces; then its GenerationResult is in ``stream.result``, a full
    context included (that is a 'length' stop here, not an error)."""
    try:
        yield from stream
    except ContextFullError as e:
        if getattr(e, "result", None) is None:
            raise InvalidRequestError(str(e), "prompt", "context_length_exceeded") from None
        stream.result = e.result


def _token_text(model, tok):
    return model.tokenizer.token_bytes(tok).decode("utf-8", errors="replace")


def _logprobs(req, toks, top, own, offset0=0):
    """Log-probabilities of ``toks`` in the response's shape (chat or legacy completion)."""
    if req.top_n is None or own is None:
        return None
    m = req.llm.model
    if req.chat:
        content = []
        for t, lp, tops in zip(toks, own, top):
            b = m.tokenizer.token_bytes(t)
            content.append({"token": b.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(b),
                            "top_logprobs": [{"token": _token_text(m, i), "logprob": v,
                                              "bytes": list(m.tokenizer.token_bytes(i))}
                                             for i, v in tops[:req.top_n]]})
        return {"content": content}
    texts = [_token_text(m, t) for t in toks]
    offsets, pos = [], offset0
    for s in texts:
        offsets.append(pos)
        pos += len(s)
    return {"tokens": texts, "token_logprobs": list(own),
            "top_logprobs": [{_token_text(m, i): v for i, v in tops[:req.top_n]} for tops in top],
            "text_offset": offsets}


def _usage(n_prompt, n_completion, cached=0):
    # OpenAI's usage; prompt_tokens_details.cached_tokens: the prompt positions whose K/V were
    # already in the session's cache, its own or copied from another's (SessionPool)
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _cached(s, cached):
    # the first generation's reused prompt positions (later choices of n > 1 reuse them all)
    r = s.last_result
    return r.timings.reused_tokens if cached is None and r is not None else cached


class CancelHandle:
    """Cancel a request from any thread: it stops waiting for a session (in line, or for a
    cold start's leader), or its generation stops within a token, or it does not start."""

    def __init__(self):
        self._lock = threading.Lock()
        self._session = None
        self._wakers: list = []
        self.cancelled = False

    def cancel(self):
        with self._lock:
            self.cancelled = True
            session, wakers = self._session, list(self._wakers)
        if session is not None:
            session.hold_cancel()
        for wake in wakers:
            wake()

    def _on_cancel(self, wake):
        # wake() when cancel() is called (a waiter's condition) -> the call that unhooks it
        with self._lock:
            self._wakers.append(wake)

        def unhook():
            with self._lock:
                self._wakers.remove(wake)
        return unhook

    @contextmanager
    def running_on(self, session):
        # while the request holds ``session``: a cancel(), before or during, cancels every call on it
        with self._lock:
            self._session = session
            held = self.cancelled
        if held:
            session.hold_cancel()
        try:
            yield
        finally:
            with self._lock:
                self._session = None
            session.hold_cancel(False)


@contextmanager
def _held(req, handle):
    """req's session from its LLM's pool, cancelled with ``handle`` -> it, or None when the
    handle was cancelled while the request waited for it"""
    try:
        s = req.llm.pool.acquire(req.ids, cancel=handle)
    except Cancelled:
        yield None
        return
    try:
        with handle.running_on(s):
            yield s
    finally:
        req.llm.pool.release(s)


def _complete(req, handle=None):
    handle = handle or CancelHandle()
    choices, n_completion, cached = [], 0, None
    with _held(req, handle) as s:
        if s is None:
            choices.append({"index": 0, "logprobs": None, "finish_reason": "cancelled",
                            **({"message": {"role": "assistant", "content": ""}} if req.chat else {"text": ""})})
        for i in range(req.n if s is not None else 0):
            if req.tools is not None:
                text, calls, reason, n_gen = _run_tools(s, req)
                cached = _cached(s, cached)
                n_completion += n_gen
                msg = {"role": "assistant", "content": text if text.strip() or not calls else None}
                if calls:
                    msg["tool_calls"] = calls
                choices.append({"index": i, "message": msg, "logprobs": None, "finish_reason": reason})
                if handle.cancelled:
                    break
                continue
            with _run(s, req, callback_stream=False) as stream:
                for _ in _pieces(stream):
                    pass
            res = stream.result
            cached = _cached(s, cached)
            n_completion += len(res.tokens)
            lp = _logprobs(req, res.tokens, res.logprobs or [], res.token_logprobs,
                           len(req.echo_text) if req.echo_text else 0)
            if req.chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": res.text},
                                "logprobs": lp, "finish_reason": _finish(res.finish_reason)})
            else:
                choices.append({"index": i, "text": (req.echo_text or "") + res.text, "logprobs": lp,
                                "finish_reason": _finish(res.finish_reason)})
            if handle.cancelled:
                break
    return {"id": ("chatcmpl-" if req.chat else "cmpl-") + uuid.uuid4().hex,
            "object": "chat.completion" if req.chat else "text_completion", "created": int(time.time()),
            "model": req.llm.model_name, "choices": choices, "usage": _usage(len(req.ids), n_completion, cached or 0)}


class _Chunks:
    """One streamed request's state and its chunk generator. ChunkStream holds this and the
    generator; the generator holds only this, so dropping the ChunkStream closes the
    generator (and gives its session back) by reference counting alone."""

    def __init__(self, req, include_usage, handle=None):
        self.req, self.include_usage = req, include_usage
        self.id = ("chatcmpl-" if req.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.handle = handle or CancelHandle()
        self.finish_reason = None
        self.usage = None

    def _chunk(self, choice, usage=None):
        c = {"id": self.id, "object": "chat.completion.chunk" if self.req.chat else "text_completion",
             "created": self.created, "model": self.req.llm.model_name, "choices": [choice] if choice else []}
        if usage is not None:
            c["usage"] = usage
        return c

    def _choice(self, i, text, lp, finish, role=False):
        if self.req.chat:
            delta = {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
            return {"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}
        return {"index": i, "text": text, "logprobs": lp, "finish_reason": finish}

    def run(self):
        req, handle = self.req, self.handle
        n_completion, cached = 0, None
        with _held(req, handle) as s:
            if s is None:
                self.finish_reason = "cancelled"
                yield self._chunk(self._choice(0, "", None, "cancelled", role=True))
            for i in range(req.n if s is not None else 0):
                if handle.cancelled:
                    break
                if req.chat:
                    yield self._chunk(self._choice(i, "", None, None, role=True))
                elif req.echo_text:
                    yield self._chunk(self._choice(i, req.echo_text, None, None))
                if req.tools is not None:
                    events = _tool_events(s, req)
                    while True:
                        try:
                            kind, value = next(events)
                        except StopIteration as stop:
                            _, _, reason, n_gen = stop.value
                            break
                        if kind == "text":
                            yield self._chunk(self._choice(i, value, None, None))
                        else:
                            yield self._chunk({"index": i, "delta": {"tool_calls": value}, "logprobs": None,
                                               "finish_reason": None})
                    n_completion += n_gen
                    cached = _cached(s, cached)
                    self.finish_reason = reason
                    yield self._chunk(self._choice(i, "", None, reason))
                    continue
                with _run(s, req) as stream:
                    seen, offset = 0, len(req.echo_text or "")
                    for piece in _pieces(stream):
                        toks, top, own = stream.tokens_so_far()
                        lp = _logprobs(req, toks[seen:], (top or [])[seen:], own and own[seen:], offset)
                        seen, offset = len(toks), offset + len(piece)
                        yield self._chunk(self._choice(i, piece, lp, None))
                res = stream.result
                cached = _cached(s, cached)
                n_completion += len(res.tokens)
                self.finish_reason = _finish(res.finish_reason)
                yield self._chunk(self._choice(i, "", None, self.finish_reason))
        self.usage = _usage(len(req.ids), n_completion, cached or 0)
        if self.include_usage:
            yield self._chunk(None, self.usage)


class ChunkStream:
    """Iterator of OpenAI stream chunks for one request. ``cancel()`` (any thread) ends the
    generation at the next token; ``close()``, leaving a ``with`` block, or dropping the
    last reference also gives its session back at once."""

    def __init__(self, req, include_usage=False, cancel=None):
        self._state = _Chunks(req, include_usage, cancel)
        self._it = self._state.run()
        self.req, self.include_usage = req, include_usage
        self.id, self.created = self._state.id, self._state.created

    @property
    def finish_reason(self) -> str | None:
        return self._state.finish_reason

    @property
    def usage(self) -> dict | None:
        return self._state.usage

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        return next(self._it)

    def cancel(self) -> None:
        self._state.handle.cancel()

    def close(self) -> None:
        self._it.close()

    def __enter__(self) -> ChunkStream:
        return self

    def __exit__(self, *exc):
        self.close()
