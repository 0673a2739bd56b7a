"""guanaco_rt.quantize(..., format="ggjt") / guanaco-rt quantize --format ggjt: the seed's ggjt v3
container on the way out. The written file must be what our ggjt reader (ggml_file) takes, hold
the very tensor bytes of the GGUF file quantized from the same weights, and give the same logits;
models ggjt has no fields for are refused with the field named."""
import os
import subprocess
import sys

import numpy as np
import pytest
from test_quantize import float_llama

from guanaco_rt.errors import InvalidArgumentError

TOKENS = [1, 45, 77, 3, 200, 12, 9, 151, 60, 299]
TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q4_K_M", "Q5_K_S", "Q6_K"]


@pytest.fixture(scope="module")
def f32_mha(tmp_path_factory):
    """a float LLaMA ggjt can describe: no GQA, eps 1e-6, n_ff = 768 (n_mult 256 or 768), an output tensor"""
    p = tmp_path_factory.mktemp("ggjt") / "f32.gguf"
    return float_llama(p, n_embd=256, n_head=4, n_head_kv=4, n_layer=2, n_ff=768, tied=False, eps=1e-6)


def _logits(path):
    import guanaco_rt
    m = guanaco_rt.Model(path)
    try:
        return guanaco_rt.Session(m, n_ctx=32, n_threads=1).eval(TOKENS, all_logits=True)
    finally:
        m.close()


@pytest.mark.parametrize("ftype", TYPES)
def test_ggjt_output_is_the_gguf_output_in_ggjt(ftype, f32_mha, tmp_path):
    import guanaco_rt
    from guanaco_rt import ggml_file, gguf_file
    from guanaco_rt.quantizer import FILE_TYPES
    from guanaco_rt.writer import _ggjt_name
    gg, jt = str(tmp_path / "q.gguf"), str(tmp_path / "q.bin")
    types_gguf = guanaco_rt.quantize(f32_mha, gg, ftype, threads=2)
    types_ggjt = guanaco_rt.quantize(f32_mha, jt, ftype, threads=2, format="ggjt")
    assert types_ggjt == types_gguf
    raw_j, raw_g = open(jt, "rb").read(), open(gg, "rb").read()
    fj, fg = ggml_file.parse(jt, raw_j), gguf_file.parse(gg, raw_g)
    assert fj.hparams.ftype == FILE_TYPES[ftype][0]
    # n_mult as convert.py's find_n_mult chose it for HF models: the largest that gives n_ff
    assert (fj.hparams.n_mult, fj.hparams.n_ff, fj.hparams.n_rot) == (768, 768, 64)
    assert list(fj.tensors)[:3] == ["tok_embeddings.weight", "norm.weight", "output.weight"]
    assert len(fj.tensors) == len(fg.tensors)
    for name, t in fg.tensors.items():
        u = fj.tensors[_ggjt_name(name)]
        assert (u.type, u.shape) == (t.type, tuple(t.shape)) and u.offset % 32 == 0
        assert raw_j[u.offset:u.offset + u.nbytes] == raw_g[t.offset:t.offset + t.nbytes], name
    assert np.array_equal(_logits(jt), _logits(gg))


def test_ggjt_vocab_keeps_pieces_and_scores(f32_mha, tmp_path):
    from guanaco_rt import ggml_file, gguf_file
    jt = str(tmp_path / "q.bin")
    import guanaco_rt
    guanaco_rt.quantize(f32_mha, jt, "Q8_0", format="ggjt")
    g = gguf_file.parse(f32_mha, open(f32_mha, "rb").read())
    vocab = ggml_file.parse(jt, open(jt, "rb").read()).vocab
    toks, scores = g.metadata["tokenizer.ggml.tokens"], g.metadata["tokenizer.ggml.scores"]
    assert [s for _, s in vocab] == [np.float32(s) for s in scores]
    for (text, _), piece, ttype in zip(vocab, toks, g.metadata["tokenizer.ggml.token_type"]):
        if ttype == 1:
            assert text == piece.replace("\u2581", " ").encode()


def test_cli_format_ggjt(f32_mha, tmp_path):
    import guanaco_rt
    root = os.path.dirname(os.path.dirname(os.path.abspath(guanaco_rt.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
           "GUANACO_RT_PROGRESS": "0"}
    out = str(tmp_path / "cli.bin")
    r = subprocess.run([sys.executable, "-m", "guanaco_rt", "quantize", f32_mha, out, "q5_1", "--format", "ggjt"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    api = str(tmp_path / "api.bin")
    guanaco_rt.quantize(f32_mha, api, "Q5_1", format="ggjt")
    assert open(out, "rb").read() == open(api, "rb").read()


@pytest.mark.parametrize("kw, field", [
    (dict(n_head_kv=2), "llama.attention.head_count_kv"),
    (dict(eps=1e-5), "llama.attention.layer_norm_rms_epsilon"),
    (dict(tied=True), "'output.weight'"),
    (dict(n_ff=512), "llama.feed_forward_length"),
])
def test_models_ggjt_cannot_describe_are_refused(kw, field, tmp_path):
    import guanaco_rt
    args = dict(n_embd=256, n_head=4, n_head_kv=4, n_layer=1, n_ff=768, tied=False, eps=1e-6)
    args.update(kw)
    src = float_llama(tmp_path / "in.gguf", **args)
    out = tmp_path / "out.bin"
    with pytest.raises(InvalidArgumentError, match=r"ggjt v3 cannot describe.*" + field.replace(".", r"\.")):
        guanaco_rt.quantize(src, str(out), "Q4_0", format="ggjt")
    assert not os.path.exists(out) and not os.listdir(tmp_path) == []


def test_other_architectures_are_refused(tmp_path):
    import gguf

    import guanaco_rt
    p = str(tmp_path / "qwen.gguf")
    w = gguf.GGUFWriter(p, "qwen2")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(InvalidArgumentError, match=r"general\.architecture.*'qwen2'"):
        guanaco_rt.quantize(p, str(tmp_path / "o.bin"), "Q8_0", format="ggjt")
    with pytest.raises(InvalidArgumentError, match="format 'ggml'"):
        guanaco_rt.quantize(p, str(tmp_path / "o.bin"), "Q8_0", format="ggml")


def test_rules_2025_iq4_nl_fallback_is_refused_for_ggjt(tmp_path):
    """a type ggjt v3 never held (IQ4_NL, 2025's fallback for 576-wide Q3_K) is refused, naming the tensor"""
    import guanaco_rt
    src = float_llama(tmp_path / "in.gguf", n_embd=576, n_head=9, n_head_kv=9, n_layer=1, n_ff=1536, tied=False,
                      eps=1e-6)
    with pytest.raises(InvalidArgumentError, match=r"tensor '.*' is IQ4_NL"):
        guanaco_rt.quantize(src, str(tmp_path / "o.bin"), "Q3_K_S", rules="2025", format="ggjt")
    assert not os.path.exists(tmp_path / "o.bin") and not os.path.exists(tmp_path / "o.bin.to-ggjt.gguf")
