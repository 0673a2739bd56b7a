"""A model of one of the families the engine runs, from a GGUF file: metadata ->
hyperparameters, GGUF tensor names -> ours, and the vocabulary.

Owns: which GGUF keys are read and which are refused, the tensor name map, the fused
tensors split into row ranges (Phi-3), and the checks that the tensors agree with the
metadata. Does no math. The container itself is gguf_file.py; the forward pass is the
same engine the ggjt files run on, told the family's differences as hparams (_engine.Engine).

Families (general.architecture), with what llama.cpp's loader reads for each:
- llama: the base. Keys {arch}.embedding_length, block_count, attention.head_count,
  attention.head_count_kv (default head_count), attention.key_length (= value_length;
  default n_embd / n_head), rope.dimension_count (default key_length), rope.freq_base
  (default 10000), rope.scaling.type ("none" or "linear", with rope.scaling.factor),
  attention.layer_norm_rms_epsilon (default 1e-5), feed_forward_length (checked against
  the tensors); RoPE on adjacent pairs. An optional rope_freqs.weight (n_rot/2, F32: the
  per-dimension divisors llama.cpp's converter writes for Llama 3.x "llama3" rope scaling)
  divides the frequencies.
- qwen2: + attn_q/k/v biases; NEOX RoPE (the halves rotate).
- qwen3: + attn_q_norm / attn_k_norm (head_dim, RMSNorm of each head before RoPE); NEOX.
- phi3: fused attn_qkv (or separate q/k/v) and ffn_up holding gate then up (2 n_ff rows),
  split here into row ranges; NEOX. The sliding window it may declare is not applied, as
  llama.cpp does not apply it either (its loader turns Phi-3 SWA off).
- gemma3: embeddings times sqrt(n_embd); post_attention_norm / post_ffw_norm; Q/K norms;
  GeGLU; NEOX; attention.sliding_window (required): every layer l with l % 6 < 5 attends
  to the last sliding_window positions with RoPE base 10000 and no scaling, the others to
  all with rope.freq_base and the scaling; q.k scaled by 1/sqrt(key_length)
  (1/sqrt(n_embd / n_head) for the 62-layer model, as llama.cpp). The norm weights are
  used as written: llama.cpp's converter has already added Gemma's 1 to them.
Every family: the tokenizer keys below; output.weight optional (tied to token_embd).
Tokenizer: tokenizer.ggml.model ("llama": SentencePiece; "gpt2": byte-level BPE with
tokenizer.ggml.merges and the pre-tokenizer tokenizer.ggml.pre names), tokens, scores,
token_type, bos/eos/unknown/eot/eom/seperator/padding_token_id (a SentencePiece vocabulary without
them: 1, 2 and the UNKNOWN piece, as llama.cpp; eot and eom, and the end-of-generation set,
also found by the tokens' text as llama.cpp finds them), add_bos_token (default: true for
SentencePiece and the Llama 3 pre-tokenizers), add_eos_token (refused when true and the id is
not set), add_space_prefix.
Refused: any other architecture; rope scaling other than none/linear (yarn, longrope: their
attention factors are not implemented); Phi-3 rope_factors_long/short (LongRoPE of the
128k models); Gemma final-logit softcapping; tensor types this runtime has no kernels for
(gguf_file); a missing tensor or one of the wrong shape; n_vocab or n_ff that disagree with
the tensors; a layer tensor whose number is not written as llama.cpp writes it ("blk.%d.")
or is past block_count.
n_vocab and n_ff are taken from the tensors (token_embd rows, ffn_gate rows or half ffn_up's).
"""
import math
from dataclasses import dataclass

from .bpe import IGNORE_MERGES
from .errors import FormatError
from .ggml_types import FTYPES, GGUF_FTYPE_NAMES
from .gguf_file import GGUFTensor
from .tokenizer import CONTROL, UNKNOWN, USER_DEFINED

