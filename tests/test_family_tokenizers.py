"""Issue 23, item 3: the tokenizers of Qwen2/2.5/3, Llama 3.x, Phi-3 and Gemma 3, and every
special-token id a file names; generation ends on any end-of-generation token.

References, none of them ours:
- llama.cpp's own test strings and the ids its tokenizer gives them (models/*.gguf.inp/.out);
- HF's Rust ``tokenizers`` built from the same tokens and merges with the pre-tokenizer
  regex of the family's tokenizer.json, on thousands of generated strings;
- for SentencePiece vocabularies, HF ``transformers``' own GGUF tokenizer conversion, and
  llama.cpp itself (llama-cpp-python, when GUANACO_RT_LLAMA_CPP_PYTHON names a Python that
  has it) for a Gemma-style vocabulary (no space prefix, BOS 2 / EOS 1, <end_of_turn>).
No real Gemma 3 vocabulary is at hand (none on PyPI that could be found): the Gemma-style
file puts Gemma's special tokens and flags on the LLaMA SentencePiece pieces.
"""
import json
import os
import random
import subprocess
import sys

import family_vocab as fv
import gguf
import pytest

import guanaco_rt
from guanaco_rt.writer import gguf_vocab_arrays

from helpers import add_one_layer_llama, finish_gguf

# pieces of text that exercise the pre-tokenizers: scripts, digit runs, contractions in both
# cases, whitespace runs with newlines, CR and tabs, punctuation runs, combining marks, emoji
FRAGMENTS = ["Hello", "world", "HELLO", "the", " ", "  ", "   ", "\n", "\n\n", "\r\n", "\t", " \n ", "'s", "'S",
             "'ll", "'LL", "'re", "'Ve", "'d", "'m", "'t", "'x", "1", "12", "123", "1234", "3.14159", "2,000,000",
             "!", "?!", "...", "()", "{}", "=>", "->", "#", "@", "$5", "%", "<", ">", "/", "\\", "\"", "'", "`",
             "日本語", "中文字符", "한국어", "Привет", "мир", "Ελληνικά", "עברית", "العربية", "हिन्दी", "ไทย",
             "Äpfel", "Cửa Việt", "naïve", "e\u0301", "a\u0308b", "🦙", "🦙🦙", "👩‍💻", "🇫🇷", "\u00a0", "\u3000",
             "\u200b", "ﬁ", "Ⅻ", "²", "٣", "x̧", "_", "__init__", "camelCase", "snake_case", "URL:", "http://a.b/c?d=e",
             "<b>", "</s>", "<s>", "[INST]", "def f(x):", "    return x", "\t\tif", "©", "€", "\ufeff", "\x00", "\x7f"]


def strings(n, seed, specials=()):
    """n random texts joined from FRAGMENTS (and, if given, special-token spellings)."""
    rng = random.Random(seed)
    pool = FRAGMENTS + list(specials)
    out = []
    for _ in range(n):
        parts = [rng.choice(pool) for _ in range(rng.randint(1, 12))]
        joiners = [rng.choice(["", "", " ", "\n"]) for _ in parts]
        out.append("".join(j + p for j, p in zip(joiners, parts)))
    return out


# ---- llama.cpp's own test strings -------------------------------------------------------
@pytest.mark.parametrize("name", ["qwen2", "llama-bpe", "phi-3", "qwen35"])
def test_llama_cpp_vocab_test_strings(vocabs, name):
    """Every test string of llama.cpp's test-tokenizer-0 encodes to llama.cpp's ids (no BOS,
    special tokens not parsed). Before: qwen2 and qwen35 refused, llama-bpe 46 of 47."""
    _, tok = vocabs(name)
    got = [(text, tok.encode(text, bos=False)) for text, _ in fv.cases(name)]
    bad = [(text, ids, want) for (text, ids), (_, want) in zip(got, fv.cases(name)) if ids != want]
    assert not bad, f"{len(bad)} of {len(got)} differ, first: {bad[0]!r}"


