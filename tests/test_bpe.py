"""Byte-level BPE against HF `tokenizers` built from the same vocab and merges with the
same pre-tokenizer: real text, random Unicode, digits, whitespace runs, special tokens.
The vocabulary is SmolLM2's (from the demo model), the one real BPE vocab at hand."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, pre_tokenizers  # noqa: E402

import guanaco_rt  # noqa: E402
from guanaco_rt.bpe import GPT2, LLAMA3, BPETokenizer, _split, byte_alphabet  # noqa: E402

TEXT = """The quick brown fox jumps over the lazy dog. It's 12:45 on 2026-11-28; prices rose 3.75%!
    Indented line with	tabs and  double  spaces.\n\n\nHe said: "don't", 'I'll', we've, they're, she'd.
日本語のテキスト, émigré café naïve, Ελληνικά, русский текст, emoji 🦙🔥 and math ∑(x²) ≤ ∞.
def f(x):\n    return x ** 2  # comment\n<|im_start|>user\nhi<|im_end|>\n"""
PRE = {"smollm": [pre_tokenizers.Split(Regex(r"\p{N}"), "isolated")], "default": [],
       "llama-bpe": [pre_tokenizers.Split(Regex(LLAMA3), "isolated")]}


@pytest.fixture(scope="module")
def vocab(smollm2):
    return guanaco_rt.Model(smollm2).file.vocab


def pair(vocab, pre):
    ours = BPETokenizer(vocab["tokens"], vocab["types"], vocab["merges"], pre, vocab["bos"], vocab["eos"], False)
    model = tokenizers.models.BPE({t: i for i, t in enumerate(vocab["tokens"])},
                                  [tuple(m.split(" ", 1)) for m in vocab["merges"]])
    hf = tokenizers.Tokenizer(model)
    hf.pre_tokenizer = pre_tokenizers.Sequence(PRE[pre] + [pre_tokenizers.ByteLevel(
        add_prefix_space=False, use_regex=pre != "llama-bpe")])
    hf.add_special_tokens([t for t, ty in zip(vocab["tokens"], vocab["types"]) if ty == 3])
    return ours, hf


@pytest.fixture(scope="module", params=sorted(PRE))
def tok_pair(request, vocab):
    return pair(vocab, request.param)


def test_real_text_lines(tok_pair):
    ours, hf = tok_pair
    n = 0
    for line in TEXT.splitlines(keepends=True) + [TEXT]:
        assert ours.encode(line, special=True) == hf.encode(line).ids, line
        n += 1
    assert n > 5


@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=60))
@settings(max_examples=300, deadline=None)
def test_random_unicode(tok_pair, text):
    ours, hf = tok_pair
    # a byte with no token of its own (SmolLM2 lacks a few, e.g. 0xF2) is dropped after merging,
    # as llama.cpp does; HF drops it before merging, so its neighbours may merge: not compared
    enc, _ = byte_alphabet()
    assume(all(enc[b] in ours.ids for b in text.encode()))
    ids = ours.encode(text)
    assert ids == hf.encode(text).ids
    assert ours.decode(ids) == text


@given(text=st.lists(st.sampled_from(list("0123456789 \t\n.,'sdtreamvl") + ["  ", "\n\n", "'ll", "1234567"]),
                    max_size=25).map("".join))
@settings(max_examples=300, deadline=None)
def test_digits_whitespace_and_contractions(tok_pair, text):
    ours, hf = tok_pair
    assert ours.encode(text) == hf.encode(text).ids


def test_special_tokens_only_when_allowed(vocab):
    ours, _ = pair(vocab, "smollm")
    text = "<|im_start|>user"
    im_start = vocab["tokens"].index("<|im_start|>")
    assert ours.encode(text, special=True)[0] == im_start
    plain = ours.encode(text)
    assert im_start not in plain and ours.decode(plain) == text


def test_model_tokenize_uses_the_files_flags(smollm2):
    m = guanaco_rt.Model(smollm2)
    assert m.tokenizer.add_bos is False and m.tokenize("Hi")[0] != m.tokenizer.bos_id
    assert m.tokenize("Hi", bos=True)[0] == m.tokenizer.bos_id
    np.testing.assert_array_equal(m.tokenize("a1b22"), m.tokenize("a1b22"))


def test_gpt2_regex_is_the_published_one():
    assert GPT2 == r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"


RANKS = {}
RUN_CHARS = list("aeé e1 \n\t'") + ["中", "語", "🦙", "ё", "\u0301"]


@given(runs=st.lists(st.tuples(st.sampled_from(RUN_CHARS), st.integers(1, 120)), min_size=1, max_size=6))
@settings(max_examples=150, deadline=None)
def test_merge_queue_equals_the_plain_loop_and_hf(tok_pair, vocab, runs):
    # runs of one character (long pre-tokens: where the quadratic loop was slow), CJK, emoji,
    # combining marks: each pre-token's ids from the C merge queue equal the plain loop's
    # (tests/reference.py) and the whole text's equal HF tokenizers'
    from reference import bpe_merge_ranks, bpe_pretoken
    ours, hf = tok_pair
    text = "".join(c * n for c, n in runs)
    ranks = RANKS.get(id(vocab)) or RANKS.setdefault(id(vocab), bpe_merge_ranks(vocab["merges"]))
    pieces = [text]
    for rx in ours.regexes:
        pieces = _split(pieces, rx)
    for p in pieces:
        assert ours._bpe(p) == bpe_pretoken(ranks, ours.ids, p), p
    ids = ours.encode(text)
    assert ids == hf.encode(text).ids
    assert ours.decode(ids) == text


def test_merge_queue_on_long_runs_equals_hf(tok_pair):
    ours, hf = tok_pair
    for text in ("a" * 20000, "中" * 4000, " " * 5000 + "x", "ab" * 7000, "🦙" * 3000):
        assert ours.encode(text) == hf.encode(text).ids


def test_merge_table_edges():
    from guanaco_rt._kernels._bpe import MergeTable
    i32 = lambda *x: np.array(x, np.int32)     # noqa: E731
    # symbols 0 'a', 1 'b'; merges: a a -> 2 (rank 0), 2 2 -> 3 (rank 1), a a again (ignored: rank 0 wins)
    t = MergeTable(i32(0, 2, 0), i32(0, 2, 0), i32(2, 3, 1), 4)
    assert t.merge(i32()).tolist() == [] and t.merge(i32(1)).tolist() == [1]
    assert t.merge(i32(0, 0, 0, 0, 0, 0, 0, 0, 0)).tolist() == [3, 3, 0]      # leftmost pairs first
    assert t.merge(i32(0, 1, 0, 0, 1)).tolist() == [0, 1, 2, 1]
    with pytest.raises(ValueError, match="outside"):
        t.merge(i32(0, 4))
    with pytest.raises(ValueError, match="symbol ids"):
        MergeTable(i32(0), i32(5), i32(1), 4)