# our name -> tokenizer.ggml.<key>_token_id, each an id in [0, n_vocab) when set (GGUF spells
# the separator "seperator")
SPECIAL_IDS = {"bos": "bos", "eos": "eos", "unknown": "unknown", "eot": "eot", "eom": "eom", "sep": "seperator",
               "padding": "padding"}
# tokens llama.cpp adds to its end-of-generation set by their text (llama-vocab.cpp): the
# end of a turn or of the text in the families this runtime reads and their relatives
# (left out: its harmony, solar-open, minimax and gemma4-only spellings, and "</s>", which it
# adds for one OCR model: Qwen's vocabulary has "</s>" as ordinary text, and in a SentencePiece
# one it is the EOS anyway)
EOG_SPELLINGS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
                 "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>",
                 "<｜end▁of▁sentence｜>")
# of those, the ones it takes for the end-of-turn id when the file sets none (llama.cpp takes
# whichever its hash map yields first; we take the first in this order)
EOT_SPELLINGS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>", "_<EOT>",
                 "<|end_of_text|>", "<end_of_utterance>", "<｜end▁of▁sentence｜>")

ARCHS = ("llama", "qwen2", "qwen3", "phi3", "gemma3")
NEOX = ("qwen2", "qwen3", "phi3", "gemma3")      # RoPE on the halves (llama.cpp's LLAMA_ROPE_TYPE_NEOX)
NAMES = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
         "output.weight": "output.weight", "rope_freqs.weight": "rope_freqs.weight"}
LAYER_NAMES = {"attn_norm": "attention_norm", "attn_q": "attention.wq", "attn_k": "attention.wk",
               "attn_v": "attention.wv", "attn_output": "attention.wo", "ffn_norm": "ffn_norm",
               "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3",
               "attn_qkv": "attention.wqkv", "attn_q_norm": "attention.q_norm", "attn_k_norm": "attention.k_norm",
               "post_attention_norm": "attention_post_norm", "post_ffw_norm": "ffn_post_norm"}
BIASED = ("attn_q", "attn_k", "attn_v")         # the tensors whose .bias is read (Qwen2)
# per layer, beyond the LLaMA set (our names without "layers.{i}." and ".weight"/".bias")
EXTRA = {"llama": (), "qwen2": ("attention.wq.bias", "attention.wk.bias", "attention.wv.bias"),
         "qwen3": ("attention.q_norm.weight", "attention.k_norm.weight"), "phi3": (),
         "gemma3": ("attention.q_norm.weight", "attention.k_norm.weight", "attention_post_norm.weight",
                    "ffn_post_norm.weight")}