# ---- HF tokenizers on many strings --------------------------------------------------------
@pytest.mark.parametrize("name", ["qwen2", "llama-bpe"])
def test_byte_level_bpe_matches_hf_tokenizers(vocabs, name):
    """3000 generated strings, special spellings among them: the ids are HF tokenizers' (which
    splits every added token out of text, as ours does with special=True)."""
    vocab, tok = vocabs(name)
    hf = fv.hf_bpe(vocab, name)
    specials = [t for t, ty in zip(vocab["tokens"], vocab["types"]) if ty in (3, 4)][:12]
    texts = [t for t, _ in fv.cases(name)] + strings(3000, seed=len(name), specials=specials)
    bad = [t for t in texts if tok.encode(t, bos=False, special=True) != hf.encode(t, add_special_tokens=False).ids]
    assert not bad, f"{len(bad)} of {len(texts)} differ from HF tokenizers, first: {bad[0]!r}"
    # and the bytes come back
    for t in texts[:300]:
        assert tok.decode(tok.encode(t, bos=False)) == t


def test_llama3_whole_word_tokens_ignore_merges(vocabs):
    """Llama 3 looks a pre-token up before merging: " Việt" is one token (101798) though the
    merges alone would build it from four (llama.cpp's and HF's ignore_merges)."""
    vocab, tok = vocabs("llama-bpe")
    assert tok.encode("Cửa Việt", bos=False) == [34, 91163, 101798]


def test_phi3_sentencepiece_matches_hf_gguf_conversion(vocabs, tmp_path_factory):
    """Phi-3 (SentencePiece with <|user|>, <|end|>, ...) against transformers' own tokenizer for
    the same GGUF file, on 1500 strings with its special tokens among them."""
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer
    vocab, tok = vocabs("phi-3")
    path = fv.vocab_path("phi-3", tmp_path_factory.getbasetemp() / "vocab0")
    hf = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    # Phi-3's tokenizer.json says "rstrip": true for its chat tokens and </s> (not <unk>, <s>,
    # <|endoftext|>); a GGUF file does not carry that, the conversion sets it false
    from tokenizers import AddedToken
    hf.backend_tokenizer.add_special_tokens([AddedToken(t, rstrip=True, special=True, normalized=False)
                                             for t in vocab["tokens"][32001:] + ["</s>"]])
    specials = ["<|user|>", "<|assistant|>", "<|end|>", "<|system|>", "<|endoftext|>", "</s>"]
    # (only ASCII whitespace: HF's rstrip strips Unicode's, llama.cpp's C isspace)
    texts = [t for t in strings(1500, seed=3, specials=specials) if "\u00a0" not in t and "\u3000" not in t]
    bad = [t for t in texts if tok.encode(t, bos=False, special=True) != hf(t, add_special_tokens=False).input_ids]
    assert not bad, f"{len(bad)} of {len(texts)} differ from transformers, first: {bad[0]!r}"


def test_phi3_chat_tokens_eat_the_whitespace_after_them(vocabs):
    """The ids llama.cpp gives (its RSTRIP for a model named Phi-3; HF's tokenizer.json has
    "rstrip": true): the newline after <|user|>, <|end|>, <|assistant|> is not a token, and
    the next text gets its dummy-prefix space; <|endoftext|> keeps what follows it. Before:
    [32010, 29871, 13, 10994, 32007, 29871, 13, 32001, 29871, 13]."""
    _, tok = vocabs("phi-3")
    assert tok.encode("<|user|>\nHello<|end|>\n<|assistant|>\n", bos=False, special=True) == \
        [32010, 15043, 32007, 32001]
    assert tok.encode("<|system|>\n  x <|endoftext|> y", bos=False, special=True) == \
        [32006, 921, 29871, 32000, 29871, 343]


# ---- special ids and the end-of-generation set ------------------------------------------------
@pytest.mark.parametrize("name, want", [
    ("qwen2", dict(bos=151643, eos=151643, eot=151645, padding=151643, add_bos=False,
                   eog={"<|endoftext|>", "<|im_end|>"})),
    ("llama-bpe", dict(bos=128000, eos=128001, eot=128009, padding=None, add_bos=True,
                       eog={"<|end_of_text|>", "<|eot_id|>"})),
    ("phi-3", dict(bos=1, eos=32000, eot=32007, padding=32000, unknown=0, add_bos=True,
                   eog={"<|endoftext|>", "<|end|>"})),
])
def test_special_ids_and_end_of_generation(vocabs, name, want):
    """The ids the file names, the eot found by its text when the file names none (none of
    these files does), and llama.cpp's EOG set; Llama 3 adds BOS by default (llama.cpp)."""
    vocab, tok = vocabs(name)
    for key, value in want.items():
        if key == "eog":
            assert {vocab["tokens"][i] for i in tok.eog_ids} == value
        elif key == "add_bos":
            assert tok.add_bos is value
        else:
            assert vocab[key] == value, key
    assert tok.eot_id == want["eot"]


