"""The float64 reference of a family file: HF transformers' own model of the family
(LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM, Gemma3ForCausalLM)
built from the config the file was converted from, with the file's weights.

Owns: reading a GGUF file's tensors back through gguf-py (its reader and dequantizers: code we
did not write), undoing what convert_hf_to_gguf.py did to them (the llama Q/K permutation,
Gemma's +1 on norms; phi3's fused tensors are HF's own layout), loading them into the HF model
in float64 and returning its logits. Nothing of guanaco_rt is used, so a shared mistake
cannot hide.

Precision: the weights and the activations between ops are float64. HF's RMSNorm of
Llama/Qwen/Phi3 rounds its input to float32 and Gemma's computes in float32; its RoPE
angles are float32 too. Those roundings (~1e-7 relative) are left as HF has them: they are
two orders below the closest bound the tests use (F32 files, ~1e-5).

transformers_gguf_state_dict() is a second, independent reading of the same file: the
weights as transformers' own GGUF loader (from_pretrained(gguf_file=...)) undoes the
converter, for the architectures it knows.
"""
import os

import numpy as np

from family_files import ARCH, family_of, head_dim, unpermute


def require_torch():
    """(torch, transformers), or pytest.skip naming what is missing."""
    import pytest
    try:
        import torch
        import transformers
    except ImportError as e:        # pragma: no cover - the [test] extra installs both
        pytest.skip(f"the HF reference needs torch and transformers: {e}")
    return torch, transformers


def gguf_weights(path):
    """{GGUF tensor name: float64 array in numpy order (rows, cols)}, dequantized by gguf-py."""
    import gguf
    from gguf.quants import dequantize
    r = gguf.GGUFReader(os.fspath(path))
    out = {}
    for t in r.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))      # ne is innermost-first
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            a = np.asarray(t.data, np.float64)
        else:
            a = dequantize(t.data, t.tensor_type).astype(np.float64)
        out[t.name] = a.reshape(shape)
    return out


def hf_config_object(config):
    """The transformers config of a config.json-like dict (eager attention)."""
    _, transformers = require_torch()
    kw = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "torch_dtype")}
    conf = transformers.AutoConfig.for_model(config["model_type"], **kw)
    conf.architectures = list(config["architectures"])
    conf._attn_implementation = "eager"          # plain softmax(QK^T)V, no fused kernel
    return conf


def hf_state_dict_from_gguf(config, path):
    """The HF state dict (float64 numpy) that the file at ``path`` is the conversion of."""
    import gguf
    fam = family_of(config)
    arch = ARCH[fam]
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config["num_hidden_layers"])
    file = gguf_weights(path)
    from family_files import hf_shapes
    H, KV = config["num_attention_heads"], config["num_key_value_heads"]
    out = {}
    for name, shape in hf_shapes(config).items():
        g = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        w = file[g]
        if fam in ("llama", "llama3"):
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                w = unpermute(w, H)
            elif name.endswith(("k_proj.weight", "k_proj.bias")):
                w = unpermute(w, KV)
        if fam == "gemma3" and name.endswith("norm.weight"):
            w = w - 1.0
        if w.shape != tuple(shape):
            raise ValueError(f"{path}: {g} has shape {w.shape}, {name} needs {tuple(shape)}")
        out[name] = w
    if config.get("tie_word_embeddings"):
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


class HFReference:
    """HF's model of ``config`` in float64 with the weights of the GGUF file at ``path``."""

    def __init__(self, config, path):
        torch, transformers = require_torch()
        self.torch = torch
        self.config = config
        conf = hf_config_object(config)
        cls = getattr(transformers, config["architectures"][0])
        torch.manual_seed(0)
        model = cls(conf).to(torch.float64).eval()
        sd = hf_state_dict_from_gguf(config, path)
        want = model.state_dict()
        missing = [k for k in want if k not in sd]
        if missing:
            raise KeyError(f"{path}: no weights for {missing[:5]}")
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(sd[k])) for k in want}, strict=True)
        self.model = model

    def logits(self, tokens):
        """float64 (len(tokens), n_vocab) for tokens at positions 0.."""
        torch = self.torch
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([list(tokens)], dtype=torch.long), use_cache=False)
        return out.logits[0].to(torch.float64).numpy()

    def greedy(self, tokens, n):
        """n greedy tokens after ``tokens`` and the margin (top-1 minus top-2 logit) of each."""
        toks, margins = list(tokens), []
        for _ in range(n):
            last = self.logits(toks)[-1]
            top2 = np.sort(last)[-2:]
            margins.append(float(top2[1] - top2[0]))
            toks.append(int(np.argmax(last)))
        return toks[len(tokens):], margins

    def inv_freq(self):
        """HF's RoPE inverse frequencies (float64) of the model's (global) rotary embedding."""
        rot = self.model.model.rotary_emb
        return rot.inv_freq.detach().to(self.torch.float64).numpy()


def default_inv_freq(config):
    base, d = config["rope_theta"], head_dim(config)
    return 1.0 / base ** (np.arange(0, d, 2, dtype=np.float64) / d)


class TransformersGGUFReference:
    """transformers' model of a (real) GGUF file, read by its own GGUF loader, in float64."""

    def __init__(self, path):
        torch, transformers = require_torch()
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        d, name = os.path.split(os.path.abspath(path))
        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            d, gguf_file=name, dtype=torch.float64, attn_implementation="eager").eval()

    def hidden(self, tokens):
        """float64 (len(tokens), n_embd): the hidden states after the final norm"""
        with self.torch.no_grad():
            out = self.model.model(input_ids=self.torch.tensor([list(tokens)], dtype=self.torch.long),
                                   use_cache=False)
        return out.last_hidden_state[0].to(self.torch.float64).numpy()

    def logits(self, tokens):
        """float64 (len(tokens), n_vocab)"""
        with self.torch.no_grad():
            out = self.model(input_ids=self.torch.tensor([list(tokens)], dtype=self.torch.long), use_cache=False)
        return out.logits[0].to(self.torch.float64).numpy()


def transformers_gguf_state_dict(path):
    """(state dict, None) as transformers' own GGUF loader builds it from the file (float64
    numpy), or (None, why) when this transformers cannot read the file's architecture or
    shapes from GGUF."""
    torch, transformers = require_torch()
    d, name = os.path.split(os.path.abspath(path))
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float64)
    except (ValueError, KeyError, NotImplementedError, RuntimeError, AssertionError) as e:
        return None, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    return {k: v.detach().to(torch.float64).numpy() for k, v in model.state_dict().items()}, None
