"""The Guanaco prompt template and conversation turns.

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
    """One turn: '### Human: {message}\\n### Assistant:' plus ' {reply}' when answered."""
    text = f"{HUMAN} {message.strip()}\n{ASSISTANT}"
    return text + (f" {reply.strip()}" if reply is not None else "")


@dataclass
class Conversation:
    system: str = DEFAULT_SYSTEM
    turns: list = field(default_factory=list)   # [(human message, assistant reply)]

    def system_text(self):
        return f"{self.system}\n" if self.system else ""

    def prompt(self, message, first_turn=0):
        """Prompt text for a new ``message`` after the turns from ``first_turn`` on."""
        parts = [self.system_text()]
        parts += [format_turn(h, a) + "\n" for h, a in self.turns[first_turn:]]
        parts.append(format_turn(message))
        return "".join(parts)

    def add(self, message, reply):
        self.turns.append((message, reply))

    def clear(self):
        self.turns.clear()
