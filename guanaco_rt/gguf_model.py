"""A LLaMA-family model from a GGUF file: metadata -> hyperparameters, GGUF tensor
names -> ours, and the vocabulary.

Owns: which GGUF keys are read and which are refused, the tensor name map, and the
checks that the tensors agree with the metadata. Does no math. The container itself
is gguf_file.py; the forward pass is the same engine the ggjt files run on.

Read: general.architecture (must be "llama"), llama.embedding_length, block_count,
attention.head_count, attention.head_count_kv (default head_count),
rope.dimension_count (default head size), rope.freq_base (default 10000),
rope.scaling.type ("none" or "linear") with rope.scaling.factor,
attention.layer_norm_rms_epsilon (default 1e-5), feed_forward_length (checked against
the tensors); tokenizer.ggml.model ("llama": SentencePiece; "gpt2": byte-level BPE with
tokenizer.ggml.merges and the pre-tokenizer tokenizer.ggml.pre names), tokens, scores,
token_type, bos/eos/unknown/eot/eom/seperator/padding_token_id (a SentencePiece vocabulary without
them: 1, 2 and the UNKNOWN piece, as llama.cpp; eot and eom, and the end-of-generation set,
also found by the tokens' text as llama.cpp finds them), add_bos_token (default: true for
SentencePiece and the Llama 3 pre-tokenizers), add_eos_token (refused when true and the id is
not set), add_space_prefix.
Refused: any other architecture, rope scaling other than linear, tensor types this
runtime has no kernels for (gguf_file), n_vocab or n_ff that disagree with the tensors,
a layer tensor whose number is not written as llama.cpp writes it ("blk.%d.") or is past
block_count.
n_vocab and n_ff are taken from the tensors (token_embd rows, ffn_gate rows).
"""
from dataclasses import dataclass

from .bpe import IGNORE_MERGES
from .errors import FormatError
from .ggml_types import FTYPES
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

NAMES = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
         "output.weight": "output.weight"}
LAYER_NAMES = {"attn_norm": "attention_norm", "attn_q": "attention.wq", "attn_k": "attention.wk",
               "attn_v": "attention.wv", "attn_output": "attention.wo", "ffn_norm": "ffn_norm",
               "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3"}


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

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @property
    def ftype_name(self):
        return FTYPES[self.ftype].name if self.ftype in FTYPES else f"ftype {self.ftype}"

    def as_dict(self):
        return {"n_vocab": self.n_vocab, "n_embd": self.n_embd, "n_head": self.n_head, "n_head_kv": self.n_head_kv,
                "n_layer": self.n_layer, "n_rot": self.n_rot, "n_ff": self.n_ff, "rope_base": self.rope_base,
                "rope_freq_scale": self.rope_freq_scale, "eps": self.eps, "ftype": self.ftype,
                "ftype_name": self.ftype_name, "version": self.version}


@dataclass
class GGUFModelFile:
    path: str
    hparams: GGUFHParams
    tensors: dict          # our names -> gguf_file.GGUFTensor
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


