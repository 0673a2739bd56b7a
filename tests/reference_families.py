"""The forward pass of each model family in float64 NumPy, written from the families' HF
transformers modelling code (modeling_llama / qwen2 / qwen3 / phi3 / gemma3), on weights
that gguf-py reads and dequantizes from the file itself: nothing of guanaco_rt's loader
or engine is used, so a shared misreading of the format cannot hide.

What the GGUF converter (llama.cpp's convert_hf_to_gguf.py) changed, undone or used here:
- llama: q and k rows permuted so that ggml's adjacent-pair RoPE equals HF's rotate_half;
  on the file's weights the reference therefore rotates adjacent pairs. Llama 3.x rope
  scaling: HF's "llama3" inverse frequencies are given (``inv_freq``); the file carries
  the ratio as rope_freqs.weight.
- qwen2, qwen3, phi3, gemma3: weights as HF has them, RoPE rotate_half.
- phi3: qkv_proj and gate_up_proj stay fused, split here as HF's Phi3Attention / Phi3MLP do.
- gemma3: the converter added 1 to every norm weight; HF's Gemma3RMSNorm multiplies by
  (1 + weight), so the HF weight is the file's minus 1.
"""
import gguf
import numpy as np

from guanaco_rt import ggml_types as T

from reference import activation_roundtrip


def read_gguf(path):
    """-> (metadata {key: value}, tensors {file name: float64 array in HF's (out, in) shape})."""
    r = gguf.GGUFReader(str(path))
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k.startswith("tokenizer."):
            continue
        v = f.contents()
        meta[k] = v
    w, types = {}, {}
    for t in r.tensors:
        ne = [int(d) for d in t.shape]                   # ggml order, ne0 first
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        w[t.name] = a.reshape(tuple(reversed(ne))) if len(ne) > 1 else a.reshape(-1)
        types[t.name] = int(t.tensor_type)
    return meta, w, types


def rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rope_hf(x, inv_freq, pos, adjacent=False):
    """x (n_tok, n_heads, head_dim): HF's apply_rotary_pos_emb over the first 2 len(inv_freq)
    dims (partial rotary leaves the rest); ``adjacent``: the pairs (2i, 2i+1) instead, as on
    llama weights the converter permuted"""
    n_rot = 2 * len(inv_freq)
    ang = pos[:, None] * inv_freq[None, :]                # (n_tok, n_rot/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x = x.copy()
    r = x[..., :n_rot]
    if adjacent:
        a, b = r[..., 0::2].copy(), r[..., 1::2].copy()
        r[..., 0::2] = a * cos - b * sin
        r[..., 1::2] = a * sin + b * cos
    else:
        c2, s2 = np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1)
        x[..., :n_rot] = r * c2 + rotate_half(r) * s2
    return x


def default_inv_freq(base, n_rot):
    return 1.0 / base ** (np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)


def llama3_inv_freq(base, n_rot, factor, low_freq_factor, high_freq_factor, original_max_position):
    """HF's _compute_llama3_parameters"""
    inv = default_inv_freq(base, n_rot)
    low_wavelen = original_max_position / low_freq_factor
    high_wavelen = original_max_position / high_freq_factor
    wavelen = 2 * np.pi / inv
    out = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (original_max_position / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, out)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def sdpa(q, k, v, scaling, window=None):
    """q (n, H, d), k/v (n, Hkv, d) at positions 0..n-1, causal (and within ``window``
    positions: kv_idx > q_idx - window) -> (n, H * d). HF's eager_attention_forward with
    repeat_kv."""
    n, H, d = q.shape
    rep = H // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    s = np.einsum("qhd,khd->hqk", q, k) * scaling
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    allowed = j <= i
    if window:
        allowed &= j > i - window
    s = np.where(allowed[None], s, -np.inf)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", p, v).reshape(n, H * d)


