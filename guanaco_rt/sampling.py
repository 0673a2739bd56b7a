"""The sampling chain, with llama.cpp's semantics, and its own RNG per session.

Owns: turning one logits vector (and the recent tokens) into the next token id.
Order, as llama.cpp's 2023 main loop: logit bias -> repetition penalty over the
last ``repeat_last_n`` tokens (positive logits divided, negative multiplied) ->
frequency and presence penalties -> greedy if temperature <= 0, else top-k ->
typical-p -> top-p -> min-p -> temperature -> draw. The RNG is a PCG64 seeded
per session, so the same seed, settings and logits give the same tokens.

The chain itself is C (``_kernels/_sampling.pyx``) so the decode loop runs without
the GIL; this module holds the settings, their checks and the RNG.
"""
import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ._kernels._sampling import SamplerCore

# The one source of the defaults: SamplingParams (so Session), LLM (so the server and the
# adapters) and the command line all read them from here. Today's llama.cpp and
# llama-cpp-python use the same values.
DEFAULTS: dict[str, Any] = {          # floats, and the counts top_k and repeat_last_n
    "temperature": 0.8,
    "top_k": 40,                    # <= 0: off
    "top_p": 0.95,                  # >= 1: off
    "min_p": 0.05,                  # <= 0: off
    "typical_p": 1.0,               # >= 1: off
    "repetition_penalty": 1.0,      # 1: off (the API's repeat_penalty)
    "repeat_last_n": 64,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
}
# What a Session does when its context fills: a library call raises ContextFullError
# rather than drop text unasked; the interactive command line drops the oldest tokens (a
# chat: the oldest turns) so that a conversation can go on. LLM and the server need
# neither: a generation ends with finish_reason "length" at the context's end.
CONTEXT_POLICY = "error"
CLI_CONTEXT_POLICY = "shift"


@dataclass
class SamplingParams:
    temperature: float = DEFAULTS["temperature"]
    top_k: int = DEFAULTS["top_k"]
    top_p: float = DEFAULTS["top_p"]
    min_p: float = DEFAULTS["min_p"]
    typical_p: float = DEFAULTS["typical_p"]
    repetition_penalty: float = DEFAULTS["repetition_penalty"]
    repeat_last_n: int = DEFAULTS["repeat_last_n"]
    frequency_penalty: float = DEFAULTS["frequency_penalty"]
    presence_penalty: float = DEFAULTS["presence_penalty"]
    logit_bias: dict = field(default_factory=dict)   # token id -> added logit (-inf bans)
    n_probs: int = 0                # >0: return the top-N log-probabilities per token

    def __post_init__(self):
        checks = [("temperature", self.temperature >= 0), ("top_p", 0 < self.top_p),
                  ("min_p", 0 <= self.min_p <= 1), ("typical_p", 0 < self.typical_p),
                  ("repetition_penalty", self.repetition_penalty > 0), ("repeat_last_n", self.repeat_last_n >= 0),
                  ("n_probs", self.n_probs >= 0)]
        for name in ("temperature", "top_p", "min_p", "typical_p", "repetition_penalty", "frequency_penalty",
                     "presence_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"sampling parameter {name}={v!r} must be a finite number")
        for name in ("top_k", "repeat_last_n", "n_probs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not -2**31 < v < 2**31:
                raise ValueError(f"sampling parameter {name}={v!r} must be an int of 32 bits")
        for name, ok in checks:
            if not ok:
                raise ValueError(f"sampling parameter {name}={getattr(self, name)!r} is out of range")
        for tok, bias in self.logit_bias.items():
            if math.isnan(bias) or bias == math.inf:
                raise ValueError(f"logit_bias[{tok}]={bias!r}: must be finite, or -inf to ban the token")

    @classmethod
    def from_kwargs(cls, **kw):
        names = {f.name for f in fields(cls)}
        unknown = set(kw) - names
        if unknown:
            raise TypeError(f"unknown sampling parameter(s): {sorted(unknown)}")
        return cls(**kw)


class Sampler:
    """A session's RNG (NumPy PCG64; ``state`` / ``set_state`` save and restore it) and
    the entry to the C sampling chain, which draws from this same generator."""

    def __init__(self, seed=None):
        self.rng = np.random.Generator(np.random.PCG64(seed))

    @property
    def state(self):
        return self.rng.bit_generator.state

    def set_state(self, state):
        self.rng.bit_generator.state = state

    def core(self, p: SamplingParams, n_vocab: int) -> SamplerCore:
        """The C chain for settings ``p`` over ``n_vocab`` tokens (checks logit_bias ids)."""
        return SamplerCore(n_vocab, self.rng.bit_generator, p.temperature, p.top_k, p.top_p, p.min_p,
                           p.typical_p, p.repetition_penalty, p.repeat_last_n, p.frequency_penalty,
                           p.presence_penalty, dict(p.logit_bias), p.n_probs)