BASE = ("attention_norm", "attention.wq", "attention.wk", "attention.wv", "attention.wo", "ffn_norm",
        "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
GEMMA3_SWA_PATTERN = 6                          # llama.cpp's set_swa_pattern(6): every 6th layer global


@dataclass
class GGUFHParams:
    n_vocab: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_layer: int
    n_rot: int
    n_ff: int
    rope_base: float
    rope_freq_scale: float
    eps: float
    ftype: int
    version: int
    arch: str = "llama"
    head_dim: int = 0            # key_length; 0: n_embd // n_head
    rope_neox: bool = False      # RoPE rotates the halves of each head, not adjacent pairs
    glu: str = "silu"            # the feed-forward gate: silu (SwiGLU) or gelu (GeGLU, tanh form)
    embd_scale: float = 1.0      # token embeddings times this
    attn_scale: float = 0.0      # q.k times this; 0: 1/sqrt(head_dim)
    n_swa: int = 0               # sliding window of the layers swa_pattern picks (0: none)
    swa_pattern: int = 0         # layer l has the window when l % swa_pattern < swa_pattern - 1
    rope_base_swa: float = 0.0   # the sliding-window layers' RoPE base and scale (0: rope_base's)
    rope_freq_scale_swa: float = 0.0

    def __post_init__(self):
        self.head_dim = self.head_dim or self.n_embd // self.n_head
        self.rope_base_swa = self.rope_base_swa or self.rope_base
        self.rope_freq_scale_swa = self.rope_freq_scale_swa or self.rope_freq_scale

    @property
    def ftype_name(self):
        if self.ftype in FTYPES:
            return FTYPES[self.ftype].name
        return GGUF_FTYPE_NAMES.get(self.ftype, f"ftype {self.ftype}")

    def as_dict(self):
        return {"n_vocab": self.n_vocab, "n_embd": self.n_embd, "n_head": self.n_head, "n_head_kv": self.n_head_kv,
                "n_layer": self.n_layer, "n_rot": self.n_rot, "n_ff": self.n_ff, "rope_base": self.rope_base,
                "rope_freq_scale": self.rope_freq_scale, "eps": self.eps, "ftype": self.ftype,
                "ftype_name": self.ftype_name, "version": self.version, "arch": self.arch,
                "head_dim": self.head_dim, "rope_neox": self.rope_neox, "glu": self.glu,
                "embd_scale": self.embd_scale, "attn_scale": self.attn_scale, "n_swa": self.n_swa,
                "swa_pattern": self.swa_pattern, "rope_base_swa": self.rope_base_swa,
                "rope_freq_scale_swa": self.rope_freq_scale_swa}


@dataclass
class GGUFModelFile:
    path: str
    hparams: GGUFHParams
    tensors: dict          # our names -> gguf_file.GGUFTensor (a fused tensor's parts: row ranges of it)
    metadata: dict
    vocab: dict            # tokenizer model, tokens, scores, types, special ids


def _get(g, key, kinds, default=None, lo=None, hi=None):
    if key not in g.metadata:
        if default is None:
            raise FormatError(g.path, key, "is missing")
        return default
    v, t = g.metadata[key], g.types[key]
    if t not in kinds:
        raise FormatError(g.path, key, f"has type {t}, expected {' or '.join(kinds)}")
    if lo is not None and not lo <= v <= hi:
        raise FormatError(g.path, key, f"{v} is outside [{lo}, {hi}]")
    return v


INTS = ("u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64")
FLOATS = ("f32", "f64")


def _rows(t, lo, hi, name):
    """Rows lo..hi-1 of the matrix t, as a tensor of its own (a view of the same bytes)."""
    row = t.nbytes // t.n_rows
    return GGUFTensor(name, t.type, (t.shape[0], hi - lo), t.offset + lo * row, (hi - lo) * row)


def load(g):
    """gguf_file.GGUFFile -> GGUFModelFile, every key and tensor checked."""
    arch = _get(g, "general.architecture", ("string",))
    if arch not in ARCHS:
        raise FormatError(g.path, "general.architecture", f"{str(arch)[:80]!r} is not supported (supported: "
                                                          f"{', '.join(ARCHS)})")
    n_embd = _get(g, f"{arch}.embedding_length", INTS, lo=1, hi=1 << 16)
    n_layer = _get(g, f"{arch}.block_count", INTS, lo=1, hi=1 << 10)
    n_head = _get(g, f"{arch}.attention.head_count", INTS, lo=1, hi=1 << 10)
    n_head_kv = _get(g, f"{arch}.attention.head_count_kv", INTS, default=n_head, lo=1, hi=n_head)
    if n_embd % n_head or n_head % n_head_kv:
        raise FormatError(g.path, f"{arch}.attention.head_count", f"n_embd {n_embd}, {n_head} heads and {n_head_kv} "
                                                                  "KV heads do not divide evenly")
    head_dim = _get(g, f"{arch}.attention.key_length", INTS, default=n_embd // n_head, lo=2, hi=1 << 12)
    v_dim = _get(g, f"{arch}.attention.value_length", INTS, default=head_dim)
    if v_dim != head_dim:
        raise FormatError(g.path, f"{arch}.attention.value_length", f"{v_dim} differs from key_length {head_dim}")
    n_rot = _get(g, f"{arch}.rope.dimension_count", INTS, default=head_dim, lo=0, hi=head_dim)
    if n_rot % 2:
        raise FormatError(g.path, f"{arch}.rope.dimension_count", f"{n_rot} is odd")
    rope_base = float(_get(g, f"{arch}.rope.freq_base", FLOATS, default=10000.0, lo=1.0, hi=1e12))
    scaling = _get(g, f"{arch}.rope.scaling.type", ("string",), default="none")
    freq_scale = 1.0
    if scaling == "linear":
        freq_scale = 1.0 / float(_get(g, f"{arch}.rope.scaling.factor", FLOATS, lo=1e-3, hi=1e6))
    elif scaling != "none":
        why = (" (Llama 3.x files carry their rope scaling as the rope_freqs.weight tensor, which is read)"
               if scaling == "llama3" else "")
        raise FormatError(g.path, f"{arch}.rope.scaling.type", f"{str(scaling)[:40]!r} is not supported (none, "
                                                               f"linear){why}")
    eps = float(_get(g, f"{arch}.attention.layer_norm_rms_epsilon", FLOATS, default=1e-5, lo=0.0, hi=1.0))
    ftype = _get(g, "general.file_type", INTS, default=-1)
    tensors = _tensor_map(g, arch, n_layer)
    emb = tensors.get("tok_embeddings.weight")
    if emb is None:
        raise FormatError(g.path, "tensors", "token_embd.weight is missing")
    if len(emb.shape) != 2 or emb.shape[0] != n_embd:
        raise FormatError(g.path, "token_embd.weight", f"shape {emb.shape}, expected ({n_embd}, n_vocab)")
    n_vocab = emb.shape[1]
    n_q, n_kv = n_head * head_dim, n_head_kv * head_dim
    if arch == "phi3":
        _split_phi3(g, tensors, n_layer, n_q, n_kv)
    need = ["tok_embeddings.weight", "norm.weight"] + [f"layers.{i}.{v}.weight" for i in range(n_layer) for v in BASE]
    need += [f"layers.{i}.{v}" for i in range(n_layer) for v in EXTRA[arch]]
    for name in need:
        if name not in tensors:
            raise FormatError(g.path, "tensors", f"{name} is missing (needed by {arch})")
    gate = tensors["layers.0.feed_forward.w1.weight"]
    n_ff = gate.shape[1] if len(gate.shape) == 2 else 0
    declared_ff = _get(g, f"{arch}.feed_forward_length", INTS, default=n_ff)
    if declared_ff != n_ff:
        what = "half of ffn_up" if arch == "phi3" else "ffn_gate"
        raise FormatError(g.path, f"{arch}.feed_forward_length", f"{declared_ff}, but {what} has {n_ff} rows")
    expect = {"norm.weight": (n_embd,), "output.weight": (n_embd, n_vocab), "rope_freqs.weight": (n_rot // 2,)}
    for i in range(n_layer):
        p = f"layers.{i}."
        expect.update({p + "attention_norm.weight": (n_embd,), p + "ffn_norm.weight": (n_embd,),
                       p + "attention.wq.weight": (n_embd, n_q), p + "attention.wo.weight": (n_q, n_embd),
                       p + "attention.wk.weight": (n_embd, n_kv), p + "attention.wv.weight": (n_embd, n_kv),
                       p + "feed_forward.w1.weight": (n_embd, n_ff), p + "feed_forward.w3.weight": (n_embd, n_ff),
                       p + "feed_forward.w2.weight": (n_ff, n_embd), p + "attention.wq.bias": (n_q,),
                       p + "attention.wk.bias": (n_kv,), p + "attention.wv.bias": (n_kv,),
                       p + "attention.q_norm.weight": (head_dim,), p + "attention.k_norm.weight": (head_dim,),
                       p + "attention_post_norm.weight": (n_embd,), p + "ffn_post_norm.weight": (n_embd,)})
    for name, shape in expect.items():
        if name in tensors and tensors[name].shape != shape:
            raise FormatError(g.path, f"tensor {name}", f"shape {tensors[name].shape}, expected {shape}")
        if name in tensors and len(shape) == 1 and tensors[name].type != 0:
            raise FormatError(g.path, f"tensor {name}", f"is {tensors[name].type_name}, vectors must be F32")
    family = {"arch": arch, "head_dim": head_dim, "rope_neox": arch in NEOX}
    if arch == "gemma3":
        family.update(_gemma3(g, n_embd, n_head, n_layer, head_dim))
    hp = GGUFHParams(n_vocab, n_embd, n_head, n_head_kv, n_layer, n_rot, n_ff, rope_base, freq_scale, eps,
                     ftype, g.version, **family)
    return GGUFModelFile(g.path, hp, tensors, g.metadata, _vocab(g, n_vocab))


def _tensor_map(g, arch, n_layer):
    """The file's tensors under our names; what the family does not read is refused or left alone."""
    tensors = {}
    for name, t in g.tensors.items():
        if name in NAMES:
            if name == "rope_freqs.weight" and arch != "llama":
                raise FormatError(g.path, f"tensor {name!r}", f"per-dimension RoPE frequencies are not read for "
                                                              f"{arch} (llama only)")
            tensors[NAMES[name]] = t
            continue
        if "rope_factors" in name or name.endswith("rope_freqs.weight"):
            raise FormatError(g.path, f"tensor {name[:80]!r}", "per-dimension RoPE factors (LongRoPE, or per "
                                                               "layer) are not supported")
        parts = name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in LAYER_NAMES and parts[3] in ("weight", "bias"):
            # llama.cpp looks tensors up by the name it formats with "blk.%d.": a layer number
            # spelled otherwise ("00", "+1", "²", Arabic-Indic digits) is a tensor it never reads;
            # here it is refused rather than read as, or over, another layer
            layer = parts[1]
            if not (layer.isascii() and layer.isdigit() and (layer == "0" or layer[0] != "0")):
                raise FormatError(g.path, f"tensor {name[:80]!r}", f"layer number {layer[:20]!r} is not written as "
                                                                   "llama.cpp writes it (blk.%d.: ASCII digits, no "
                                                                   "leading zero)")
            if len(layer) > 9 or int(layer) >= n_layer:     # (int() of 4301+ digits is a ValueError)
                raise FormatError(g.path, f"tensor {name[:80]!r}", f"layer {layer[:20]} is past "
                                                                   f"{arch}.block_count {n_layer}")
            if parts[3] == "bias" and parts[2] not in BIASED:
                raise FormatError(g.path, f"tensor {name[:80]!r}", "is a bias this runtime does not read (only "
                                                                   "attn_q, attn_k and attn_v have one)")
            tensors[f"layers.{layer}.{LAYER_NAMES[parts[2]]}.{parts[3]}"] = t
        # other tensors (none in these families' files) are left alone
    return tensors


def _split_phi3(g, tensors, n_layer, n_q, n_kv):
    """Phi-3's fused tensors -> the parts the engine runs: attn_qkv (n_q + 2 n_kv rows) into
    wq, wk, wv; ffn_up (2 n_ff rows: the gate's, then the up projection's, as llama.cpp's
    swiglu halves) into w1 and w3. Each part is a row range of the file's tensor, so the
    8-row interleaving works on each."""
    for i in range(n_layer):
        p = f"layers.{i}."
        qkv = tensors.pop(p + "attention.wqkv.weight", None)
        if qkv is not None:
            if len(qkv.shape) != 2 or qkv.shape[1] != n_q + 2 * n_kv:
                raise FormatError(g.path, f"tensor blk.{i}.attn_qkv.weight", f"shape {qkv.shape}, expected "
                                                                             f"(n_embd, {n_q + 2 * n_kv})")
            for k, (lo, hi) in (("wq", (0, n_q)), ("wk", (n_q, n_q + n_kv)), ("wv", (n_q + n_kv, n_q + 2 * n_kv))):
                if p + f"attention.{k}.weight" in tensors:
                    raise FormatError(g.path, f"tensor blk.{i}.attn_qkv.weight", f"and attn_{k[1]} both present")
                tensors[p + f"attention.{k}.weight"] = _rows(qkv, lo, hi, f"blk.{i}.attn_qkv.weight[{lo}:{hi}]")
        up = tensors.pop(p + "feed_forward.w3.weight", None)
        if up is None:
            continue
        if p + "feed_forward.w1.weight" in tensors:
            raise FormatError(g.path, f"tensor blk.{i}.ffn_gate.weight", "phi3 has its gate in ffn_up; a separate "
                                                                          "ffn_gate is not read")
        if len(up.shape) != 2 or up.shape[1] % 2:
            raise FormatError(g.path, f"tensor blk.{i}.ffn_up.weight", f"shape {up.shape}: expected (n_embd, 2 n_ff)")
        n_ff = up.shape[1] // 2
        tensors[p + "feed_forward.w1.weight"] = _rows(up, 0, n_ff, f"blk.{i}.ffn_up.weight[0:{n_ff}]")
        tensors[p + "feed_forward.w3.weight"] = _rows(up, n_ff, 2 * n_ff, f"blk.{i}.ffn_up.weight[{n_ff}:{2 * n_ff}]")


def _gemma3(g, n_embd, n_head, n_layer, head_dim):
    """Gemma 3's hparams beyond the base, as llama.cpp's loader sets them."""
    cap = _get(g, "gemma3.final_logit_softcapping", FLOATS, default=0.0)
    if cap:
        raise FormatError(g.path, "gemma3.final_logit_softcapping", f"{cap} is not supported (Gemma 3 has none)")
    n_swa = _get(g, "gemma3.attention.sliding_window", INTS, lo=1, hi=1 << 24)
    # the 27B model (62 layers) scales q by n_embd / n_head rather than head_dim (query_pre_attn_scalar)
    scale = 1.0 / math.sqrt(n_embd // n_head if n_layer == 62 else head_dim)
    return {"glu": "gelu", "embd_scale": math.sqrt(n_embd), "attn_scale": scale, "n_swa": n_swa,
            "swa_pattern": GEMMA3_SWA_PATTERN, "rope_base_swa": 10000.0, "rope_freq_scale_swa": 1.0}


def _vocab(g, n_vocab):
    model = _get(g, "tokenizer.ggml.model", ("string",))
    if model not in ("llama", "gpt2"):
        raise FormatError(g.path, "tokenizer.ggml.model", f"{model!r} is not supported (llama, gpt2)")
    tokens = _get(g, "tokenizer.ggml.tokens", ("array[string]",))
    if len(tokens) != n_vocab:
        raise FormatError(g.path, "tokenizer.ggml.tokens", f"{len(tokens)} tokens, the embeddings have {n_vocab} rows")
    types = _get(g, "tokenizer.ggml.token_type", ("array[i32]", "array[u32]"), default=[1] * n_vocab)
    scores = _get(g, "tokenizer.ggml.scores", ("array[f32]",), default=[0.0] * n_vocab)
    if len(types) != n_vocab or len(scores) != n_vocab:
        raise FormatError(g.path, "tokenizer.ggml.token_type", "token_type / scores lengths differ from the tokens")
    ids = {}
    for key, spelled in SPECIAL_IDS.items():
        name = f"tokenizer.ggml.{spelled}_token_id"
        v = g.metadata.get(name)
        if v is not None and (g.types[name] not in INTS or isinstance(v, bool)):   # a bool is no token id
            raise FormatError(g.path, name, f"{v!r} has type {g.types[name]}, expected an integer token id")
        if v is not None and not 0 <= v < n_vocab:
            raise FormatError(g.path, name, f"{v!r} is outside [0, {n_vocab})")
        ids[key] = v
    if model == "llama":
        # keys the file leaves out: llama.cpp's defaults for SentencePiece (unk: the piece typed UNKNOWN)
        unk = types.index(UNKNOWN) if UNKNOWN in types else 0
        for key, default in (("bos", 1), ("eos", 2), ("unknown", unk)):
            if ids[key] is None and default < n_vocab:
                ids[key] = default
    merges, pre = [], None
    if model == "gpt2":
        merges = _get(g, "tokenizer.ggml.merges", ("array[string]",))
        pre = _get(g, "tokenizer.ggml.pre", ("string",), default="default")
    types, ids["eot"], ids["eom"], eog = _end_of_generation(tokens, types, ids)
    flags = {}
    for key, default in (("add_bos_token", model == "llama" or pre in IGNORE_MERGES), ("add_eos_token", False),
                         ("add_space_prefix", model == "llama")):
        v = g.metadata.get(f"tokenizer.ggml.{key}", default)
        if not isinstance(v, bool):
            raise FormatError(g.path, f"tokenizer.ggml.{key}", f"{v!r} is not a bool")
        flags[key] = v
    for key, id_key in (("add_bos_token", "bos"), ("add_eos_token", "eos")):
        if flags[key] and ids[id_key] is None:      # llama.cpp refuses this at load too
            raise FormatError(g.path, f"tokenizer.ggml.{key}", f"is true, but tokenizer.ggml.{id_key}_token_id "
                                                                "is not set")
    rstrip = []
    name = g.metadata.get("general.name")
    if isinstance(name, str) and ("phi-3" in name.lower() or "phi3" in name.lower()):
        # llama.cpp's rule (by the model's name): Phi-3's special tokens strip the whitespace
        # after them, but <unk>, <s> and <|endoftext|>; "</s>" too
        rstrip = [i for i, (t, ty) in enumerate(zip(tokens, types))
                  if (t and ty in (UNKNOWN, CONTROL, USER_DEFINED) and t not in ("<unk>", "<s>", "<|endoftext|>"))
                  or t == "</s>"]
    return {"model": model, "tokens": tokens, "types": types, "scores": scores, **ids, "eog": eog, "rstrip": rstrip,
            "merges": merges,
            "pre": pre, "add_bos": flags["add_bos_token"], "add_eos": flags["add_eos_token"],
            "add_space_prefix": flags["add_space_prefix"]}


def _end_of_generation(tokens, types, ids):
    """llama.cpp's end-of-generation set, found as it finds it: the file's eos, eot and eom
    ids, plus every token spelled as one of EOG_SPELLINGS (a file seldom sets eot_token_id:
    Qwen's <|im_end|>, Gemma's <end_of_turn>, Llama 3's <|eot_id|> are found by their text).
    The first EOT_SPELLINGS token (in that order) is the eot id when the file sets none, and
    <|eom_id|> the eom id. Such a token typed NORMAL (or anything but CONTROL and USER_DEFINED)
    becomes CONTROL, as in llama.cpp, so a chat template's text that spells it is that token.
    -> (types, eot id, eom id, sorted EOG ids)."""
    where = {}
    for i, t in enumerate(tokens):
        if t in EOG_SPELLINGS:
            where.setdefault(t, i)
    eot, eom = ids["eot"], ids["eom"]
    if eot is None:
        eot = next((where[t] for t in EOT_SPELLINGS if t in where), None)
    if eom is None:
        eom = where.get("<|eom_id|>")
    eog = set(where.values()) | {i for i in (ids["eos"], eot, eom) if i is not None}
    plain = [i for i in where.values() if types[i] not in (CONTROL, USER_DEFINED)]
    if plain:
        types = list(types)
        for i in plain:
            types[i] = CONTROL
    return types, eot, eom, sorted(eog)
