"""Tool calls (OpenAI's ``tools``): checking the request's tools and tool messages, showing
the tools to the model, the grammar a call is written under, and reading calls back out of
the text.

Owns: the call syntax per chat-template family, the system-prompt fallback for templates
that do not take ``tools``, and the call grammar (Lark with one ``%json`` schema per
function, compiled by guanaco_rt.constrain). Not owned: running the generation (api.py).

Two syntaxes, as the families were trained:

* Hermes / Qwen2.5 / Qwen3 (and our fallback): one block per call,
  ``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>``;
* Llama 3.x: the reply is one JSON object ``{"name": "f", "parameters": {...}}``.

A template whose source mentions ``tools`` renders them itself (Qwen2.5, Qwen3, Llama
3.1-3.3); the messages reach it as HF's apply_chat_template passes them (a call's
``arguments`` as an object). Any other template (SmolLM2's, Gemma 3's, Phi-3's) and
Guanaco's ``### Human:`` turns get FALLBACK_INTRO and the tools as JSON in the system
message; past calls become the assistant's text in the Hermes syntax and tool results
become user turns wrapped in ``<tool_response>``.
"""
from __future__ import annotations

import difflib
import json
import re
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

from .constrain import JSON_WHITESPACE, compile_constraint, vocabulary
from .errors import ConstraintError, InvalidRequestError

MAX_TOOLS = 128
NAME_RX = re.compile(r"[A-Za-z0-9_-]{1,64}")       # OpenAI's rule for a function name
EMPTY_PARAMETERS = {"type": "object", "properties": {}}
FALLBACK_INTRO = (
    "# Tools\n\nYou may call one or more functions to answer the user. Their signatures, as JSON, are "
    "within <tools></tools>:\n<tools>\n{tools}\n</tools>\n\nTo call a function, answer with a JSON object "
    "holding its name and arguments within <tool_call></tool_call> tags, one block per call:\n"
    "<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>")


@dataclass(frozen=True)
class Syntax:
    """How a family writes a call: ``open`` + ``{"name": "f", "<args_key>": {...}}`` + ``close``,
    calls ``sep``-separated; ``trigger`` is the text that starts one in a free reply."""
    family: str
    open: str
    close: str
    args_key: str
    sep: str
    trigger: str
    parallel: bool          # the family writes several calls in one reply


HERMES = Syntax("hermes", "<tool_call>\n", "\n</tool_call>", "arguments", "\n", "<tool_call>", True)
LLAMA3 = Syntax("llama3", "", "", "parameters", "", '{"name"', False)


def takes_tools(template) -> bool:
    """True when a chat template renders ``tools`` itself (its source uses the variable)."""
    return template is not None and re.search(r"\btools\b", template.source or "") is not None


def syntax_for(template) -> Syntax:
    if takes_tools(template) and "<|start_header_id|>" in template.source and '"parameters"' in template.source:
        return LLAMA3
    return HERMES