def load(g):
    """gguf_file.GGUFFile -> GGUFModelFile, every key and tensor checked."""
    arch = _get(g, "general.architecture", ("string",))
    if arch != "llama":
        raise FormatError(g.path, "general.architecture", f"{arch!r} is not supported (supported: 'llama')")
    n_embd = _get(g, "llama.embedding_length", INTS, lo=1, hi=1 << 16)
    n_layer = _get(g, "llama.block_count", INTS, lo=1, hi=1 << 10)
    n_head = _get(g, "llama.attention.head_count", INTS, lo=1, hi=1 << 10)
    n_head_kv = _get(g, "llama.attention.head_count_kv", INTS, default=n_head, lo=1, hi=n_head)
    if n_embd % n_head or n_head % n_head_kv:
        raise FormatError(g.path, "llama.attention.head_count", f"n_embd {n_embd}, {n_head} heads and {n_head_kv} "
                                  "KV heads do not divide evenly")
    head_dim = n_embd // n_head
    n_rot = _get(g, "llama.rope.dimension_count", INTS, default=head_dim, lo=0, hi=head_dim)
    if n_rot % 2:
        raise FormatError(g.path, "llama.rope.dimension_count", f"{n_rot} is odd")
    rope_base = float(_get(g, "llama.rope.freq_base", FLOATS, default=10000.0, lo=1.0, hi=1e12))
    scaling = _get(g, "llama.rope.scaling.type", ("string",), default="none")
    freq_scale = 1.0
    if scaling == "linear":
        freq_scale = 1.0 / float(_get(g, "llama.rope.scaling.factor", FLOATS, lo=1e-3, hi=1e6))
    elif scaling != "none":
        raise FormatError(g.path, "llama.rope.scaling.type", f"{scaling!r} is not supported (none, linear)")
    eps = float(_get(g, "llama.attention.layer_norm_rms_epsilon", FLOATS, default=1e-5, lo=0.0, hi=1.0))
    ftype = _get(g, "general.file_type", INTS, default=-1)
    tensors = {}
    for name, t in g.tensors.items():
        if name in NAMES:
            tensors[NAMES[name]] = t
            continue
        if name.startswith("rope_freqs") or name.endswith("rope_freqs.weight"):
            raise FormatError(g.path, f"tensor {name!r}", "per-dimension RoPE frequencies are not supported")
        parts = name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in LAYER_NAMES and parts[3] == "weight":
            # llama.cpp looks tensors up by the name it formats with "blk.%d.": a layer number
            # spelled otherwise ("00", "+1", "²", Arabic-Indic digits) is a tensor it never reads;
            # here it is refused rather than read as, or over, another layer
            layer = parts[1]
            if not (layer.isascii() and layer.isdigit() and (layer == "0" or layer[0] != "0")):
                raise FormatError(g.path, f"tensor {name[:80]!r}", f"layer number {layer[:20]!r} is not written as "
                                                                   "llama.cpp writes it (blk.%d.: ASCII digits, no "
                                                                   "leading zero)")
            if len(layer) > 9 or int(layer) >= n_layer:     # (int() of 4301+ digits is a ValueError)
                raise FormatError(g.path, f"tensor {name[:80]!r}", f"layer {layer[:20]} is past llama.block_count "
                                                                   f"{n_layer}")
            tensors[f"layers.{layer}.{LAYER_NAMES[parts[2]]}.weight"] = t
        # other tensors (none in llama files) are left alone
    for need in ["tok_embeddings.weight", "norm.weight"] + [f"layers.{i}.{v}.weight" for i in range(n_layer)
                                                           for v in LAYER_NAMES.values()]:
        if need not in tensors:
            raise FormatError(g.path, "tensors", f"{need} is missing")
    emb = tensors["tok_embeddings.weight"]
    if len(emb.shape) != 2 or emb.shape[0] != n_embd:
        raise FormatError(g.path, "token_embd.weight", f"shape {emb.shape}, expected ({n_embd}, n_vocab)")
    n_vocab = emb.shape[1]
    gate = tensors["layers.0.feed_forward.w1.weight"]
    n_ff = gate.shape[1] if len(gate.shape) == 2 else 0
    declared_ff = _get(g, "llama.feed_forward_length", INTS, default=n_ff)
    if declared_ff != n_ff:
        raise FormatError(g.path, "llama.feed_forward_length", f"{declared_ff}, but ffn_gate has {n_ff} rows")
    expect = {"norm.weight": (n_embd,), "output.weight": (n_embd, n_vocab)}
    for i in range(n_layer):
        p = f"layers.{i}."
        expect.update({p + "attention_norm.weight": (n_embd,), p + "ffn_norm.weight": (n_embd,),
                       p + "attention.wq.weight": (n_embd, n_embd), p + "attention.wo.weight": (n_embd, n_embd),
                       p + "attention.wk.weight": (n_embd, n_head_kv * head_dim),
                       p + "attention.wv.weight": (n_embd, n_head_kv * head_dim),
                       p + "feed_forward.w1.weight": (n_embd, n_ff), p + "feed_forward.w3.weight": (n_embd, n_ff),
                       p + "feed_forward.w2.weight": (n_ff, n_embd)})
    for name, shape in expect.items():
        if name in tensors and tensors[name].shape != shape:
            raise FormatError(g.path, f"tensor {name}", f"shape {tensors[name].shape}, expected {shape}")
        if name in tensors and len(shape) == 1 and tensors[name].type != 0:
            raise FormatError(g.path, f"tensor {name}", f"is {tensors[name].type_name}, norms must be F32")
    hp = GGUFHParams(n_vocab, n_embd, n_head, n_head_kv, n_layer, n_rot, n_ff, rope_base, freq_scale, eps,
                     ftype, g.version)
    return GGUFModelFile(g.path, hp, tensors, g.metadata, _vocab(g, n_vocab))


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
