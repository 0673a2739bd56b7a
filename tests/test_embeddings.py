"""Embeddings (issue 26): Model.embed's vectors against float references, each pooling, the
input forms, the file's pooling default, and the OpenAI shape.

References: a random-weight ggjt model's float64 forward on its dequantized weights with
the engine's activation rounding (tests/reference.py: only float rounding separates the
two), and the demo model in transformers' float64 (its own GGUF loader), where the engine's
8-bit activations cost what they cost llama.cpp (cosine 0.9996-0.9998 there).
"""
import base64
import os

import numpy as np
import pytest

import guanaco_rt
from guanaco_rt.embeddings import openai_embedding
from guanaco_rt.errors import ContextFullError, InvalidArgumentError, InvalidRequestError, ModelClosedError

from helpers import tiny_model, write_llama_gguf
from reference import ReferenceModel

TEXTS = ["The cat sat on the mat.", "A kitten rested on the rug.", "Quarterly revenue rose by five percent.",
         "Paris is the capital of France."]


def pool(h, pooling):
    v = {"mean": h.mean(axis=0), "cls": h[0], "last": h[-1]}[pooling]
    return v / np.linalg.norm(v)


def cos(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def ggjt(tmp_path_factory):
    m = guanaco_rt.Model(tiny_model(tmp_path_factory.mktemp("e"), "q4_0"), n_threads=1)
    yield m
    m.close()


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_pooled_vectors_match_the_float_forward(ggjt, pooling):
    ref = ReferenceModel(ggjt, quantize_acts=True)
    texts = ["hello world", "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3]
    got = ggjt.embed(texts, pooling=pooling, n_batch=16)
    assert got.shape == (2, ggjt.hparams.n_embd) and got.dtype == np.float32
    for text, v in zip(texts, got):
        want = pool(ref.hidden(ggjt.tokenize(text)), pooling)
        np.testing.assert_allclose(v, want, atol=2e-4)
        assert abs(np.linalg.norm(v) - 1) < 1e-5


def test_pooling_none_and_unnormalized(ggjt):
    ref = ReferenceModel(ggjt, quantize_acts=True)
    ids = ggjt.tokenize("one two three four five")
    rows = ggjt.embed([ids], pooling="none", normalize=False)
    assert isinstance(rows, list) and rows[0].shape == (len(ids), ggjt.hparams.n_embd)
    # per token, unpooled and unnormalized: an 8-bit activation that rounds the other way in
    # float64 moves an element by up to 0.007 (measured); the pooled vectors above agree to 2e-4
    np.testing.assert_allclose(rows[0], ref.hidden(ids), rtol=0, atol=0.02)
    unnorm = ggjt.embed(ids, pooling="last", normalize=False)[0]
    np.testing.assert_allclose(unnorm, rows[0][-1], rtol=1e-6, atol=1e-6)


def test_batches_and_inputs_agree(ggjt):
    """The same text as text, as ids, alone or in a list, in any n_batch: the same vector."""
    ids = ggjt.tokenize("one two three four five six seven eight nine ten")
    a = ggjt.embed("one two three four five six seven eight nine ten")
    b = ggjt.embed(ids, n_batch=3)
    c = ggjt.embed([ids, ggjt.tokenize("x")], n_batch=64)[:1]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_bad_inputs_are_typed(ggjt, tmp_path):
    for bad in ([], [""], [[]], [1.5], [["a"]], None, [ggjt.n_vocab]):
        with pytest.raises(InvalidArgumentError):
            ggjt.embed(bad)
    with pytest.raises(InvalidArgumentError, match="pooling"):
        ggjt.embed("x", pooling="max")
    m = guanaco_rt.Model(tiny_model(tmp_path, "q4_0"))
    m.close()
    with pytest.raises(ModelClosedError):
        m.embed("x")


def test_pooling_default_follows_the_file(tmp_path):
    plain = write_llama_gguf(tmp_path / "p.gguf", n_embd=64, n_head=4, n_head_kv=2, n_ff=96, n_layer=1)
    cls = write_llama_gguf(tmp_path / "c.gguf", n_embd=64, n_head=4, n_head_kv=2, n_ff=96, n_layer=1,
                           extra={"llama.pooling_type": 2, "llama.context_length": 32})
    a, b = guanaco_rt.Model(plain), guanaco_rt.Model(cls)
    text = "one two three"
    np.testing.assert_array_equal(a.embed(text), a.embed(text, pooling="mean"))
    np.testing.assert_array_equal(b.embed(text), b.embed(text, pooling="cls"))
    with pytest.raises(ContextFullError, match="above the limit of 32"):
        b.embed("a b c d e f g h i j k l m n o p q r s t u v w x y z " * 2)
    bad = guanaco_rt.Model(write_llama_gguf(tmp_path / "r.gguf", n_embd=64, n_head=4, n_head_kv=2, n_ff=96,
                                            n_layer=1, extra={"llama.pooling_type": 4}))
    with pytest.raises(InvalidArgumentError, match="pooling_type 4"):
        bad.embed(text)


def test_openai_shape(ggjt):
    r = openai_embedding(ggjt, "m", ["hello", "world"], encoding_format="base64")
    assert r["object"] == "list" and [d["index"] for d in r["data"]] == [0, 1]
    v = np.frombuffer(base64.b64decode(r["data"][1]["embedding"]), "<f4")
    np.testing.assert_array_equal(v, ggjt.embed("world")[0])
    f = openai_embedding(ggjt, "m", "hello")
    assert len(f["data"]) == 1 and f["data"][0]["embedding"] == ggjt.embed("hello")[0].tolist()
    ids = ggjt.tokenize("hello")
    assert openai_embedding(ggjt, "m", ids)["data"][0]["embedding"] == f["data"][0]["embedding"]
    assert f["usage"]["prompt_tokens"] == len(ids)
    with pytest.raises(InvalidRequestError, match="dimensions"):
        openai_embedding(ggjt, "m", "x", dimensions=8)
    with pytest.raises(InvalidRequestError, match="encoding_format"):
        openai_embedding(ggjt, "m", "x", encoding_format="int8")
    with pytest.raises(InvalidRequestError) as e:
        openai_embedding(ggjt, "m", [[]])
    assert e.value.param == "input"


@pytest.mark.slow          # transformers builds the model in float64: about 75 s
def test_demo_model_against_transformers_float64(smollm2):
    """The demo model's vectors against transformers' float64 forward of the same file, per
    pooling: as close as llama.cpp's own (cosine 0.9996-0.9998 there), and the texts about
    the same thing are the nearest pair."""
    pytest.importorskip("torch")
    from family_reference import TransformersGGUFReference
    ref = TransformersGGUFReference(smollm2)
    m = guanaco_rt.Model(smollm2, n_threads=1)
    for pooling in ("mean", "cls", "last"):
        got = m.embed(TEXTS, pooling=pooling)
        for text, v in zip(TEXTS, got):
            want = pool(ref.hidden(m.tokenize(text)), pooling)
            assert cos(v, want) > 0.999, (pooling, text, cos(v, want))
    sims = m.embed(TEXTS) @ m.embed(TEXTS).T
    np.fill_diagonal(sims, -1)
    assert int(np.argmax(sims[0])) == 1


@pytest.mark.skipif(not os.environ.get("GUANACO_RT_LLAMA_CPP_PYTHON"),
                    reason="set GUANACO_RT_LLAMA_CPP_PYTHON to a Python with llama-cpp-python to compare")
def test_demo_model_against_llama_cpp(smollm2, tmp_path):
    import json
    import subprocess
    code = (f"import json, llama_cpp\n"
            f"out = {{}}\n"
            f"for name, p in (('mean', 1), ('cls', 2), ('last', 3)):\n"
            f"    llm = llama_cpp.Llama({smollm2!r}, embedding=True, pooling_type=p, n_ctx=256, verbose=False)\n"
            f"    out[name] = [llm.embed(t, normalize=True) for t in {TEXTS!r}]\n"
            f"print(json.dumps(out))\n")
    r = subprocess.run([os.environ["GUANACO_RT_LLAMA_CPP_PYTHON"], "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = json.loads(r.stdout.strip().splitlines()[-1])
    m = guanaco_rt.Model(smollm2, n_threads=1)
    for pooling, vecs in theirs.items():
        for v, w in zip(m.embed(TEXTS, pooling=pooling), vecs):
            assert cos(v, np.asarray(w)) > 0.999, pooling


def test_openai_shape_refuses_per_token_pooling(ggjt):
    with pytest.raises(InvalidRequestError) as e:
        openai_embedding(ggjt, "m", "x", pooling="none")
    assert e.value.param == "pooling"
