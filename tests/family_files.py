"""Tiny random-weight GGUF files of each model family, written the way llama.cpp's
convert_hf_to_gguf.py writes them, for checking the runtime against HF transformers.

Owns: the HF config of each tiny family model (a dict shaped like the model's config.json),
random HF-layout weights for it, and their conversion into a GGUF file: llama.cpp's key names
per architecture, its tensor names (gguf-py's TensorNameMap, the table the converter maps
with), and the converter's changes to the tensors:
  - llama: the Q/K rows of each head reordered (``permute``) so that ggml's RoPE on adjacent
    pairs equals HF's rotate-half; Llama 3's ``rope_freqs.weight`` from its rope scaling;
  - qwen2: q/k/v biases; qwen3: per-head q/k RMSNorm and a head size that is not
    n_embd / n_head (attention.key_length / value_length);
  - phi3: fused attn_qkv and ffn_up (gate rows first, then up), stored as HF has them;
  - gemma3: every ``*norm.weight`` stored with the 1 of Gemma's RMSNorm(1 + w) already added,
    the sliding window key, the global and local RoPE bases, tied embeddings.
Does not own: the float reference (family_reference.py), nor anything of guanaco_rt's loader.

Tensor types: norms, biases and rope_freqs are F32 (as the converter leaves 1-D tensors);
matrices are F32, F16, Q4_0 or Q8_0 written with gguf-py's quantizers, or Q4_K, which gguf-py
cannot quantize: its blocks are random valid ones (guanaco_rt.writer.random_tensor_bytes), and
the HF weights are then the ones those blocks stand for. Either way the reference reads the
weights back from the file, so what the file holds is what both sides run.
"""
import json
import math
import os

import gguf
import numpy as np
from gguf import GGMLQuantizationType as GQ