# ---- Gemma-style SentencePiece: no space prefix, BOS 2 / EOS 1, <end_of_turn> -----------------
GEMMA_HEAD = [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 2), ("<start_of_turn>", 3), ("<end_of_turn>", 3),
              ("<start_of_image>", 4)]


def write_gemma_style(path, shared_data, n_embd=0):
    """Gemma's special tokens at Gemma's ids on the LLaMA pieces, add_space_prefix false; with
    ``n_embd``, a one-layer random-weight llama model around it."""
    tokens, scores, types = gguf_vocab_arrays(os.path.join(shared_data, "ggml-vocab-llama-spm.gguf"))
    tokens = [t for t, _ in GEMMA_HEAD] + tokens[3:]
    scores = [0.0] * len(GEMMA_HEAD) + scores[3:]
    types = [t for _, t in GEMMA_HEAD] + types[3:]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    w.add_chat_template(fv.template("google-gemma-3-it"))
    if n_embd:
        add_one_layer_llama(w, n_embd, len(tokens))
    finish_gguf(w)
    return str(path)


@pytest.fixture(scope="module")
def gemma_style(shared_data, tmp_path_factory):
    path = write_gemma_style(tmp_path_factory.mktemp("gemma") / "gemma-style.gguf", shared_data)
    return (path,) + fv.load_vocab(path)


def test_gemma_style_special_ids(gemma_style):
    _, vocab, tok = gemma_style
    assert (tok.bos_id, tok.eos_id, tok.unk_id, vocab["padding"]) == (2, 1, 3, 0)
    assert tok.eot_id == 5 and set(tok.eog_ids) == {1, 5}         # <eos>, <end_of_turn>
    assert vocab["add_space_prefix"] is False
    # no space prefix: "Hello" is the piece without the leading "\u2581"
    assert tok.encode("Hello", bos=True) == [2, vocab["tokens"].index("Hello")]
    turn = tok.encode("<start_of_turn>user\nHi<end_of_turn>\n", bos=False, special=True)
    assert turn[0] == 4 and turn[-2:] == [5, vocab["tokens"].index("<0x0A>")]


@pytest.mark.parametrize("name", ["gemma-style", "qwen2", "llama-bpe", "phi-3"])
def test_matches_llama_cpp(gemma_style, vocabs, tmp_path_factory, name):
    """llama.cpp's own tokenizer (llama-cpp-python, vocab only) on the same file, 1500 strings
    with the vocabulary's special tokens among them, parsed as special: the ids agree. Needs
    GUANACO_RT_LLAMA_CPP_PYTHON (a Python that has llama_cpp); skips without it."""
    python = os.environ.get("GUANACO_RT_LLAMA_CPP_PYTHON")
    if not python:
        pytest.skip("set GUANACO_RT_LLAMA_CPP_PYTHON to a Python that has llama_cpp to compare with llama.cpp")
    if name == "gemma-style":
        path, vocab, tok = gemma_style
    else:
        path = fv.vocab_path(name, tmp_path_factory.getbasetemp() / "vocab0")
        vocab, tok = vocabs(name)
    specials = [t for t, ty in zip(vocab["tokens"], vocab["types"]) if ty in (3, 4)][:12]
    texts = strings(1500, seed=5, specials=specials)
    if name == "qwen2":
        # llama.cpp makes Qwen's ordinary token "</s>" a control token (an end-of-generation
        # spelling it adds for one OCR model); HF and we keep it text (see gguf_model)
        texts = [t for t in texts if "</s>" not in t]
    peer = subprocess.run([python, "-c", LLAMA_CPP_TOKENIZE, path], input=json.dumps(texts).encode(),
                          capture_output=True, timeout=600)
    assert peer.returncode == 0, peer.stderr.decode()[-2000:]
    theirs = json.loads(peer.stdout)
    bad = [t for t, want in zip(texts, theirs) if tok.encode(t, bos=False, special=True) != want]
    assert not bad, f"{len(bad)} of {len(texts)} differ from llama.cpp, first: {bad[0]!r}"


LLAMA_CPP_TOKENIZE = """
import json, sys, llama_cpp
p = llama_cpp.llama_model_default_params(); p.vocab_only = True
m = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), p)
v = llama_cpp.llama_model_get_vocab(m)
buf = (llama_cpp.llama_token * 8192)()
out = []
for text in json.loads(sys.stdin.buffer.read()):
    b = text.encode()
    n = llama_cpp.llama_tokenize(v, b, len(b), buf, 8192, False, True)    # no BOS, parse special
    out.append(buf[:n])
sys.stdout.write(json.dumps(out))
"""