class FamilyReference:
    """``FamilyReference(path).forward(tokens)`` -> logits (n, n_vocab), float64.

    ``quantize_acts``: each matmul input first makes the round trip through the weight's
    activation format, as the engine does (then only float rounding separates the two).
    ``inv_freq``: HF's inverse frequencies where the file's rope_freqs stand for them (llama3)."""

    def __init__(self, path, quantize_acts=False, inv_freq=None):
        self.meta, self.w, self.types = read_gguf(path)
        self.arch = str(self.meta["general.architecture"])
        self.quantize_acts = quantize_acts
        self.inv_freq = inv_freq

    def hp(self, key, default=None):
        v = self.meta.get(f"{self.arch}.{key}", default)
        if v is None:
            raise KeyError(key)
        return v

    def lin(self, name, x):
        if self.quantize_acts:
            vt = T.GGML_TYPES[self.types[name]].vec_dot_type
            x = np.stack([activation_roundtrip(vt, row) for row in np.asarray(x, np.float32)])
        return x @ self.w[name].T

    def forward(self, tokens):
        a, w = self.arch, self.w
        E, L = int(self.hp("embedding_length")), int(self.hp("block_count"))
        H = int(self.hp("attention.head_count"))
        Hkv = int(self.hp("attention.head_count_kv", H))
        d = int(self.hp("attention.key_length", E // H))
        n_rot = int(self.hp("rope.dimension_count", d))
        eps = float(self.hp("attention.layer_norm_rms_epsilon"))
        base = float(self.hp("rope.freq_base", 10000.0))
        factor = float(self.hp("rope.scaling.factor", 1.0)) if self.hp("rope.scaling.type", "none") == "linear" \
            else 1.0
        inv_global = default_inv_freq(base, n_rot) / factor if self.inv_freq is None else self.inv_freq
        gemma = a == "gemma3"
        window = int(self.hp("attention.sliding_window", 0)) if gemma else 0
        # Gemma3RMSNorm: x * (1 + w_hf), w_hf = the file's weight - 1
        norm_w = (lambda name: 1.0 + (w[name] - 1.0)) if gemma else (lambda name: w[name])
        n = len(tokens)
        pos = np.arange(n, dtype=np.float64)
        x = w["token_embd.weight"][np.asarray(tokens)]
        if gemma:
            x = x * np.sqrt(E)                     # Gemma3TextScaledWordEmbedding
        for i in range(L):
            p = f"blk.{i}."
            h = rms(x, norm_w(p + "attn_norm.weight"), eps)
            if p + "attn_qkv.weight" in w:         # Phi3Attention: qkv_proj, split by columns
                qkv = self.lin(p + "attn_qkv.weight", h)
                q, k, v = qkv[:, :H * d], qkv[:, H * d:(H + Hkv) * d], qkv[:, (H + Hkv) * d:]
            else:
                q, k, v = (self.lin(p + f"attn_{c}.weight", h) for c in "qkv")
            if a == "qwen2":
                q, k, v = q + w[p + "attn_q.bias"], k + w[p + "attn_k.bias"], v + w[p + "attn_v.bias"]
            q, k, v = q.reshape(n, H, d), k.reshape(n, Hkv, d), v.reshape(n, Hkv, d)
            if a in ("qwen3", "gemma3"):
                q = rms(q, norm_w(p + "attn_q_norm.weight"), eps)
                k = rms(k, norm_w(p + "attn_k_norm.weight"), eps)
            sliding = gemma and (i + 1) % 6 != 0
            inv = default_inv_freq(10000.0, n_rot) if sliding else inv_global
            q, k = rope_hf(q, inv, pos, adjacent=a == "llama"), rope_hf(k, inv, pos, adjacent=a == "llama")
            if gemma:
                scaling = (E // H if L == 62 else d) ** -0.5     # query_pre_attn_scalar ** -0.5
            else:
                scaling = d ** -0.5
            o = self.lin(p + "attn_output.weight", sdpa(q, k, v, scaling, window if sliding else None))
            if gemma:
                o = rms(o, norm_w(p + "post_attention_norm.weight"), eps)
            x = x + o
            h = rms(x, norm_w(p + "ffn_norm.weight"), eps)
            if a == "phi3":                        # Phi3MLP: gate_up_proj, chunk(2): gate, up
                gu = self.lin(p + "ffn_up.weight", h)
                f = silu(gu[:, :gu.shape[1] // 2]) * gu[:, gu.shape[1] // 2:]
            else:
                act = gelu_tanh if gemma else silu
                f = act(self.lin(p + "ffn_gate.weight", h)) * self.lin(p + "ffn_up.weight", h)
            f = self.lin(p + "ffn_down.weight", f)
            if gemma:
                f = rms(f, norm_w(p + "post_ffw_norm.weight"), eps)
            x = x + f
        x = rms(x, norm_w("output_norm.weight"), eps)
        return self.lin("output.weight" if "output.weight" in w else "token_embd.weight", x)
