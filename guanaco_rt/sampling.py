"""The sampling chain, with llama.cpp's semantics, and its own RNG per session.

Owns: turning one logits vector (and the recent tokens) into the next token id.
Order, as llama.cpp's 2023 main loop: logit bias -> repetition penalty over the
last ``repeat_last_n`` tokens (positive logits divided, negative multiplied) ->
frequency and presence penalties -> greedy if temperature <= 0, else top-k ->
typical-p -> top-p -> min-p -> temperature -> draw. The RNG is a PCG64 seeded
per session, so the same seed, settings and logits give the same tokens.
"""
from dataclasses import dataclass, field, fields

import numpy as np


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40                 # <= 0: off
    top_p: float = 0.95             # >= 1: off
    min_p: float = 0.0              # <= 0: off
    typical_p: float = 1.0          # >= 1: off
    repetition_penalty: float = 1.1  # 1: off
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict = field(default_factory=dict)   # token id -> added logit (-inf bans)
    n_probs: int = 0                # >0: return the top-N log-probabilities per token

    def __post_init__(self):
        checks = [("temperature", self.temperature >= 0), ("top_p", 0 < self.top_p),
                  ("min_p", 0 <= self.min_p <= 1), ("typical_p", 0 < self.typical_p),
                  ("repetition_penalty", self.repetition_penalty > 0), ("repeat_last_n", self.repeat_last_n >= 0),
                  ("n_probs", self.n_probs >= 0)]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"sampling parameter {name}={getattr(self, name)!r} is out of range")

    @classmethod
    def from_kwargs(cls, **kw):
        names = {f.name for f in fields(cls)}
        unknown = set(kw) - names
        if unknown:
            raise TypeError(f"unknown sampling parameter(s): {sorted(unknown)}")
        return cls(**kw)


def _log_softmax(x):
    m = x.max()
    e = np.exp(x - m)
    return x - m - np.log(e.sum())


def _top_sorted(x, k):
    """Ids of the k largest values, highest first, ties in id order: the first k of a
    stable descending sort, without sorting the whole vocabulary."""
    if k >= len(x):
        return np.argsort(-x, kind="stable")
    kth = np.partition(x, len(x) - k)[len(x) - k]      # the k-th largest value
    cand = np.flatnonzero(x >= kth)                      # ids ascending, ties at kth included
    return cand[np.argsort(-x[cand], kind="stable")][:k]


class Sampler:
    """Draws tokens from logits. ``state`` / ``set_state`` save and restore the RNG."""

    def __init__(self, seed=None):
        self.rng = np.random.Generator(np.random.PCG64(seed))

    @property
    def state(self):
        return self.rng.bit_generator.state

    def set_state(self, state):
        self.rng.bit_generator.state = state

    def penalize(self, logits, history, p):
        """logits (n_vocab,) float32 -> float64 copy with bias and penalties applied."""
        x = logits.astype(np.float64)
        for tok, bias in p.logit_bias.items():
            x[int(tok)] += bias
        recent = history[-p.repeat_last_n:] if p.repeat_last_n > 0 else []
        if len(recent) and (p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty):
            ids, counts = np.unique(np.asarray(recent, dtype=np.int64), return_counts=True)
            if p.repetition_penalty != 1.0:
                v = x[ids]
                x[ids] = np.where(v <= 0, v * p.repetition_penalty, v / p.repetition_penalty)
            if p.frequency_penalty or p.presence_penalty:
                x[ids] -= counts * p.frequency_penalty + (counts > 0) * p.presence_penalty
        return x

    def sample(self, logits, history, p):
        """-> (token id, top log-probs [(id, logprob)] or None)"""
        x = self.penalize(logits, history, p)
        top = None
        if p.n_probs:
            lp = _log_softmax(np.where(np.isfinite(x), x, -np.inf))
            idx = _top_sorted(lp, p.n_probs)
            top = [(int(i), float(lp[i])) for i in idx]
        if p.temperature <= 0:
            return int(np.argmax(x)), top
        # candidates sorted by logit, highest first (stable: ties keep id order)
        order = _top_sorted(x, p.top_k if p.top_k > 0 else len(x))
        cand = x[order]
        finite = np.isfinite(cand)
        if not finite.any():
            return int(order[0]), top
        order, cand = order[finite], cand[finite]
        if p.top_k > 0:
            order, cand = order[:p.top_k], cand[:p.top_k]
        if p.typical_p < 1.0 and len(cand) > 1:
            lp = _log_softmax(cand)
            probs = np.exp(lp)
            ent = -(probs * lp).sum()
            shifted = np.abs(-lp - ent)
            srt = np.argsort(shifted, kind="stable")
            cum = np.cumsum(probs[srt])
            keep = max(1, int(np.searchsorted(cum, p.typical_p) + 1))
            sel = np.sort(srt[:keep])
            order, cand = order[sel], cand[sel]
        if p.top_p < 1.0 and len(cand) > 1:
            probs = np.exp(_log_softmax(cand))
            cum = np.cumsum(probs)
            keep = max(1, int(np.searchsorted(cum, p.top_p) + 1))
            order, cand = order[:keep], cand[:keep]
        if p.min_p > 0 and len(cand) > 1:
            probs = np.exp(_log_softmax(cand))
            keep = probs >= p.min_p * probs[0]
            order, cand = order[keep], cand[keep]
        probs = np.exp(_log_softmax(cand / p.temperature))
        i = int(self.rng.choice(len(probs), p=probs / probs.sum()))
        return int(order[i]), top
