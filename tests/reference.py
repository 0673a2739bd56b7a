"""Plain NumPy references for every kernel and for the whole LLaMA forward pass.

Weights are dequantized by the ``gguf`` package (an implementation we did not
write); the activation formats (q8_0, q8_1, q8_K) and all ops are written here
from their definitions, in float32 where the spec rounds in float32 and float64
elsewhere.
"""
import numpy as np
from gguf import GGMLQuantizationType as GQ
from gguf.quants import dequantize as gguf_dequantize

from guanaco_rt import ggml_types as T

GGUF_TYPE = {T.F32: GQ.F32, T.F16: GQ.F16, T.Q4_0: GQ.Q4_0, T.Q4_1: GQ.Q4_1, T.Q5_0: GQ.Q5_0, T.Q5_1: GQ.Q5_1,
             T.Q8_0: GQ.Q8_0, T.Q2_K: GQ.Q2_K, T.Q3_K: GQ.Q3_K, T.Q4_K: GQ.Q4_K, T.Q5_K: GQ.Q5_K,
             T.Q6_K: GQ.Q6_K, T.IQ4_NL: GQ.IQ4_NL, T.IQ4_XS: GQ.IQ4_XS, T.BF16: GQ.BF16,
             # ---- i-quants and ternary types (issue 23)
             T.IQ2_XXS: GQ.IQ2_XXS, T.IQ2_XS: GQ.IQ2_XS, T.IQ2_S: GQ.IQ2_S, T.IQ3_XXS: GQ.IQ3_XXS, T.IQ3_S: GQ.IQ3_S,
             T.IQ1_S: GQ.IQ1_S, T.IQ1_M: GQ.IQ1_M, T.TQ1_0: GQ.TQ1_0, T.TQ2_0: GQ.TQ2_0}


def dequantize(ttype, data, n):
    """n weights of ggml type ttype (bytes/uint8) -> float32 (n,), by gguf.quants."""
    t = T.GGML_TYPES[ttype]
    raw = np.frombuffer(bytes(data), dtype=np.uint8)[: t.row_bytes(n)]
    if ttype == T.F32:
        return raw.view("<f4").astype(np.float32)
    if ttype == T.F16:
        return raw.view("<f2").astype(np.float32)
    return gguf_dequantize(raw.reshape(-1, t.type_size), GGUF_TYPE[ttype]).reshape(-1).astype(np.float32)


# ---- activation formats ------------------------------------------------------------
def _roundf(x):  # C roundf: half away from zero (in float64, where +0.5 is exact)
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _q8_32(x):
    """The shared core of q8_0 and q8_1: d = amax/127 (f32), q = roundf(x / d)."""
    x = np.asarray(x, np.float32).reshape(-1, 32)
    amax = np.abs(x).max(axis=1)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    return d, _roundf((x * idv[:, None]).astype(np.float32)).astype(np.int8)


def quantize_q8_1(x):
    """-> (d float32 (nb,), s float32 (nb,), qs int8 (nb, 32))"""
    d, qs = _q8_32(x)
    s = (d * qs.astype(np.int32).sum(axis=1).astype(np.float32)).astype(np.float32)
    return d, s, qs


def quantize_q8_K(x):
    """-> (d float32 (nb,), qs int8 (nb, 256), bsums int16 (nb, 16))"""
    x = np.asarray(x, np.float32).reshape(-1, 256)
    idx = np.abs(x).argmax(axis=1)               # first index of the largest |x|
    mx = x[np.arange(x.shape[0]), idx]
    d = np.zeros(x.shape[0], np.float32)
    qs = np.zeros(x.shape, np.int8)
    nz = mx != 0
    iscale = (np.float32(-128) / mx[nz]).astype(np.float32)
    q = np.round((iscale[:, None] * x[nz]).astype(np.float32))   # half to even, as nearest_int
    qs[nz] = np.minimum(127, q).astype(np.int8)
    d[nz] = (np.float32(1) / iscale).astype(np.float32)
    bsums = qs.astype(np.int32).reshape(-1, 16, 16).sum(axis=2).astype(np.int16)
    return d, qs, bsums


def pack_activation(vt, x):
    """Reference bytes of activation type vt (laid out by ggml_types' block dtype)."""
    if vt == T.F32:
        return np.asarray(x, np.float32).tobytes()
    if vt == T.Q8_1:
        d, s, qs = quantize_q8_1(x)
        parts = {"d": d, "s": s, "qs": qs}
    elif vt == T.Q8_K:
        d, qs, bsums = quantize_q8_K(x)
        parts = {"d": d, "qs": qs, "bsums": bsums}
    else:
        raise ValueError(vt)
    rec = np.zeros(len(d), dtype=T.GGML_TYPES[vt].dtype)
    for name, val in parts.items():
        rec[name] = val
    return rec.tobytes()


