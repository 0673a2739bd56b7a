"""Conversation turns and how they become the prompt: the Guanaco template, or a model's
own chat template (Jinja2, from a GGUF file's tokenizer.chat_template).

Owns: how a system line and (human, assistant) turns become the prompt text.
Guanaco was trained on ``### Human: ... ### Assistant: ...`` turns; it goes on
writing ``### Human:`` turns unless generation stops there, so that is the
default stop string. The prompt ends in ``### Assistant:`` with no trailing
space: the model's first token carries its own leading space.
"""
from dataclasses import dataclass, field

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
class ChatTemplate:
    """A Jinja2 chat template rendered as HF transformers renders it: in an immutable
    sandbox (a template cannot touch Python objects or the file system), trim_blocks and
    lstrip_blocks, loop controls, ``raise_exception``, ``tojson``, with ``messages``,
    ``add_generation_prompt``, ``bos_token`` and ``eos_token``."""

    def __init__(self, source, bos_token="", eos_token=""):
        import json

        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
        try:
            self.template = env.from_string(source)
        except TemplateError as e:
            raise ValueError(f"the chat template does not parse: {e}") from None
        self.source = source
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages, add_generation_prompt=True):
        from jinja2 import TemplateError
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as e:
            raise ValueError(f"the chat template failed: {e}") from None