# ---- checking a request ------------------------------------------------------------------
def check_tools(tools) -> list[dict]:
    """OpenAI's ``tools`` -> [{"type": "function", "function": {name, description,
    parameters, strict}}] with defaults filled in; InvalidRequestError naming ``tools[i]...``."""
    if not isinstance(tools, list) or not tools:
        raise InvalidRequestError("tools must be a non-empty list of {\"type\": \"function\", \"function\": ...}",
                                  "tools")
    if len(tools) > MAX_TOOLS:
        raise InvalidRequestError(f"tools has {len(tools)} entries; at most {MAX_TOOLS}", "tools")
    out, seen = [], set()
    for i, t in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(t, dict):
            raise InvalidRequestError(f"{where} must be an object {{\"type\": \"function\", ...}}, got {t!r:.80}",
                                      where)
        if t.get("type") != "function":
            raise InvalidRequestError(f"{where}.type must be 'function', got {t.get('type')!r:.80}", f"{where}.type")
        _known_keys(t, TOOL_KEYS, where)
        f = t.get("function")
        if not isinstance(f, dict):
            raise InvalidRequestError(f"{where}.function must be an object", f"{where}.function")
        _known_keys(f, FUNCTION_KEYS, f"{where}.function")
        name = f.get("name")
        if not isinstance(name, str) or not NAME_RX.fullmatch(name):
            raise InvalidRequestError(f"{where}.function.name must be 1 to 64 letters, digits, '_' or '-', "
                                      f"got {name!r:.80}", f"{where}.function.name")
        if name in seen:
            raise InvalidRequestError(f"{where}.function.name {name!r} is given twice", f"{where}.function.name")
        seen.add(name)
        desc = f.get("description")
        if desc is not None and not isinstance(desc, str):
            raise InvalidRequestError(f"{where}.function.description must be a string", f"{where}.function.description")
        params = f.get("parameters", EMPTY_PARAMETERS)
        if not isinstance(params, dict):
            raise InvalidRequestError(f"{where}.function.parameters must be a JSON schema object, got "
                                      f"{type(params).__name__}", f"{where}.function.parameters")
        strict = f.get("strict", False)
        if strict is not None and not isinstance(strict, bool):
            raise InvalidRequestError(f"{where}.function.strict must be a boolean, got {strict!r}",
                                      f"{where}.function.strict")
        fn: dict[str, Any] = {"name": name, **({"description": desc} if desc is not None else {}),
                              "parameters": params}
        if strict:
            fn["strict"] = True
        out.append({"type": "function", "function": fn})
    return out


TOOL_KEYS = ("type", "function")
FUNCTION_KEYS = ("name", "description", "parameters", "strict")


