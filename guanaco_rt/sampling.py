"""The sampling chain, with llama.cpp's semantics, and its own RNG per session.

Owns: turning one logits vector (and the recent tokens) into the next token id.
Order, as llama.cpp's 2023 main loop: logit bias -> repetition penalty over the
last ``repeat_last_n`` tokens (positive logits divided, negative multiplied) ->
frequency and presence penalties -> DRY -> greedy if temperature <= 0, else top-k ->
typical-p -> top-p -> min-p -> temperature -> draw. The RNG is a PCG64 seeded
per session, so the same seed, settings and logits give the same tokens.

The chain itself is C (``_kernels/_sampling.pyx``) so the decode loop runs without
the GIL; this module holds the settings, their checks and the RNG.
"""
import math
import weakref
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
    # DRY ("don't repeat yourself"), llama.cpp's: off unless dry_multiplier > 0
    "dry_multiplier": 0.0,
    "dry_base": 1.75,
    "dry_allowed_length": 2,
    "dry_penalty_last_n": -1,      # -1: the whole context
    "dry_sequence_breakers": ("\n", ":", '"', "*"),
}
# What a Session does when its context fills: a library call raises ContextFullError
# rather than drop text unasked; the interactive command line drops the oldest tokens (a
# chat: the oldest turns) so that a conversation can go on. LLM and the server need
# neither: a generation ends with finish_reason "length" at the context's end.
MAX_BREAKERS = 64                   # DRY sequence breakers per request, as llama.cpp's limits
MAX_BREAKER_CHARS = 40
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
    dry_multiplier: float = DEFAULTS["dry_multiplier"]
    dry_base: float = DEFAULTS["dry_base"]
    dry_allowed_length: int = DEFAULTS["dry_allowed_length"]
    dry_penalty_last_n: int = DEFAULTS["dry_penalty_last_n"]
    dry_sequence_breakers: tuple = DEFAULTS["dry_sequence_breakers"]   # strings; a token holding one breaks
    logit_bias: dict = field(default_factory=dict)   # token id -> added logit (-inf bans)
    n_probs: int = 0                # >0: return the top-N log-probabilities per token

    def __post_init__(self):
        checks = [("temperature", self.temperature >= 0), ("top_p", 0 < self.top_p),
                  ("min_p", 0 <= self.min_p <= 1), ("typical_p", 0 < self.typical_p),
                  ("repetition_penalty", self.repetition_penalty > 0), ("repeat_last_n", self.repeat_last_n >= 0),
                  ("n_probs", self.n_probs >= 0), ("dry_multiplier", self.dry_multiplier >= 0),
                  ("dry_base", self.dry_base >= 1), ("dry_allowed_length", self.dry_allowed_length >= 0),
                  ("dry_penalty_last_n", self.dry_penalty_last_n >= -1)]
        for name in ("temperature", "top_p", "min_p", "typical_p", "repetition_penalty", "frequency_penalty",
                     "presence_penalty", "dry_multiplier", "dry_base"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"sampling parameter {name}={v!r} must be a finite number")
        for name in ("top_k", "repeat_last_n", "n_probs", "dry_allowed_length", "dry_penalty_last_n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not -2**31 < v < 2**31:
                raise ValueError(f"sampling parameter {name}={v!r} must be an int of 32 bits")
        for name, ok in checks:
            if not ok:
                raise ValueError(f"sampling parameter {name}={getattr(self, name)!r} is out of range")
        brk = self.dry_sequence_breakers
        if isinstance(brk, str) or not isinstance(brk, (list, tuple)) or not all(
                isinstance(b, str) and 0 < len(b) <= MAX_BREAKER_CHARS for b in brk) or len(brk) > MAX_BREAKERS:
            raise ValueError(f"sampling parameter dry_sequence_breakers={brk!r:.80} must be a list of at most "
                             f"{MAX_BREAKERS} non-empty strings of at most {MAX_BREAKER_CHARS} characters")
        self.dry_sequence_breakers = tuple(brk)
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


def dry_breaker_ids(tokenizer, breakers):
    """The ids of the tokens whose text holds one of the DRY sequence-breaker strings (a
    token that only begins or ends a longer breaker does not count, where llama.cpp also
    matches a breaker split over tokens; its default breakers are one character each)."""
    if tokenizer is None or not breakers:
        return ()
    key = tuple(breakers)
    cache = _breaker_cache.setdefault(tokenizer, {})
    if key not in cache:
        blob, offs, _ = tokenizer.byte_table
        data = np.asarray(blob, np.uint8).tobytes()
        pats = [b.encode("utf-8") for b in breakers]
        cache[key] = np.array([i for i in range(len(offs) - 1)
                               if any(p in data[offs[i]:offs[i + 1]] for p in pats)], np.int32)
    return cache[key]


_breaker_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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

    def core(self, p: SamplingParams, n_vocab: int, tokenizer=None) -> SamplerCore:
        """The C chain for settings ``p`` over ``n_vocab`` tokens (checks logit_bias ids);
        ``tokenizer`` tells DRY which tokens are sequence breakers (without it, none is)."""
        brk = dry_breaker_ids(tokenizer, p.dry_sequence_breakers) if p.dry_multiplier > 0 else ()
        return SamplerCore(n_vocab, self.rng.bit_generator, p.temperature, p.top_k, p.top_p, p.min_p,
                           p.typical_p, p.repetition_penalty, p.repeat_last_n, p.frequency_penalty,
                           p.presence_penalty, dict(p.logit_bias), p.n_probs, p.dry_multiplier, p.dry_base,
                           p.dry_allowed_length, p.dry_penalty_last_n, brk)
