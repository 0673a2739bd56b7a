"""Perplexity of a model on a text, by llama.cpp's method (examples/perplexity).

Owns: chunking and scoring. The whole text is tokenized once (BOS first when the
vocabulary adds one); it is cut into chunks of n_ctx tokens, each evaluated from an
empty cache (its first token replaced by BOS when the vocabulary adds one); only the
second half of each chunk is scored: the logits at position j predict token j + 1, for
j from n_ctx/2 to n_ctx - 2. PPL = exp(mean negative log-likelihood); the error is
ppl * sqrt(var(nll) / (count - 1)), as llama.cpp prints it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import GuanacoError


@dataclass
class PerplexityResult:
    ppl: float
    error: float
    n_chunks: int
    n_ctx: int
    n_scored: int                                      # tokens scored in all
    chunk_ppl: list = field(default_factory=list)      # running PPL after each chunk

    def __str__(self):
        return f"PPL = {self.ppl:.4f} +/- {self.error:.5f}"


def perplexity(model, text: str, n_ctx: int = 512, n_threads: int | None = None, n_batch: int = 64,
               progress: Callable[[int, int, float], object] | None = None) -> PerplexityResult:
    """``progress(done, total, ppl_so_far)`` is called after each chunk."""
    from .session import Session
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 4:
        raise ValueError(f"n_ctx must be an int >= 4, got {n_ctx!r}")
    tok = model.tokenizer
    add_bos = getattr(tok, "add_bos", True) and tok.bos_id is not None
    ids = model.tokenize(text, bos=add_bos)
    n_chunks = len(ids) // n_ctx
    if n_chunks < 1:
        raise GuanacoError(f"the text has {len(ids)} tokens, fewer than one chunk of n_ctx {n_ctx}")
    first = n_ctx // 2
    nll, nll2, count, running = 0.0, 0.0, 0, []
    with Session(model, n_ctx=n_ctx, n_batch=min(n_batch, n_ctx), n_threads=n_threads) as s:
        for c in range(n_chunks):
            chunk = list(ids[c * n_ctx:(c + 1) * n_ctx])
            if add_bos:
                chunk[0] = tok.bos_id
            s.reset()
            logits = s.eval(chunk, all_logits=True).astype(np.float64)
            x = logits[first:n_ctx - 1]
            m = x.max(axis=1, keepdims=True)
            logz = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
            target = np.asarray(chunk[first + 1:n_ctx])
            v = logz - x[np.arange(len(target)), target]          # -log p(next token)
            nll += float(v.sum())
            nll2 += float((v * v).sum())
            count += len(v)
            running.append(math.exp(nll / count))
            if progress is not None:
                progress(c + 1, n_chunks, running[-1])
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = math.exp(mean)
    err = ppl * math.sqrt(var / (count - 1)) if var > 0 and count > 1 else 0.0
    return PerplexityResult(ppl, err, n_chunks, n_ctx, count, running)