def _known_keys(obj, known, where):
    # a key OpenAI does not define is refused as OpenAI does ("Unknown parameter"): a misspelt
    # "paramters" would otherwise leave the function without its schema, silently
    for k in obj:
        if k not in known:
            close = difflib.get_close_matches(str(k), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            raise InvalidRequestError(f"Unknown parameter: '{where}.{k}'{hint}", f"{where}.{k}")


def check_tool_choice(tool_choice, tools) -> tuple[str, str | None]:
    """``tool_choice`` -> (mode, function name): mode 'auto', 'none' or 'required'; a named
    function is ('required', name). The default is 'auto' with tools, 'none' without."""
    if tool_choice is None:
        return ("auto" if tools else "none"), None
    if tool_choice in ("auto", "none", "required"):
        if tool_choice != "none" and not tools:
            raise InvalidRequestError(f"tool_choice {tool_choice!r} needs tools", "tool_choice")
        return tool_choice, None
    names = [t["function"]["name"] for t in tools or []]
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function" \
            and isinstance(tool_choice.get("function"), dict):
        name = tool_choice["function"].get("name")
        if name in names:
            return "required", name
        raise InvalidRequestError(f"tool_choice names the function {name!r}, which is not among tools "
                                  f"({', '.join(names) or 'none given'})", "tool_choice")
    raise InvalidRequestError("tool_choice must be 'auto', 'none', 'required' or {\"type\": \"function\", "
                              f"\"function\": {{\"name\": ...}}}}, got {tool_choice!r:.80}", "tool_choice")


def check_tool_calls(calls, i) -> list[dict]:
    """An assistant message's ``tool_calls`` -> [{"id", "type", "function": {"name",
    "arguments"}}] with the arguments parsed into an object, as HF hands them to templates."""
    where = f"messages[{i}].tool_calls"
    if not isinstance(calls, list):
        raise InvalidRequestError(f"{where} must be a list", where)
    out = []
    for j, c in enumerate(calls):
        w = f"{where}[{j}]"
        f = c.get("function") if isinstance(c, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or c.get("type", "function") != "function":
            raise InvalidRequestError(f"{w} must be {{\"type\": \"function\", \"function\": {{\"name\", "
                                      f"\"arguments\"}}}}, got {c!r:.80}", w)
        args = f.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError as e:
                raise InvalidRequestError(f"{w}.function.arguments is not JSON: {e}", f"{w}.function.arguments") \
                    from None
        cid = c.get("id")
        if cid is not None and not isinstance(cid, str):
            raise InvalidRequestError(f"{w}.id must be a string", f"{w}.id")
        out.append({"id": cid or new_call_id(), "type": "function",
                    "function": {"name": f["name"], "arguments": args}})
    return out


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


# ---- rendering -----------------------------------------------------------------------------
def call_text(name, arguments, syntax=HERMES) -> str:
    """One call as ``syntax`` writes it (``arguments``: an object or its JSON text)."""
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return f'{syntax.open}{{"name": {json.dumps(name)}, "{syntax.args_key}": {arguments}}}{syntax.close}'


def fallback_messages(messages, tools=None) -> list[dict]:
    """Messages for a template without tools: the tools' intro joined to the system message
    (or a system message of its own), past calls as the assistant's text, tool results as
    user turns in ``<tool_response>`` tags. Only role/content messages come out."""
    out = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            calls = "\n".join(call_text(c["function"]["name"], c["function"]["arguments"])
                              for c in m["tool_calls"])
            out.append({"role": "assistant", "content": f"{content}\n{calls}" if content else calls})
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": role, "content": content})
    if tools:
        intro = FALLBACK_INTRO.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{intro}" if out[0]["content"] else intro}
        else:
            out.insert(0, {"role": "system", "content": intro})
    return out


def native_messages(messages) -> list[dict]:
    """Messages for a template that takes tools: as HF passes them (content None -> '')."""
    return [{**m, "content": m.get("content") or ""} for m in messages]


# ---- the call grammar ------------------------------------------------------------------------
_tag_tokens: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _literal(model, text) -> str:
    """Lark for ``text``: a token reference when the vocabulary has it as one special token
    (Qwen's ``<tool_call>``: the model was trained to write that token, and the engine sets
    special tokens apart from text), else the string."""
    if not text:
        return ""
    vocab = vocabulary(model)
    tags = _tag_tokens.get(vocab)
    if tags is None:
        wanted = {b"\xff" + t.encode() for t in ("<tool_call>", "</tool_call>")}
        tags = _tag_tokens[vocab] = {b[1:].decode(): i for i, b in enumerate(vocab.tokens) if b in wanted}
    for tag, tok in tags.items():
        if tag in text:
            head, _, tail = text.partition(tag)
            return " ".join(x for x in (_literal(model, head), f"<[{tok}]>", _literal(model, tail)) if x)
    return json.dumps(text)


def call_grammar(model, tools, syntax, parallel, name=None, lead="") -> str:
    """Lark for a reply made of calls (one, or with ``parallel`` one or more): each function's
    ``{"name": const, args_key: <its parameters schema>}``, only ``name`` if given.
    ``lead``: text the reply must start with (where a free reply's text left off)."""
    rules, alts = [], []
    for k, t in enumerate(tools):
        f = t["function"]
        if name is not None and f["name"] != name:
            continue
        schema = dict(f.get("parameters") or EMPTY_PARAMETERS)
        if "properties" in schema and "additionalProperties" not in schema:
            # a function takes the parameters it declares: as llama.cpp's schema grammars, no
            # others unless the schema says so (a small model otherwise invents keys until
            # max_tokens)
            schema["additionalProperties"] = False
        schema["x-guidance"] = {"whitespace_pattern": JSON_WHITESPACE, "lenient": not f.get("strict", False)}
        head = f'{{"name": {json.dumps(f["name"])}, "{syntax.args_key}": '
        rules.append(f"fn_{k}: {json.dumps(head)} args_{k} \"}}\"")
        rules.append(f"args_{k}: %json {json.dumps(schema)}")
        alts.append(f"fn_{k}")
    call = " ".join(x for x in (_literal(model, syntax.open), "(" + " | ".join(alts) + ")",
                                _literal(model, syntax.close)) if x)
    more = f' ({json.dumps(syntax.sep)} call)*' if parallel and syntax.parallel else ""
    start = " ".join(x for x in (json.dumps(lead) if lead else "", "call" + more) if x)
    return "\n".join([f"start: {start}", f"call: {call}", *rules]) + "\n"


def compile_tools(model, tools, syntax, parallel, name=None, lead=""):
    """The call grammar, compiled (cached per source) -> compile_constraint's pair. Each
    function's schema is compiled alone first, so one the engine refuses is an
    InvalidRequestError naming ``tools[i].function.parameters``."""
    for i, t in enumerate(tools):
        f = t["function"]
        try:
            compile_constraint(model, json_schema=f.get("parameters") or EMPTY_PARAMETERS,
                               strict=bool(f.get("strict", False)))
        except ConstraintError as e:
            raise InvalidRequestError(f"tools[{i}].function.parameters: {e}", f"tools[{i}].function.parameters") \
                from None
    try:
        return compile_constraint(model, grammar=call_grammar(model, tools, syntax, parallel, name, lead))
    except ConstraintError as e:
        raise InvalidRequestError(f"tools: {e}", "tools") from None


# ---- reading calls back --------------------------------------------------------------------
class CallReader:
    """Reads the text written under the call grammar, piece by piece, into OpenAI's
    ``tool_calls`` deltas: the first delta of a call has its id, type and name (arguments
    ''); then argument fragments as they come. Joined, a call's fragments are exactly its
    ``arguments`` string in ``calls``. ``skip``: characters of lead text before the calls."""

    def __init__(self, syntax, skip=0) -> None:
        self.syntax = syntax
        self.buf = ""
        self.pos = skip                 # where the unread text starts
        self.calls: list[dict] = []     # complete and partial calls, OpenAI's shape
        self._args_at = None            # the current call's arguments start, once its name is read
        self._sent = 0                  # characters of the current call's arguments handed out
        self._head = re.compile(r"\{\"name\": \"([A-Za-z0-9_-]+)\", \""
                                + syntax.args_key + "\": ")

    def feed(self, piece) -> list[dict]:
        """The deltas ``piece`` completes, one per call (as OpenAI sends them)."""
        out: list[dict] = []
        for d in self._feed(piece):
            if out and out[-1]["index"] == d["index"]:
                out[-1]["function"]["arguments"] += d["function"]["arguments"]
            else:
                out.append(d)
        return out

    def _feed(self, piece):
        self.buf += piece
        deltas = []
        while True:
            if self._args_at is None:
                m = self._head.search(self.buf, self.pos)     # past the last call's close and sep
                if m is None:
                    return deltas
                call = {"id": new_call_id(), "type": "function", "function": {"name": m.group(1), "arguments": ""}}
                deltas.append({"index": len(self.calls), **call, "function": dict(call["function"])})
                self.calls.append(call)
                self._args_at, self._sent = m.end(), 0
            text = self.buf[self._args_at:]
            try:
                _, end = json.JSONDecoder().raw_decode(text)
            except ValueError:
                end = None
            upto = len(text) if end is None else end
            if upto > self._sent:
                frag = text[self._sent:upto]
                self.calls[-1]["function"]["arguments"] += frag
                deltas.append({"index": len(self.calls) - 1, "function": {"arguments": frag}})
                self._sent = upto
            if end is None:
                return deltas
            self.pos = self._args_at + end
            self._args_at = None

    @property
    def n_done(self) -> int:
        """How many calls are complete (their arguments read to the end)."""
        return len(self.calls) - (self._args_at is not None)

    def repeats(self, i) -> bool:
        """True when call ``i`` is an earlier call again (the same name and arguments)."""
        key = lambda c: (c["function"]["name"], json.loads(c["function"]["arguments"]))  # noqa: E731
        return any(key(c) == key(self.calls[i]) for c in self.calls[:i])

    def complete(self) -> list[dict]:
        """The calls whose arguments are complete JSON."""
        out = []
        for c in self.calls:
            try:
                json.loads(c["function"]["arguments"])
            except ValueError:
                continue
            out.append(c)
        return out
