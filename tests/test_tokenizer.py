"""Tokenizer against SentencePiece's own ids for the real LLaMA vocab (../shared/data)."""
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import guanaco_rt
from guanaco_rt._kernels._decode import TextStage
from guanaco_rt.tokenizer import Tokenizer, rebuild_pieces
from guanaco_rt.writer import vocab_from_gguf, write_random_model


@pytest.fixture(scope="module")
def llama_vocab(shared_data):
    return vocab_from_gguf(os.path.join(shared_data, "ggml-vocab-llama-spm.gguf"))


@pytest.fixture(scope="module")
def tok(llama_vocab):
    return Tokenizer(llama_vocab)


@pytest.fixture(scope="module")
def cases(shared_data):
    base = os.path.join(shared_data, "ggml-vocab-llama-spm.gguf")
    with open(base + ".inp", encoding="utf-8") as f:
        inputs = f.read().split("\n__ggml_vocab_test__\n")
    with open(base + ".out", encoding="utf-8") as f:
        outputs = f.read().split("\n")
    if inputs and inputs[-1].endswith("\n__ggml_vocab_test__"):
        inputs[-1] = inputs[-1][: -len("\n__ggml_vocab_test__")]
    assert len(inputs) == 47
    return [(s, [int(x) for x in o.split()]) for s, o in zip(inputs, outputs[:len(inputs)])]


def test_vocab_is_written_in_the_2023_convert_convention(llama_vocab):
    assert llama_vocab[0][0] == " \u2047 ".encode()
    assert llama_vocab[1][0] == b"" and llama_vocab[2][0] == b""
    assert llama_vocab[3][0] == b"\x00" and llama_vocab[3 + 0xE8][0] == b"\xe8"
    assert all(b"\xe2\x96\x81" not in t for t, _ in llama_vocab)   # no U+2581 left


def test_types_are_rebuilt(llama_vocab):
    pieces = rebuild_pieces(llama_vocab)
    assert pieces[0][0] == "<unk>" and pieces[0][2] == 2
    assert pieces[1][:1] == ("<s>",) and pieces[2][:1] == ("</s>",) and pieces[1][2] == pieces[2][2] == 3
    assert pieces[3 + 0x0A][0] == "<0x0A>" and pieces[3 + 0x0A][2] == 6
    assert pieces[15043][0] == "\u2581Hello" and pieces[15043][2] == 1


def test_the_47_sentencepiece_cases(tok, cases):
    bad = [(s, want, tok.encode(s, bos=False)) for s, want in cases if tok.encode(s, bos=False) != want]
    assert not bad, bad[:3]


def test_the_47_cases_decode_back(tok, cases):
    for s, want in cases:
        assert tok.decode(want) == s


def test_hello_world_through_a_model_file(tmp_path, llama_vocab):
    path = tmp_path / "v.bin"
    write_random_model(str(path), "q4_0", n_embd=32, n_mult=32, n_head=2, n_layer=1, vocab=llama_vocab)
    m = guanaco_rt.Model(str(path))
    assert m.tokenize("Hello world") == [1, 15043, 3186]
    assert m.detokenize([1, 15043, 3186]) == "Hello world"
    assert m.tokenize("") == [1]


TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581"), max_size=40)


@given(s=TEXT)
def test_decode_encode_roundtrip_random_unicode(tok, s):
    assert tok.decode(tok.encode(s, bos=False)) == s


def stream_pieces(tok, ids, strip=True):
    """The decode loop's text stage (C) fed token by token: the pieces, then the tail."""
    stage = TextStage(tok.byte_table, [], strip)
    pieces = [stage.push_token(i)[0] for i in ids]
    return pieces, stage.finish()[0]


@given(s=TEXT)
def test_stream_text_concatenates_to_decode(tok, s):
    ids = tok.encode(s, bos=False)
    pieces, tail = stream_pieces(tok, ids)
    assert "".join(pieces) + tail == tok.decode(ids)


def test_stream_text_never_splits_a_character(tok):
    ids = tok.encode("日本語 🦙 ok", bos=False)
    pieces, tail = stream_pieces(tok, ids)
    for p in pieces:
        p.encode("utf-8")           # every piece is whole text
    assert "".join(pieces) + tail == "日本語 🦙 ok"
    assert "" in pieces             # 🦙 is four byte tokens: the first three give nothing yet


def test_invalid_bytes_become_replacement_chars(tok):
    ids = [3 + 0xE6, 3 + 0x97]   # first two bytes of a 3-byte character, never completed
    pieces, tail = stream_pieces(tok, ids, strip=False)
    assert pieces == ["", ""]
    assert tail == tok.decode(ids) == "\ufffd\ufffd"   # SentencePiece: one U+FFFD per bad byte


@given(ids=st.lists(st.one_of(st.integers(3, 258), st.integers(259, 31999)), max_size=30))
def test_stream_text_matches_sentencepiece_on_any_token_sequence(tok, ids):
    pieces, tail = stream_pieces(tok, ids)
    assert "".join(pieces) + tail == tok.decode(ids)


@given(data=st.binary(max_size=40), cuts=st.lists(st.integers(0, 40), max_size=8))
def test_utf8_stage_matches_python_replace_decoding(data, cuts):
    # bytes cut anywhere decode like SentencePiece: each byte that cannot be part of a valid
    # sequence is one U+FFFD (Python's "replace" handler agrees on single bad bytes)
    stage = TextStage((np.zeros(1, np.uint8), np.zeros(2, np.int64), np.zeros(1, np.uint8)), [], False)
    bounds = sorted(set(c for c in cuts if c <= len(data)))
    out = [stage.push_bytes(data[a:b])[0] for a, b in zip([0] + bounds, bounds + [len(data)])]
    out.append(stage.finish()[0])
    assert "".join(out) == "".join(_sp_decode_bytes(data))



def _sp_decode_bytes(data):
    """SentencePiece's rule: a byte that starts a complete valid character gives the
    character, any other byte gives one U+FFFD."""
    i = 0
    while i < len(data):
        for k in (4, 3, 2, 1):
            if i + k <= len(data):
                try:
                    yield data[i:i + k].decode("utf-8")     # valid characters, whole
                    i += k
                    break
                except UnicodeDecodeError:
                    pass
        else:
            yield "\ufffd"
            i += 1