FAMILIES = ("llama", "llama3", "qwen2", "qwen3", "phi3", "gemma3")
ARCH = {"llama": "llama", "llama3": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3", "gemma3": "gemma3"}
TYPES = {"f32": GQ.F32, "f16": GQ.F16, "q8_0": GQ.Q8_0, "q4_0": GQ.Q4_0, "q4_K": GQ.Q4_K}


# ---- configs ------------------------------------------------------------------------------
def hf_config(family, n_embd=128, n_layer=2, n_vocab=300):
    """A tiny config.json of ``family``: the shape of the small models people run, shrunk
    (head counts, GQA, tied embeddings, head sizes and norms as in SmolLM2 / Llama 3.2 /
    Qwen2.5 / Qwen3 / Phi-3-mini / Gemma 3). ``n_embd`` 256 and up makes every matrix
    row a multiple of 256, which Q4_K needs."""
    n_head = 4
    base = {"vocab_size": n_vocab, "hidden_size": n_embd, "intermediate_size": 2 * n_embd,
            "num_hidden_layers": n_layer, "num_attention_heads": n_head, "max_position_embeddings": 4096,
            "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}
    if family == "llama":       # SmolLM2-like: SentencePiece-style vocab here, tied, GQA
        return {**base, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_key_value_heads": 2,
                "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True}
    if family == "llama3":      # Llama-3.2-like: byte-level BPE (llama-bpe), rope_type llama3, tied
        # original_max_position_embeddings is shrunk from 8192 to 32 so that the scaled
        # frequencies change angles within a short test prompt; the converter reads it from
        # the top level (default 8192), HF from rope_scaling: both are written
        return {**base, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_key_value_heads": 2,
                "head_dim": n_embd // n_head, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                "original_max_position_embeddings": 32,
                "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                "tie_word_embeddings": True}
    if family == "qwen2":       # Qwen2.5-0.5B-like: q/k/v biases, tied
        return {**base, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_key_value_heads": 2,
                "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
                "use_sliding_window": False}
    if family == "qwen3":       # Qwen3-0.6B-like: q/k norms, head_dim * n_head != n_embd, tied
        return {**base, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "num_key_value_heads": 2,
                "head_dim": 2 * n_embd // n_head, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                "attention_bias": False, "tie_word_embeddings": True}
    if family == "phi3":        # Phi-3-mini-4k-like: fused qkv and gate/up, MHA, untied
        return {**base, "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "num_key_value_heads": n_head,
                "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "original_max_position_embeddings": 4096,
                "sliding_window": 2047, "tie_word_embeddings": False}
    if family == "gemma3":      # Gemma-3-270m-like: MQA, head_dim 2x, 5 local : 1 global layers
        # a window of 6 so a 12-token prompt slides; the query scale is head_dim ** -0.5,
        # which is what llama.cpp uses for every Gemma 3 but the 27B
        return {**base, "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
                "num_hidden_layers": max(n_layer, 6), "num_key_value_heads": 1, "head_dim": 2 * n_embd // n_head,
                "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
                "sliding_window": 6, "query_pre_attn_scalar": 2 * n_embd // n_head,
                "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": None,
                "attn_logit_softcapping": None, "tie_word_embeddings": True, "bos_token_id": 2, "eos_token_id": 1,
                "pad_token_id": 0}
    raise ValueError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")


def head_dim(config):
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


# ---- random HF weights --------------------------------------------------------------------
def hf_shapes(config):
    """HF state-dict name -> shape (out, in) for ``config``, in the order the models list them."""
    fam = family_of(config)
    E, F, L = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    H, KV, D = config["num_attention_heads"], config["num_key_value_heads"], head_dim(config)
    out = {"model.embed_tokens.weight": (config["vocab_size"], E)}
    for i in range(L):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (E,)
        if fam == "phi3":
            out[p + "self_attn.qkv_proj.weight"] = ((H + 2 * KV) * D, E)
        else:
            out[p + "self_attn.q_proj.weight"] = (H * D, E)
            out[p + "self_attn.k_proj.weight"] = (KV * D, E)
            out[p + "self_attn.v_proj.weight"] = (KV * D, E)
            if fam == "qwen2":
                out[p + "self_attn.q_proj.bias"] = (H * D,)
                out[p + "self_attn.k_proj.bias"] = (KV * D,)
                out[p + "self_attn.v_proj.bias"] = (KV * D,)
            if fam in ("qwen3", "gemma3"):
                out[p + "self_attn.q_norm.weight"] = (D,)
                out[p + "self_attn.k_norm.weight"] = (D,)
        out[p + "self_attn.o_proj.weight"] = (E, H * D)
        out[p + "post_attention_layernorm.weight"] = (E,)
        if fam == "gemma3":
            out[p + "pre_feedforward_layernorm.weight"] = (E,)
            out[p + "post_feedforward_layernorm.weight"] = (E,)
        if fam == "phi3":
            out[p + "mlp.gate_up_proj.weight"] = (2 * F, E)
        else:
            out[p + "mlp.gate_proj.weight"] = (F, E)
            out[p + "mlp.up_proj.weight"] = (F, E)
        out[p + "mlp.down_proj.weight"] = (E, F)
    out["model.norm.weight"] = (E,)
    if not config.get("tie_word_embeddings"):
        out["lm_head.weight"] = (config["vocab_size"], E)
    return out


EMB_STD = 0.25      # logits of std ~3 at n_embd 128, as a trained model's: softmax not one-hot


def random_hf_weights(config, seed=0):
    """Random float32 HF weights: matrices ~ N(0, 1/in), embeddings and an untied output ~
    N(0, EMB_STD^2) (Gemma's embeddings N(0, 0.01): it multiplies them by sqrt(n_embd)), norms around their identity (1,
    or 0 for Gemma's 1 + w), biases ~ N(0, 0.5) so they matter."""
    rng = np.random.default_rng(seed)
    gemma = family_of(config) == "gemma3"
    out = {}
    for name, shape in hf_shapes(config).items():
        if name.endswith("norm.weight"):
            w = rng.normal(0.0 if gemma else 1.0, 0.2, shape)
        elif name.endswith(".bias"):
            w = rng.normal(0.0, 0.5, shape)
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            w = rng.normal(0.0, 0.1 if gemma and name == "model.embed_tokens.weight" else EMB_STD, shape)
        else:
            w = rng.normal(0.0, 1.0 / math.sqrt(shape[1]), shape)
        out[name] = w.astype(np.float32)
    return out


def family_of(config):
    arch = config["architectures"][0]
    if arch == "LlamaForCausalLM":
        return "llama3" if (config.get("rope_scaling") or {}).get("rope_type") == "llama3" else "llama"
    return {"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "Phi3ForCausalLM": "phi3",
            "Gemma3ForCausalLM": "gemma3"}[arch]


# ---- the converter's changes to the tensors ------------------------------------------------
def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute: within each head, HF's rotate-half order
    (first half, second half) -> ggml's adjacent pairs (row 2i, 2i+1 = HF rows i, i + d/2)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    """The inverse of ``permute``."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(config):
    """The converter's rope_freqs.weight for rope_type llama3 (one factor per rotated pair; ggml
    divides each pair's frequency by it)."""
    rs = config["rope_scaling"]
    base, dim = config["rope_theta"], head_dim(config)
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, lo, hi = rs.get("factor", 8.0), rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old = config.get("original_max_position_embeddings", 8192)
    lo_wavelen, hi_wavelen = old / lo, old / hi
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < hi_wavelen:
            out.append(1.0)
        elif wavelen > lo_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


def to_gguf_tensors(config, hf):
    """HF weights -> {GGUF name: float32 array (numpy order: rows, cols)} as the converter
    writes them."""
    fam, arch = family_of(config), ARCH[family_of(config)]
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config["num_hidden_layers"])
    H, KV = config["num_attention_heads"], config["num_key_value_heads"]
    out = {}
    for name, w in hf.items():
        if fam in ("llama", "llama3"):
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                w = permute(w, H)
            elif name.endswith(("k_proj.weight", "k_proj.bias")):
                w = permute(w, KV)
        if fam == "gemma3" and name.endswith("norm.weight"):
            w = w + np.float32(1.0)
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise KeyError(f"no GGUF name for {name} in {arch}")
        out[new] = w
    if fam == "llama3":
        out["rope_freqs.weight"] = llama3_rope_factors(config)
    return out


# ---- vocabularies ---------------------------------------------------------------------------
PHI3_SPECIALS = ["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>"]


def spm_pieces(n_vocab, family="llama"):
    """(text, score, type) SentencePiece pieces: control tokens, the 256 byte pieces, words.
    Gemma's order: <pad> <eos> <bos> <unk>; otherwise <unk> <s> </s>. Phi-3's vocabulary ends
    with its chat tokens (llama.cpp refuses a phi3 file without them: it looks <|end|> up)."""
    if family == "gemma3":
        pieces = [("<pad>", 0.0, 3), ("<eos>", 0.0, 3), ("<bos>", 0.0, 3), ("<unk>", 0.0, 2)]
    else:
        pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    words = [f"\u2581{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz")
    words += [f"\u2581{a}{b}" for a in "abcdefghijklmnopqrstuvwxyz" for b in "aeiou"]
    pieces += [(w, -float(i), 1) for i, w in enumerate(words)]
    if family == "phi3":
        return pieces[:n_vocab - len(PHI3_SPECIALS)] + [(t, 0.0, 3) for t in PHI3_SPECIALS]
    return pieces[:n_vocab]


GPT2_WORDS = ["the", "and", "of", "to", "in", "is", "it", "that", "was", "for", "on", "are", "with", "as", "be",
              "at", "one", "have", "this", "from", "or", "had", "by", "not", "but", "what", "all", "were", "we",
              "when", "your", "can", "said", "there", "use", "an", "each", "which", "she", "do", "how", "their"]


def gpt2_vocab(n_vocab, specials):
    """A byte-level BPE vocabulary of n_vocab tokens: the 256 byte symbols, merges that build
    common words (with and without the leading space), then ``specials`` (control tokens) at
    the end -> (tokens, types, merges)."""
    from guanaco_rt.bpe import byte_alphabet  # GPT-2's published byte -> symbol table
    enc, _ = byte_alphabet()
    tokens = [enc[b] for b in range(256)]
    have, merges = set(tokens), []
    n_words = n_vocab - len(specials)
    for word in GPT2_WORDS:
        for text in (word, " " + word):
            syms = [enc[b] for b in text.encode()]
            while len(syms) > 1 and len(tokens) < n_words:
                a, b = syms[0], syms[1]
                if a + b not in have:
                    merges.append(f"{a} {b}")
                    tokens.append(a + b)
                    have.add(a + b)
                syms[0:2] = [a + b]
    types = [1] * len(tokens) + [3] * len(specials)
    return tokens + list(specials), types, merges


def add_vocab(w, family, n_vocab):
    """The tokenizer.ggml.* keys the converter writes for ``family`` (a tiny vocab of n_vocab)."""
    from guanaco_rt.writer import add_spm_vocab
    if family in ("llama", "phi3", "gemma3"):
        pieces = spm_pieces(n_vocab, family)
        if family == "gemma3":
            add_spm_vocab(w, pieces, bos_id=2, eos_id=1, unk_id=3)
            w.add_pad_token_id(0)
            w.add_add_space_prefix(False)
        elif family == "phi3":            # eos and pad <|endoftext|>, as Phi-3-mini's
            eot = len(pieces) - len(PHI3_SPECIALS)
            add_spm_vocab(w, pieces, bos_id=1, eos_id=eot, unk_id=0)
            w.add_pad_token_id(eot)
        else:
            add_spm_vocab(w, pieces, bos_id=1, eos_id=2, unk_id=0)
        w.add_tokenizer_pre("default")
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        return
    if family == "llama3":      # bos <|begin_of_text|>, eos <|eot_id|> (an instruct model's)
        specials, pre, bos, eos, add_bos = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], "llama-bpe", 0, 2, 1
    else:                       # qwen2, qwen3: bos <|endoftext|>, eos <|im_end|>, no BOS added
        specials, pre, bos, eos, add_bos = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "qwen2", 0, 2, 0
    tokens, types, merges = gpt2_vocab(n_vocab, specials)
    base = len(tokens) - len(specials)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(base + bos)
    w.add_eos_token_id(base + eos)
    if family != "llama3":
        w.add_pad_token_id(base)
    w.add_add_bos_token(bool(add_bos))


def vocab_size(family, n_vocab):
    """How many tokens add_vocab writes for a requested n_vocab (the BPE vocab may run out of
    merges before n_vocab; the config's vocab_size must match it)."""
    if family in ("llama3", "qwen2", "qwen3"):
        return len(gpt2_vocab(n_vocab, ["a", "b", "c"])[0])
    return len(spm_pieces(n_vocab, family))


def family_prompts(n_vocab, lengths=(12, 16, 20), seed=5):
    """Prompts of random ids (the first 1) of ``lengths`` (the default ones are longer than
    the gemma3 file's 6-token window)."""
    rng = np.random.default_rng(seed)
    return [[1] + [int(t) for t in rng.integers(3, n_vocab - 3, n - 1)] for n in lengths]


# ---- the file ------------------------------------------------------------------------------
def add_hparams(w, config):
    """The {arch}.* keys convert_hf_to_gguf.py writes for this family."""
    fam = family_of(config)
    E, H, KV = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(E)
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if "head_dim" in config:
        w.add_key_length(config["head_dim"])
        w.add_value_length(config["head_dim"])
    if fam == "gemma3":
        w.add_rope_freq_base(config["rope_theta"])                     # the global layers'
        w.add_rope_freq_base_swa(config["rope_local_base_freq"])       # the sliding ones'
        w.add_sliding_window(config["sliding_window"])
    else:
        w.add_rope_freq_base(config["rope_theta"])
    if fam in ("llama", "llama3"):
        w.add_vocab_size(config["vocab_size"])
        w.add_rope_dimension_count(head_dim(config))
    if fam == "phi3":
        w.add_rope_scaling_orig_ctx_len(config["original_max_position_embeddings"])
        w.add_rope_dimension_count(int(config.get("partial_rotary_factor", 1.0) * E) // H)
        w.add_sliding_window(config.get("sliding_window") or 0)


def encode(arr, qtype, rng):
    """float32 (rows, cols) -> (array to write, raw_dtype or None) in ``qtype``."""
    if qtype == GQ.F32:
        return np.ascontiguousarray(arr, np.float32), None
    if qtype == GQ.F16:
        return np.ascontiguousarray(arr, np.float16), None
    if qtype in (GQ.Q8_0, GQ.Q4_0):
        return gguf.quants.quantize(np.ascontiguousarray(arr, np.float32), qtype), qtype
    if qtype == GQ.Q4_K:           # gguf-py has no Q4_K quantizer: random valid blocks of the same spread
        from guanaco_rt.writer import random_tensor_bytes
        rows, cols = arr.shape
        raw = random_tensor_bytes(int(qtype), (cols, rows), rng, std=float(arr.std()))
        return np.frombuffer(raw, np.uint8).reshape(rows, -1), qtype
    raise ValueError(f"no writer for {qtype.name}")


def write_family_gguf(path, config, wtype="f16", emb_type=None, seed=0):
    """Write ``config``'s model with random weights to ``path`` (GGUF v3): matrices in
    ``wtype`` (a TYPES key), token embeddings (and output) in ``emb_type`` (default wtype),
    1-D tensors F32. Returns the path; the config goes beside it as path + '.json'."""
    fam = family_of(config)
    rng = np.random.default_rng(seed + 1000)
    tensors = to_gguf_tensors(config, random_hf_weights(config, seed))
    w = gguf.GGUFWriter(os.fspath(path), ARCH[fam])
    w.add_name(f"tiny-{fam}")
    add_hparams(w, config)
    w.add_file_type({"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q4_K": 15}[wtype])
    add_vocab(w, fam, config["vocab_size"])
    for name, arr in tensors.items():
        if arr.ndim == 1:
            w.add_tensor(name, np.ascontiguousarray(arr, np.float32))
            continue
        t = TYPES[emb_type or wtype] if name in ("token_embd.weight", "output.weight") else TYPES[wtype]
        data, raw = encode(arr, t, rng)
        if raw is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(os.fspath(path) + ".json", "w") as f:
        json.dump(config, f, indent=1)
    return os.fspath(path)


def family_file(root, family, wtype="f16", emb_type=None, n_embd=None, n_layer=2, seed=0, n_vocab=300):
    """(path, config) of a tiny ``family`` file in ``root``, written once (Q4_K files are
    256 wide, others 128)."""
    if n_embd is None:
        n_embd = 256 if "q4_K" in (wtype, emb_type) else 128
    config = hf_config(family, n_embd=n_embd, n_layer=n_layer, n_vocab=vocab_size(family, n_vocab))
    path = os.path.join(os.fspath(root), f"tiny-{family}-{wtype}-{emb_type or wtype}-e{n_embd}"
                                         f"-l{config['num_hidden_layers']}-s{seed}.gguf")
    if not os.path.exists(path):
        write_family_gguf(path + ".part", config, wtype, emb_type, seed)
        os.replace(path + ".part", path)
        os.replace(path + ".part.json", path + ".json")
    return path, config