def activation_roundtrip(vt, x):
    """x as the dot product sees it after quantization to vt (float64)."""
    x = np.asarray(x, np.float32)
    if vt == T.F32:
        return x.astype(np.float64)
    if vt == T.Q8_1:
        d, _, qs = quantize_q8_1(x)
        return (d.astype(np.float64)[:, None] * qs).reshape(x.shape)
    d, qs, _ = quantize_q8_K(x)
    return (d.astype(np.float64)[:, None] * qs).reshape(x.shape)


# ---- ops ----------------------------------------------------------------------------
def rmsnorm(x, w, eps):
    x = np.asarray(x, np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, n_head, n_rot, positions, base=10000.0, freq_scale=1.0):
    """x (n_tok, n_embd); rotate adjacent pairs in each head (ggml mode 0)"""
    x = np.array(x, np.float64)
    n_tok, E = x.shape
    hd = E // n_head
    xh = x.reshape(n_tok, n_head, hd)
    i = np.arange(n_rot // 2)
    theta = np.asarray(positions, np.float64)[:, None] * (freq_scale * base ** (-2.0 * i / n_rot))[None, :]
    c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    x0, x1 = xh[:, :, 0:n_rot:2].copy(), xh[:, :, 1:n_rot:2].copy()
    xh[:, :, 0:n_rot:2] = x0 * c - x1 * s
    xh[:, :, 1:n_rot:2] = x0 * s + x1 * c
    return xh.reshape(n_tok, E)


def softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def silu(x):
    x = np.asarray(x, np.float64)
    return x / (1.0 + np.exp(-x))


def attention(q, k, v, n_head, n_past, n_head_kv=None):
    """q (n_tok, E) at positions n_past..; k, v (n_past + n_tok, E_kv) -> (n_tok, E). Query
    head h reads key/value head h // (n_head // n_head_kv) (grouped-query attention)."""
    n_tok, E = q.shape
    hd = E // n_head
    group = n_head // (n_head_kv or n_head)
    out = np.zeros((n_tok, E))
    for h in range(n_head):
        sl = slice(h * hd, (h + 1) * hd)
        kv = slice((h // group) * hd, (h // group + 1) * hd)
        for t in range(n_tok):
            pos = n_past + t
            sc = k[:pos + 1, kv] @ q[t, sl] / np.sqrt(hd)
            out[t, sl] = softmax(sc) @ v[:pos + 1, kv]
    return out


# ---- the whole model -------------------------------------------------------------------
class ReferenceModel:
    """LLaMA forward on weights dequantized by gguf.quants, in float64.

    With ``quantize_acts`` each matmul input first makes the round trip through the
    weight's activation format, as the engine does: then only float rounding
    separates the two, and the tolerance can be tight.
    """

    def __init__(self, model, quantize_acts=False):
        hp = model.hparams
        self.hp = hp
        self.eps = model.eps
        self.quantize_acts = quantize_acts
        self.w, self.vt = {}, {}
        for name, t in model.tensors.items():
            data = model.tensor_data(name)
            arr = dequantize(t.type, data, t.shape[0] * t.n_rows).astype(np.float64)
            self.w[name] = arr.reshape(t.n_rows, t.shape[0]) if len(t.shape) > 1 else arr
            self.vt[name] = T.GGML_TYPES[t.type].vec_dot_type

    def _mm(self, name, x):
        if self.quantize_acts:
            x = np.stack([activation_roundtrip(self.vt[name], row) for row in np.asarray(x, np.float32)])
        return x @ self.w[name].T

    def forward(self, tokens):
        """logits (len(tokens), n_vocab) for tokens at positions 0.."""
        w = self.w
        return self._mm("output.weight" if "output.weight" in w else "tok_embeddings.weight",
                        self.hidden(tokens))   # tied

    def hidden(self, tokens):
        """(len(tokens), n_embd): each token's hidden state after the final norm (what
        embeddings pool)"""
        hp, w = self.hp, self.w
        x = w["tok_embeddings.weight"][np.asarray(tokens)]
        n = len(tokens)
        pos = np.arange(n)
        n_head_kv = getattr(hp, "n_head_kv", hp.n_head)
        rope_kw = {"base": getattr(hp, "rope_base", 10000.0), "freq_scale": getattr(hp, "rope_freq_scale", 1.0)}
        for i in range(hp.n_layer):
            p = f"layers.{i}."
            h = rmsnorm(x, w[p + "attention_norm.weight"], self.eps)
            q = rope(self._mm(p + "attention.wq.weight", h), hp.n_head, hp.n_rot, pos, **rope_kw)
            k = rope(self._mm(p + "attention.wk.weight", h), n_head_kv, hp.n_rot, pos, **rope_kw)
            v = self._mm(p + "attention.wv.weight", h)
            a = attention(q, k, v, hp.n_head, 0, n_head_kv)
            x = x + self._mm(p + "attention.wo.weight", a)
            h = rmsnorm(x, w[p + "ffn_norm.weight"], self.eps)
            g = silu(self._mm(p + "feed_forward.w1.weight", h)) * self._mm(p + "feed_forward.w3.weight", h)
            x = x + self._mm(p + "feed_forward.w2.weight", g)
        return rmsnorm(x, w["norm.weight"], self.eps)


def dequantize_activation(vt, data, n):
    """Bytes of activation type vt -> float64 (n,)."""
    if vt not in (T.Q8_1, T.Q8_K):
        raise ValueError(vt)
    t = T.GGML_TYPES[vt]
    rec = np.frombuffer(bytes(data), dtype=t.dtype, count=n // t.blck_size)
    return (rec["d"].astype(np.float64)[:, None] * rec["qs"]).reshape(-1)


# ---- the sampling chain (llama.cpp 2023 order), in NumPy ------------------------------
def _log_softmax(x):
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def sample_penalize(logits, history, p):
    """logits (n_vocab,) float32 -> float64 with logit bias, then repetition penalty over
    the last repeat_last_n tokens, then frequency and presence penalties."""
    x = logits.astype(np.float64)
    for tok, bias in p.logit_bias.items():
        x[int(tok)] += bias
    recent = history[-p.repeat_last_n:] if p.repeat_last_n > 0 else []
    if len(recent) and (p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty):
        ids, counts = np.unique(np.asarray(recent, dtype=np.int64), return_counts=True)
        if p.repetition_penalty != 1.0:
            v = x[ids]
            x[ids] = np.where(v <= 0, v * p.repetition_penalty, v / p.repetition_penalty)
        x[ids] -= counts * p.frequency_penalty + p.presence_penalty
    return x


def sample_chain(logits, history, p, rng):
    """-> (token, top [(id, logprob)] or None, candidate ids, their probabilities).
    The draw is Generator.choice(p=...), one double from ``rng``."""
    x = sample_penalize(logits, history, p)
    top = None
    if p.n_probs:
        lp = _log_softmax(x)
        # ranked by the penalized logits (as the sampler ranks them): two logits one ulp apart can
        # round to the same log-probability, which would leave them in id order
        idx = np.argsort(-x, kind="stable")[:p.n_probs]
        top = [(int(i), float(lp[i])) for i in idx]
    if p.temperature <= 0:
        best = int(np.argmax(x))
        return (best if np.isfinite(x[best]) else -1), top, None, None     # -1: every token banned
    order = np.argsort(-x, kind="stable")
    if p.top_k > 0:
        order = order[:p.top_k]
    cand = x[order]
    finite = np.isfinite(cand)
    if not finite.any():
        return -1, top, None, None
    order, cand = order[finite], cand[finite]
    if p.typical_p < 1.0 and len(cand) > 1:
        lp = _log_softmax(cand)
        probs = np.exp(lp)
        ent = -(probs * lp).sum()
        srt = np.argsort(np.abs(-lp - ent), kind="stable")
        keep = int(np.searchsorted(np.cumsum(probs[srt]), p.typical_p) + 1)
        sel = np.sort(srt[:keep])
        order, cand = order[sel], cand[sel]
    if p.top_p < 1.0 and len(cand) > 1:
        keep = int(np.searchsorted(np.cumsum(np.exp(_log_softmax(cand))), p.top_p) + 1)
        order, cand = order[:keep], cand[:keep]
    if p.min_p > 0 and len(cand) > 1:
        probs = np.exp(_log_softmax(cand))
        keep = probs >= p.min_p * probs[0]
        order, cand = order[keep], cand[keep]
    with np.errstate(over="ignore"):
        scaled = cand / p.temperature
    if not np.isfinite(scaled[[0, -1]]).all():     # a temperature so small the logits overflow: greedy
        return int(order[0]), top, None, None
    probs = np.exp(_log_softmax(scaled))
    probs = probs / probs.sum()
    i = int(rng.choice(len(probs), p=probs))
    return int(order[i]), top, order, probs


# ---- byte-level BPE ------------------------------------------------------------------
def bpe_merge_ranks(merges):
    """tokenizer.ggml.merges -> {(left, right): rank}, the first of duplicates winning."""
    ranks = {}
    for r, m in enumerate(merges):
        a, _, b = m.partition(" ")
        ranks.setdefault((a, b), r)
    return ranks


def bpe_pretoken(ranks, ids, piece):
    """One pre-token -> token ids by the plain quadratic loop (guanaco_rt's before the
    merge queue): merge the lowest-ranked adjacent pair, the leftmost of equals, until
    no pair has a merge; a merged symbol with no token falls back to its single bytes."""
    from guanaco_rt.bpe import byte_alphabet
    enc, _ = byte_alphabet()
    syms = [enc[b] for b in piece.encode("utf-8")]
    while len(syms) > 1:
        best, at = None, -1
        for i in range(len(syms) - 1):
            r = ranks.get((syms[i], syms[i + 1]))
            if r is not None and (best is None or r < best):
                best, at = r, i
        if best is None:
            break
        syms[at:at + 2] = [syms[at] + syms[at + 1]]
    out = []
    for s in syms:
        if s in ids:
            out.append(ids[s])
        else:
            out += [ids[c] for c in s if c in ids]
    return out
