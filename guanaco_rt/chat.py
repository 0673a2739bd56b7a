"""Conversation turns and how they become the prompt: the Guanaco template, or a model's
own chat template (Jinja2, from a GGUF file's tokenizer.chat_template).

Owns: how a system line and (human, assistant) turns become the prompt text, and for a
chat template the prompt's token ids: special tokens come only from the template's own
text, never from message content (ChatTemplate.prompt_ids). A template is parsed on
first use and rendered in a sandbox with a time and a size limit.
Guanaco was trained on ``### Human: ... ### Assistant: ...`` turns; it goes on
writing ``### Human:`` turns unless generation stops there, so that is the
default stop string. The prompt ends in ``### Assistant:`` with no trailing
space: the model's first token carries its own leading space.
"""
import re
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from .errors import ChatTemplateError

DEFAULT_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")
HUMAN = "### Human:"
ASSISTANT = "### Assistant:"
DEFAULT_STOP = [HUMAN]


def format_turn(message, reply=None):
    """One turn: '### Human: {message}\n### Assistant:' plus ' {reply}' when answered."""
    turn = [{"role": "user", "content": message}]
    if reply is not None:
        turn.append({"role": "assistant", "content": reply})
    return guanaco_prompt(turn, default_system="")


def guanaco_prompt(messages, default_system=DEFAULT_SYSTEM):
    """[{"role", "content"}] messages (OpenAI's, or Conversation.messages()) -> Guanaco prompt
    text: the system line (the leading system messages, else ``default_system``), then
    ``### Human:`` / ``### Assistant:`` turns, ending in ``### Assistant:`` (or inside the
    last assistant message, which the model then continues). The one writer of the format."""
    i, system = 0, []
    while i < len(messages) and messages[i]["role"] == "system":
        system.append(messages[i]["content"])
        i += 1
    system_line = "\n".join(system) if i else default_system
    parts = [f"{system_line}\n" if system_line else ""]
    for m in messages[i:]:
        if m["role"] == "user":
            parts.append(f"{HUMAN} {m['content'].strip()}\n")
        elif m["role"] == "assistant":
            parts.append(f"{ASSISTANT} {m['content'].strip()}\n")
        else:                               # a system message between turns: its own line
            parts.append(f"{m['content'].strip()}\n")
    if messages[-1]["role"] == "assistant":
        return "".join(parts)[:-1]          # continue the reply
    return "".join(parts) + ASSISTANT


