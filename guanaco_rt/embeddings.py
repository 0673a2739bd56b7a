"""Embeddings: texts -> vectors from a model's hidden states, as llama.cpp's
``llama-embedding`` and its server's ``/v1/embeddings`` make them.

Owns: pooling (the hidden state after the final norm, for each token: "none"; their mean;
the first token's, "cls"; the last token's), L2 normalization, the pooling default read
from the file (``<arch>.pooling_type``, as llama.cpp reads it; "mean" when absent), and
the OpenAI response shape. The forward pass is the engine's (State.hidden): GIL-free,
in batches of n_batch tokens, without the output matrix.
"""
from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np

from ._kernels._engine import State
from .errors import ContextFullError, InvalidArgumentError, ModelClosedError

if TYPE_CHECKING:
    from .model import Model

POOLINGS = ("none", "mean", "cls", "last")
# llama.cpp's enum llama_pooling_type, as GGUF files store it (4, rank, is for rerankers)
GGUF_POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last"}
DEFAULT_POOLING = "mean"
MAX_CTX = 1 << 20
Inputs = Union[str, Sequence[str], Sequence[int], Sequence[Sequence[int]]]


def default_pooling(model: Model) -> str:
    """The file's ``<arch>.pooling_type`` as a name, or "mean" when it has none."""
    meta = getattr(model.file, "metadata", {}) or {}
    arch = meta.get("general.architecture", "llama")
    v = meta.get(f"{arch}.pooling_type")
    if v is None:
        return DEFAULT_POOLING
    if v not in GGUF_POOLING:
        raise InvalidArgumentError(f"{model.path}: {arch}.pooling_type {v!r} is not one this runtime pools by "
                                   f"({', '.join(f'{k}: {n}' for k, n in GGUF_POOLING.items())})", "pooling")
    return GGUF_POOLING[v]


def token_lists(model: Model, inputs: Inputs, param: str = "texts") -> list[list[int]]:
    """A text, a list of texts, a list of token ids, or a list of such lists -> token id
    lists (texts tokenized as the file says: BOS, and EOS where add_eos_token is set)."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, np.ndarray):
        inputs = inputs.tolist()
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise InvalidArgumentError(f"{param} must be a string, a non-empty list of strings, or token ids", param)
    if all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in inputs):
        inputs = [list(inputs)]
    out = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            if not item:
                raise InvalidArgumentError(f"{param}[{i}] is an empty string: nothing to embed", param)
            ids = model.tokenize(item)
        elif isinstance(item, (list, tuple)) and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool)
                                                    for t in item):
            ids = [int(t) for t in item]
            bad = [t for t in ids if not 0 <= t < model.n_vocab]
            if bad:
                raise InvalidArgumentError(f"{param}[{i}]: token id {bad[0]} outside [0, {model.n_vocab})", param)
        else:
            raise InvalidArgumentError(f"{param}[{i}] must be a string or a list of token ids, got "
                                       f"{type(item).__name__}", param)
        if not ids:
            raise InvalidArgumentError(f"{param}[{i}] is empty: nothing to embed", param)
        out.append(ids)
    return out


def embed(model: Model, inputs: Inputs, pooling: str | None = None, normalize: bool = True,
          n_threads: int | None = None, n_batch: int = 64, max_tokens: int | None = None):
    """See Model.embed."""
    engine = getattr(model, "_engine", None)
    if engine is None:
        raise ModelClosedError(f"{model.path}: this Model is closed")
    pooling = default_pooling(model) if pooling is None else pooling
    if pooling not in POOLINGS:
        raise InvalidArgumentError(f"pooling must be one of {POOLINGS}, got {pooling!r}", "pooling")
    lists = token_lists(model, inputs)
    meta = getattr(model.file, "metadata", {}) or {}
    limit = max_tokens or meta.get(f"{meta.get('general.architecture', 'llama')}.context_length") or MAX_CTX
    longest = max(len(ids) for ids in lists)
    if longest > limit:
        i = next(i for i, ids in enumerate(lists) if len(ids) == longest)
        raise ContextFullError(f"input {i} is {longest} tokens, above the limit of {limit} (the model's context)")
    model._check_usable()
    st = State(engine, max(2, longest), max(1, min(n_batch, longest)), False,
               model.n_threads if n_threads is None else n_threads)
    vectors = []
    for ids in lists:
        st.truncate(0)
        hidden = np.empty((len(ids), model.hparams.n_embd), np.float32)
        st.hidden(np.asarray(ids, np.int32), hidden)
        if pooling == "none":
            v = hidden
        elif pooling == "mean":
            v = hidden.mean(axis=0, dtype=np.float64).astype(np.float32)
        elif pooling == "cls":
            v = hidden[0].copy()
        else:
            v = hidden[-1].copy()
        if normalize:
            norm = np.sqrt(np.sum(v.astype(np.float64) ** 2, axis=-1, keepdims=True))
            v = (v / np.where(norm > 0, norm, 1.0)).astype(np.float32)
        vectors.append(v)
    model.check_file()
    if pooling == "none":
        return vectors
    return np.stack(vectors)


def openai_embedding(model: Model, model_name: str, inputs, encoding_format="float", dimensions=None,
                     pooling=None) -> dict:
    """OpenAI's /v1/embeddings response for ``inputs`` (a string, a list of strings, token
    ids, or lists of them): one normalized, pooled vector per input. ``encoding_format``:
    "float" (lists) or "base64" (little-endian float32 bytes). ``dimensions`` is refused
    unless it is the model's width (these vectors cannot be shortened)."""
    from .errors import InvalidRequestError
    if encoding_format not in ("float", "base64"):
        raise InvalidRequestError(f"encoding_format must be 'float' or 'base64', got {encoding_format!r}",
                                  "encoding_format")
    width = model.hparams.n_embd
    if dimensions is not None and (isinstance(dimensions, bool) or dimensions != width):
        raise InvalidRequestError(f"dimensions {dimensions!r} is not supported: this model's embeddings have "
                                  f"{width} dimensions and cannot be shortened", "dimensions")
    if pooling == "none":
        raise InvalidRequestError("pooling 'none' gives a vector per token, not one per input: use Model.embed "
                                  "for that", "pooling")
    pooling = pooling or default_pooling(model)
    if pooling == "none":
        pooling = DEFAULT_POOLING           # the file says none: one vector per input, as the API promises
    try:
        lists = token_lists(model, inputs, "input")
        vecs = embed(model, lists, pooling=pooling)
    except InvalidArgumentError as e:
        raise InvalidRequestError(str(e), "input") from None
    except ContextFullError as e:
        raise InvalidRequestError(str(e), "input", "context_length_exceeded") from None
    data = []
    for i, v in enumerate(vecs):
        emb = base64.b64encode(v.astype("<f4").tobytes()).decode() if encoding_format == "base64" else v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    n = sum(len(x) for x in lists)
    return {"object": "list", "data": data, "model": model_name,
            "usage": {"prompt_tokens": n, "total_tokens": n}}