# ---- generation ends on any EOG token ------------------------------------------------------
def write_bpe_model(path, vocab, n_embd=32):
    """A one-layer random-weight llama model with a byte-level BPE vocabulary (as loaded)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    w.add_token_merges(vocab["merges"])
    w.add_bos_token_id(vocab["bos"])
    w.add_eos_token_id(vocab["eos"])
    add_one_layer_llama(w, n_embd, len(vocab["tokens"]))
    finish_gguf(w)
    return str(path)


@pytest.mark.parametrize("name, stop", [("qwen2", "<|im_end|>"), ("llama-bpe", "<|eot_id|>")])
def test_generation_ends_on_end_of_turn_token(vocabs, tmp_path, name, stop):
    """A model whose next token is the family's end-of-turn token (made certain with a
    logit bias) stops there, as at EOS: the file names no eot id, the token is found by its
    text. Before: the token was generated, as text, until max_new_tokens."""
    vocab, _ = vocabs(name)
    with guanaco_rt.Model(write_bpe_model(tmp_path / f"{name}.gguf", vocab), n_threads=1) as m:
        eot = vocab["tokens"].index(stop)
        assert eot in m.tokenizer.eog_ids
        s = guanaco_rt.Session(m, n_ctx=64)
        res = s.generate("Hi", max_new_tokens=8, logit_bias={eot: 100.0}, temperature=0.0)
        assert (res.tokens, res.finish_reason) == ([], "eos")
        other = vocab["tokens"].index("<|im_start|>" if name == "qwen2" else "<|start_header_id|>")
        res = s.generate("Hi", max_new_tokens=3, logit_bias={other: 100.0}, temperature=0.0)
        assert res.tokens == [other] * 3 and res.finish_reason == "length"


def test_gemma_generation_ends_on_end_of_turn(shared_data, tmp_path):
    with guanaco_rt.Model(write_gemma_style(tmp_path / "g.gguf", shared_data, n_embd=32), n_threads=1) as m:
        s = guanaco_rt.Session(m, n_ctx=64)
        res = s.generate("Hi", max_new_tokens=8, logit_bias={5: 100.0}, temperature=0.0)
        assert (res.tokens, res.finish_reason) == ([], "eos")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def write_bpe_vocab(path, vocab, types=None, ids=None):
    """A vocab-only GGUF of a byte-level vocabulary (as loaded), with other token types and
    tokenizer.ggml.<key>_token_id values."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(types or vocab["types"])
    w.add_token_merges(vocab["merges"])
    for key, value in (ids or {}).items():
        w.add_uint32(f"tokenizer.ggml.{key}_token_id", value)
    finish_gguf(w)
    return str(path)


def test_end_of_generation_rules(vocabs, tmp_path):
    """The file's eot/eom/sep/padding ids are read (the eot one wins over the text search);
    an end-of-turn spelling typed NORMAL becomes CONTROL (llama.cpp does the same), so a
    template's text that spells it is that one token; an id past n_vocab is refused by name."""
    vocab, _ = vocabs("qwen2")
    tokens = vocab["tokens"]
    im_start, im_end = tokens.index("<|im_start|>"), tokens.index("<|im_end|>")
    types = list(vocab["types"])
    types[im_end] = 1
    path = write_bpe_vocab(tmp_path / "v.gguf", vocab, types,
                           {"eos": 151643, "eot": im_start, "eom": 151646, "seperator": 151647, "padding": 151648})
    got, tok = fv.load_vocab(path)
    assert (got["eot"], got["eom"], got["sep"], got["padding"]) == (im_start, 151646, 151647, 151648)
    assert (tok.eot_id, tok.eom_id, tok.sep_id, tok.pad_id) == (im_start, 151646, 151647, 151648)
    assert set(tok.eog_ids) == {151643, im_start, im_end, 151646}
    assert got["types"][im_end] == 3
    assert tok.encode("a<|im_end|>", bos=False, special=True) == [64, im_end]
    assert im_end not in tok.encode("a<|im_end|>", bos=False, special=False)
    bad = write_bpe_vocab(tmp_path / "bad.gguf", vocab, ids={"eom": len(tokens)})
    with pytest.raises(guanaco_rt.FormatError, match=r"tokenizer\.ggml\.eom_token_id.*outside"):
        fv.load_vocab(bad)