@dataclass
class Conversation:
    system: str = DEFAULT_SYSTEM
    turns: list = field(default_factory=list)   # [(human message, assistant reply)]

    def system_text(self):
        return f"{self.system}\n" if self.system else ""

    def messages(self, message=None, first_turn=0):
        """The conversation (turns from ``first_turn`` on) as role/content messages, plus
        ``message`` as the new user turn; no system message when the system text is empty."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        for human, reply in self.turns[first_turn:]:
            out += [{"role": "user", "content": human}, {"role": "assistant", "content": reply}]
        if message is not None:
            out.append({"role": "user", "content": message})
        return out

    def prompt(self, message, first_turn=0):
        """Prompt text for a new ``message`` after the turns from ``first_turn`` on."""
        return guanaco_prompt(self.messages(message, first_turn), default_system="")

    def add(self, message, reply):
        self.turns.append((message, reply))

    def clear(self):
        self.turns.clear()


# ---- chat templates (GGUF tokenizer.chat_template) -------------------------------------
MAX_RENDER_SECONDS = 5.0        # a chat template's render, per call
MAX_RENDER_CHARS = 8 << 20      # characters in its output, and in any one string or list it builds
RENDER_BUDGET = 8               # all the strings and lists a render builds: this many times MAX_RENDER_CHARS
# private-use code points (plane 16) that stand in for a character of message content while
# the template renders (see ChatTemplate.prompt_ids)
_STAND_IN_FIRST = 0x100000


class _Limits:
    """One render's budget: a deadline, checked on every line the template's code runs
    (a trace function: nested loops never call into anything else), and a size limit,
    checked before each operation that could build something large."""

    def __init__(self, seconds, chars):
        self.seconds, self.chars = seconds, chars
        # per thread: one template serves an LLM's concurrent requests, each with its own budget
        self._run = threading.local()

    deadline = property(lambda self: getattr(self._run, "deadline", None),
                        lambda self, v: setattr(self._run, "deadline", v))
    spent = property(lambda self: getattr(self._run, "spent", 0), lambda self, v: setattr(self._run, "spent", v))

    def start(self):
        self.deadline = time.monotonic() + self.seconds
        self.spent = 0

    def tick(self):
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise ChatTemplateError(f"the chat template ran longer than its time limit of {self.seconds} s")

    def size(self, n, what):
        if n > self.chars:
            raise ChatTemplateError(f"the chat template would build {what} of {n} characters or items; "
                                    f"the limit is {self.chars}")
        self.spend(n)
        return n

    def spend(self, n):
        # what a render builds in all, so that many values of the size limit cannot pile up
        self.spent += n
        if self.spent > RENDER_BUDGET * self.chars:
            raise ChatTemplateError(f"the chat template built more than {RENDER_BUDGET * self.chars} characters "
                                    f"or items in all (its size limit {self.chars} x {RENDER_BUDGET})")

    def built(self, x):
        if isinstance(x, (str, list, tuple, dict)):
            self.spend(len(x))
        return x


def _length(x):
    return len(x) if isinstance(x, (str, list, tuple, dict)) else len(str(x)) if isinstance(x, int) else 0


def _check_ints(limits, args, what):
    # a width, count or repeat above the size limit (center(10**10), '%*s', indent, tojson
    # indent) would build something that large
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > limits.chars:
            limits.size(abs(a), f"{what} (an argument of {a})")


def _check_digits(limits, fmt, what):
    # '%9999999999s' and '{:>9999999999}' spell the width in the format string
    if isinstance(fmt, str):
        for run in re.findall(r"\d{" + str(len(str(limits.chars))) + ",}", fmt):
            _check_ints(limits, [int(run)], what)


def _sum_length(items, sep=""):
    items = list(items)
    return sum(_length(x) if isinstance(x, (str, list, tuple)) else len(str(x)) for x in items) \
        + len(sep) * max(0, len(items) - 1), items


class ChatTemplate:
    """A Jinja2 chat template rendered as HF transformers renders it: in an immutable
    sandbox (a template cannot touch Python objects or the file system), trim_blocks and
    lstrip_blocks, loop controls, ``raise_exception``, ``strftime_now``, ``tojson``, with
    ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``, ``tools`` and
    ``documents`` (None), and whatever ``variables`` adds (``enable_thinking``).

    The template is parsed on first use, so a template that does not parse fails the
    chat call (ChatTemplateError), not the Session or the plain generations. A render
    has a time limit (``max_seconds``) and a size limit (``max_chars``: for its output
    and for any string or list it builds on the way); going over either is a
    ChatTemplateError naming the limit, as is any other failure of the template."""

    def __init__(self, source, bos_token="", eos_token="", specials=(), max_seconds=MAX_RENDER_SECONDS,
                 max_chars=MAX_RENDER_CHARS, variables=None):
        self.source = source
        # more template variables, HF's apply_chat_template(..., **kwargs): {"enable_thinking": False}
        # for Qwen3 (messages, add_generation_prompt, bos_token and eos_token are always the call's)
        self.variables = dict(variables or {})
        self.bos_token, self.eos_token = bos_token, eos_token
        # the vocabulary's special-token spellings (control and user-defined tokens), for prompt_ids
        self.spellings = sorted({t for t in specials if t}, key=len, reverse=True)
        self.special_rx = None
        if self.spellings:
            import regex
            self.special_rx = regex.compile("|".join(regex.escape(t) for t in self.spellings))
        self.limits = _Limits(max_seconds, max_chars)
        self._template = None
        self._error = None if isinstance(source, str) else \
            f"the chat template is a {type(source).__name__}, not a string"

    # -- the sandbox -----------------------------------------------------------------------
    def _environment(self):
        import json

        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        limits = self.limits

        def bits(n, what):
            # integers: a template needs small ones; a huge product or power takes long in C
            if n > limits.chars // 64:
                raise ChatTemplateError(f"the chat template would build {what} of {n} bits; "
                                        f"the limit is {limits.chars // 64}")

        def raise_exception(message):
            raise TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            # HF's: Jinja's own escapes HTML characters; the options are json.dumps's
            _check_ints(limits, [indent], "tojson")
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                              sort_keys=sort_keys)

        def strftime_now(fmt):
            # today's date in a system prompt (Llama 3.1's "Today Date: 05 Dec 2026"), as HF gives it
            if not isinstance(fmt, str):
                raise ChatTemplateError(f"strftime_now takes a format string, got {type(fmt).__name__}")
            limits.size(len(fmt) * 16, "a strftime_now date")
            return datetime.now().strftime(fmt)

        class Bounded(ImmutableSandboxedEnvironment):
            # intercepted operators are also never folded at compile time ('a' * 10**10 would
            # be built while parsing)
            intercepted_binops = frozenset(["+", "*", "**", "%", "//", "/"])

            def call_binop(self, context, operator, left, right):
                limits.tick()
                if operator == "**" and isinstance(right, int) and isinstance(left, int) and abs(left) > 1:
                    bits(abs(right) * abs(left).bit_length(), "a power")
                elif operator == "*":
                    for a, b in ((left, right), (right, left)):
                        if isinstance(a, (str, list, tuple)) and isinstance(b, int):
                            limits.size(len(a) * max(0, b), "a repeated string or list")
                    if isinstance(left, int) and isinstance(right, int):
                        bits(left.bit_length() + right.bit_length(), "a product")
                elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)):
                    limits.size(len(left) + len(right), "a concatenation")
                elif operator == "%" and isinstance(left, str):
                    _check_digits(limits, left, "a %-format")
                    _check_ints(limits, right if isinstance(right, tuple) else [right], "a %-format")
                    limits.size(len(left) + _sum_length(right if isinstance(right, tuple) else [right])[0],
                                "a %-format")
                return limits.built(super().call_binop(context, operator, left, right))

            def call(self, __context, __obj, *args, **kwargs):
                limits.tick()
                owner = getattr(__obj, "__self__", None)
                name = getattr(__obj, "__name__", "")
                if owner is not None or name == "generate_lorem_ipsum":       # 'a'.center(n), lipsum(n)
                    _check_ints(limits, list(args) + list(kwargs.values()), "a call")
                if isinstance(owner, str):
                    if name == "join" and args:
                        n, items = _sum_length(args[0], owner)
                        limits.size(n, "a join")
                        args = (items,) + args[1:]
                    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str):
                        n = (owner.count(args[0]) if args[0] else len(owner) + 1) * len(str(args[1]))
                        limits.size(len(owner) + n, "a replace")
                    elif name == "expandtabs":
                        limits.size(len(owner) * (int(args[0]) if args and isinstance(args[0], int) else 8),
                                    "expandtabs")
                return limits.built(super().call(__context, __obj, *args, **kwargs))

            def wrap_str_format(self, value):
                # str.format and format_map come wrapped from getattr, not through call()
                wrapped = super().wrap_str_format(value)
                if wrapped is None:
                    return None
                fmt = value.__self__

                def bounded_format(*args, **kwargs):
                    limits.tick()
                    given = list(args) + list(kwargs.values())
                    for x in [fmt] + [x for x in given if isinstance(x, str)]:
                        _check_digits(limits, x, "a format")      # a width, in the format or an argument
                    _check_ints(limits, given, "a format")
                    limits.size(len(fmt) + _sum_length(given)[0], "a format")
                    return limits.built(wrapped(*args, **kwargs))
                return bounded_format

        env = Bounded(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = strftime_now
        env.filters["tojson"] = tojson

        def bounded_filter(name, f):
            skip = 1 if hasattr(f, "jinja_pass_arg") else 0     # the context or environment comes first

            def run(*args, **kwargs):
                limits.tick()
                pre, args = args[:skip], args[skip:]
                _check_ints(limits, list(args[1:]) + list(kwargs.values()), f"the {name} filter")
                value = args[0] if args else None
                if name == "join" and args:
                    sep = args[1] if len(args) > 1 else kwargs.get("d", "")
                    n, items = _sum_length(value, sep if isinstance(sep, str) else "")
                    limits.size(n, "a join")
                    args = (items,) + args[1:]
                elif name == "replace" and len(args) >= 3 and isinstance(value, str) and isinstance(args[1], str):
                    n = (value.count(args[1]) if args[1] else len(value) + 1) * len(str(args[2]))
                    limits.size(len(value) + n, "a replace")
                elif name == "indent" and isinstance(value, str):
                    width = args[1] if len(args) > 1 else kwargs.get("width", 4)
                    width = width if isinstance(width, int) else len(str(width))
                    limits.size(len(value) + (value.count("\n") + 1) * width, "an indent")
                elif name == "sum" and value is not None:
                    n, items = _sum_length(value)
                    limits.size(n, "a sum")
                    args = (items,) + args[1:]
                elif name == "format" and isinstance(value, str):
                    _check_digits(limits, value, "a format")
                    limits.size(len(value) + _sum_length(list(args[1:]) + list(kwargs.values()))[0], "a format")
                return limits.built(f(*pre, *args, **kwargs))
            if skip:
                run.jinja_pass_arg = f.jinja_pass_arg
            return run

        env.filters = {k: bounded_filter(k, f) for k, f in env.filters.items()}
        return env

    def _compiled(self):
        if self._template is None:
            if self._error is not None:
                raise ChatTemplateError(self._error)
            try:
                env = self._environment()
                with self._bounded():
                    self._template = env.from_string(self.source)
            except ChatTemplateError:
                raise                       # a limit: the next call may try again
            except Exception as e:          # noqa: BLE001 -- jinja2 raises more than TemplateError
                self._error = f"the chat template does not parse: {type(e).__name__}: {e}"
                raise ChatTemplateError(self._error) from None
            # '~' builds strings with str_join, which is neither a call nor an operator
            limits, join = self.limits, self._template.root_render_func.__globals__["str_join"]

            def str_join(seq):
                n, items = _sum_length(seq)
                limits.size(n, "a ~ concatenation")
                return join(items)

            self._template.root_render_func.__globals__["str_join"] = str_join
        return self._template

    @contextmanager
    def _bounded(self):
        limits = self.limits
        limits.start()

        def local(frame, event, arg):
            limits.tick()
            return local

        def on_call(frame, event, arg):
            limits.tick()
            # line events only in the template's own code: its loops call nothing else
            return local if frame.f_code.co_filename == "<template>" else None

        before = sys.gettrace()
        sys.settrace(on_call)
        try:
            yield
        finally:
            sys.settrace(before)
            limits.deadline = None

    def render(self, messages, add_generation_prompt=True, variables=None):
        """The template's text for ``messages`` (bounded, see the class), with the variables HF
        gives a template (``tools`` and ``documents`` None), the template's ``variables`` and
        this call's (HF's apply_chat_template keyword arguments, OpenAI servers'
        chat_template_kwargs)."""
        template = self._compiled()
        out, n = [], 0
        try:
            with self._bounded():
                for chunk in template.generate({"tools": None, "documents": None, **self.variables, **(variables or {}),
                                                "messages": messages, "add_generation_prompt": add_generation_prompt,
                                                "bos_token": self.bos_token, "eos_token": self.eos_token}):
                    n += len(chunk)
                    if n > self.limits.chars:
                        raise ChatTemplateError(f"the chat template's output is over its limit of "
                                                f"{self.limits.chars} characters")
                    out.append(chunk)
        except ChatTemplateError:
            raise
        except RecursionError:
            raise ChatTemplateError("the chat template failed: it recursed too deeply") from None
        except MemoryError:
            raise ChatTemplateError("the chat template failed: out of memory") from None
        except Exception as e:              # noqa: BLE001 -- whatever the template's code raised
            raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from None
        return "".join(out)

    # -- tokens ------------------------------------------------------------------------------
    def model_prompt_ids(self, model, messages, add_generation_prompt=True, variables=None):
        """prompt_ids with ``model``'s tokenizer, no BOS added (the template writes one if it
        wants it): what Session.chat and LLM's chat completions evaluate."""
        return self.prompt_ids(lambda text, special: model.tokenize(text, bos=False, special=special), messages,
                               add_generation_prompt, variables)

    def prompt_ids(self, tokenize, messages, add_generation_prompt=True, variables=None):
        """Messages -> prompt token ids, ``tokenize(text, special)`` turning text into ids.

        The rule: a special token (a control or user-defined token of the vocabulary, such
        as ``<|im_start|>``) comes only from the template's own text. Message content is
        always text, whatever it spells. To tell the two apart after the template has
        rendered (and perhaps trimmed, split or sliced the content), each character of a
        content at which a special token's spelling starts -- inside the content, or
        running on past its start or end -- is replaced by a private-use character while
        the template renders, then put back. A template never sees the stand-ins unless a
        message spells a special token (or part of one at its edge). Without such a
        message the ids are exactly those of the rendered text tokenized with special
        tokens on; with one, the text between the template's special tokens is tokenized
        as plain text. Not covered: a template that writes part of a spelling on each side
        of a content (the template itself would have to be written to do that)."""
        self._compiled()                    # a template that does not parse fails first
        rx = self.special_rx
        if rx is None:
            text = self.render(messages, add_generation_prompt, variables)
            if not text:
                raise ChatTemplateError(f"the chat template rendered nothing for {len(messages)} message(s)")
            return tokenize(text, False)
        contents = [m["content"] for m in messages if isinstance(m.get("content"), str)]
        heads, tails = self._edges()
        # every content position where a spelling could start (overlapping ones too)
        marks = [sorted(self._marks(c, heads, tails)) for c in contents]
        back = {}
        if any(marks):
            taken = set(self.source + self.bos_token + self.eos_token + "".join(self.spellings))
            taken = taken.union(*map(set, contents))
            code = _STAND_IN_FIRST
            for c, pos in zip(contents, marks):
                for i in pos:
                    if c[i] not in back.values():
                        while chr(code) in taken:
                            code += 1
                        back[chr(code)] = c[i]
                        code += 1
            stand_in = {v: k for k, v in back.items()}
            messages = [dict(m) for m in messages]
            it = iter(marks)
            for m in messages:
                if isinstance(m.get("content"), str):
                    pos, c = next(it), m["content"]
                    if pos:
                        chars = list(c)
                        for i in pos:
                            chars[i] = stand_in[c[i]]
                        m["content"] = "".join(chars)
        text = self.render(messages, add_generation_prompt, variables)
        if not text:
            raise ChatTemplateError(f"the chat template rendered nothing for {len(messages)} message(s)")
        restore = str.maketrans(back) if back else None
        plain = text.translate(restore) if back else text
        found = [m.span() for m in rx.finditer(text)]
        if not back or found == [m.span() for m in rx.finditer(plain)]:
            return tokenize(plain, True)        # the content spells no special token
        ids, last = [], 0
        for a, b in found:
            if a > last:
                ids += tokenize(plain[last:a], False)
            ids += tokenize(plain[a:b], True)
            last = b
        if last < len(plain):
            ids += tokenize(plain[last:], False)
        return ids

    def _edges(self):
        # proper prefixes and suffixes of the special spellings: a content ending in one (or
        # starting with one) could complete a spelling with the text beside it
        if not hasattr(self, "_edge_sets"):
            heads, tails = set(), set()
            for spelling in self.spellings:
                for k in range(1, len(spelling)):
                    heads.add(spelling[:k])
                    tails.add(spelling[k:])
            self._edge_sets = heads, tails
        return self._edge_sets

    def _marks(self, c, heads, tails):
        pos = {m.start() for m in self.special_rx.finditer(c, overlapped=True)}
        longest = max(map(len, heads), default=0)
        for k in range(1, min(longest, len(c)) + 1):
            if c[-k:] in heads:
                pos.add(len(c) - k)
            if c[:k] in tails:
                pos.add(0)
        return pos
