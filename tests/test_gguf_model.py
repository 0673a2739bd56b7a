"""LLaMA-family GGUF models: grouped-query attention, a tied output, another RoPE base
and scaling, eps from the metadata, widths that are not multiples of 256 -- against the
NumPy forward on gguf-dequantized weights; state blob, fork and context shift on them."""
import gguf
import numpy as np
import pytest

import guanaco_rt
from guanaco_rt import ggml_types as T
from guanaco_rt.errors import FormatError

from helpers import write_llama_gguf
from reference import ReferenceModel

TOKENS = [1, 5, 60, 7, 250, 9, 10, 11, 42, 99, 3, 17]


CASES = {
    "gqa-tied-q4_1": dict(),
    "gqa-untied-q8_0": dict(wtype=T.Q8_0, tied=False, rope_base=10000.0),
    "mha-q4_0-linear-scaling": dict(n_head_kv=6, wtype=T.Q4_0, scaling=("linear", 4.0)),
    "gqa-k-quants": dict(n_embd=256, n_head=8, n_head_kv=4, n_ff=512, wtype=T.Q4_K, emb_type=T.Q6_K, eps=1e-6),
    "mqa-q5_0": dict(n_head_kv=1, wtype=T.Q5_0),
    # the types llama.cpp's k-quant files of widths not a multiple of 256 fall back to, and BF16 originals
    "gqa-tied-iq4_nl": dict(wtype=T.IQ4_NL, emb_type=T.IQ4_NL),
    "gqa-untied-iq4_xs": dict(n_embd=256, n_head=8, n_head_kv=4, n_ff=512, wtype=T.IQ4_XS, emb_type=T.IQ4_XS,
                              tied=False),
    "gqa-tied-bf16": dict(wtype=T.BF16, emb_type=T.BF16),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf-models")


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_the_reference(root, case):
    m = guanaco_rt.Model(write_llama_gguf(root / f"{case}.gguf", **CASES[case]))
    hp = m.hparams
    assert hp.n_head_kv == CASES[case].get("n_head_kv", 2) and hp.eps == pytest.approx(CASES[case].get("eps", 1e-5))
    ours = guanaco_rt.Session(m, n_ctx=32).eval(TOKENS, all_logits=True)
    qref = ReferenceModel(m, quantize_acts=True).forward(TOKENS)      # the engine's arithmetic, exactly
    ref = ReferenceModel(m).forward(TOKENS)                           # float activations
    scale = np.abs(ref).max()
    assert np.median(np.abs(ours - qref).max(axis=1) / scale) < 1e-3
    assert np.abs(ours - ref).max() / scale < 0.08
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.998


def test_state_fork_shift_and_threads_on_gqa(root):
    m = guanaco_rt.Model(write_llama_gguf(root / "ops.gguf"))
    s = guanaco_rt.Session(m, n_ctx=64, n_threads=1)
    a = s.eval(TOKENS)
    s2 = guanaco_rt.Session(m, n_ctx=64, n_threads=2, kv_f16=False)
    s2.load_state(s.save_state())
    np.testing.assert_array_equal(s2.eval([12]), s.fork().eval([12]))
    np.testing.assert_array_equal(guanaco_rt.Session(m, n_ctx=64, n_threads=3, n_batch=5).eval(TOKENS), a)
    # a context shift on a GQA cache: generation runs on past n_ctx
    r = guanaco_rt.Session(m, n_ctx=16, context_policy="shift").generate(TOKENS, max_new_tokens=40, temperature=0)
    assert len(r.tokens) == 40


def test_the_tokenizer_comes_from_the_file(root):
    m = guanaco_rt.Model(write_llama_gguf(root / "tok.gguf"))
    ids = m.tokenize("abc")
    assert ids[0] == 1 and m.detokenize(ids) == "abc"
    assert m.tokenize("a")[1] == m.file.vocab["tokens"].index("\u2581a")      # the dummy prefix space


def test_tokenizer_flags_and_end_of_turn(root):
    m = guanaco_rt.Model(write_llama_gguf(root / "flags.gguf", flags={
        "add_bos_token": False, "add_eos_token": True, "add_space_prefix": False, "eot_token_id": 5}))
    ids = m.tokenize("a")
    assert ids[0] != 1 and ids[-1] == 2                                      # no BOS, EOS appended
    assert ids[0] == m.file.vocab["tokens"].index("a")                       # no dummy prefix
    # token 5 (end of turn) ends generation like EOS: ban everything else
    bias = {i: float("-inf") for i in range(300) if i != 5}
    r = guanaco_rt.Session(m, n_ctx=32).generate([1, 7], max_new_tokens=5, logit_bias=bias)
    assert r.finish_reason == "eos" and r.tokens == []


@pytest.mark.parametrize("edit, field", [
    (dict(n_head_kv=4), "head_count"),           # 6 heads over 4 KV heads
])
def test_inconsistent_metadata_is_refused(root, edit, field):
    with pytest.raises(FormatError, match=field):
        guanaco_rt.Model(write_llama_gguf(root / "bad.gguf", **edit))


def test_other_architectures_are_refused(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "falcon")
    w.add_tensor("t", np.zeros(32, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(FormatError, match="falcon"):
        guanaco_rt.Model(tmp_path / "x.gguf")


# ---- the real model ------------------------------------------------------------------------
CHATML = ["<|im_start|>", "user", "Ċ", "What", "Ġis", "Ġthe", "Ġcapital", "Ġof", "ĠFrance", "?", "<|im_end|>", "Ċ",
          "<|im_start|>", "ass", "istant", "Ċ"]     # the ChatML prompt, as its BPE pieces


def chatml_ids(m):
    index = {t: i for i, t in enumerate(m.file.vocab["tokens"])}
    return [index[p] for p in CHATML]


def test_smollm2_answers_the_france_question(smollm2):
    m = guanaco_rt.Model(smollm2)
    hp = m.hparams
    assert (hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv, hp.n_ff, hp.n_vocab) == (30, 576, 9, 3, 1536, 49152)
    assert "output.weight" not in m.tensors and hp.rope_base == 100000.0
    r = guanaco_rt.Session(m, n_ctx=128).generate(chatml_ids(m), max_new_tokens=16, temperature=0)
    assert r.text == "The capital of France is Paris." and r.finish_reason == "eos"


def test_smollm2_logits_match_a_float_reference(smollm2):
    """Independent float reference: the NumPy forward on weights gguf-py dequantizes."""
    m = guanaco_rt.Model(smollm2)
    ids = chatml_ids(m)
    ours = guanaco_rt.Session(m, n_ctx=64).eval(ids, all_logits=True)
    ref = ReferenceModel(m).forward(ids)
    rel = np.abs(ours - ref).max(axis=1) / np.abs(ref).max(axis=1)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"SmolLM2 vs float reference: max rel err per position {np.round(rel, 4).tolist()}, "
          f"min cosine {cos.min():.5f}")
    # measured: 1.6-5.2% of the largest logit per position; min cosine 0.9950 (generic unit),
    # 0.9943 (AVX2, interleaved rows), 0.9973 (AVX2 before interleaving): all at position 5,
    # where the 8-bit activations' rounding decides, and a flip there differs per kernel
    assert cos.min() > 0.99 and rel.max() < 0.08
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.8


# ---- chat templates ------------------------------------------------------------------------
def test_chat_uses_the_files_template_and_reuses_the_cache(smollm2):
    m = guanaco_rt.Model(smollm2)
    s = guanaco_rt.Session(m, n_ctx=512, system="You are a helpful assistant.")
    assert s.template is not None and "<|im_start|>" in s.template.source
    assert s.chat("What is the capital of France?", temperature=0, repetition_penalty=1.0) == \
        "The capital of France is Paris."
    text = s.template.render(s.conversation.messages("Thanks!"))
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_start|>user\nThanks!<|im_end|>\n<|im_start|>assistant\n")
    s.chat("Thanks!", max_new_tokens=8, temperature=0)
    assert s.last_result.timings.reused_tokens > 20          # the first turn's KV entries were reused
    g = guanaco_rt.Session(m, n_ctx=512, template="guanaco")
    assert g.template is None
    t = guanaco_rt.Session(m, n_ctx=64, template="{{ bos_token }}|{{ eos_token }}").template
    assert t.render([]) == "<|im_start|>|<|im_end|>"          # the tokens' own spellings (ids 1 and 2)
    assert g.fork().template is None and s.fork().template.source == s.template.source


def test_templates_run_in_a_sandbox():
    from guanaco_rt.chat import ChatTemplate, Conversation
    t = ChatTemplate("{{ messages[0].content.__class__.__mro__ }}")
    with pytest.raises(ValueError, match="template"):
        t.render(Conversation(system="x").messages())
    with pytest.raises(ValueError, match="parse"):
        ChatTemplate("{% for %}").render([])            # parsed on first use
    boom = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ValueError, match="roles must alternate"):
        boom.render([])


def test_the_readme_first_command_answers(smollm2):
    # `guanaco-rt run` without a model path uses the demo model from the cache
    import os
    import subprocess
    import sys
    env = {**os.environ, "GUANACO_RT_CACHE": os.path.dirname(smollm2)}
    r = subprocess.run([sys.executable, "-m", "guanaco_rt", "run", "--chat", "--system", "You are a helpful assistant.",
                        "-p", "What is the capital of France?", "-n", "32", "--no-stats"], capture_output=True,
                       text=True, env=env, timeout=120, cwd=os.path.dirname(__file__))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "The capital of France is Paris."
    r = subprocess.run([sys.executable, "-m", "guanaco_rt", "pull-demo"], capture_output=True, text=True, env=env,
                       timeout=120, cwd=os.path.dirname(__file__))
    assert r.returncode == 0 and r.stdout.strip() == smollm2


@pytest.mark.parametrize("ftype", ["q4_0", "q5_1", "q4_K_M", "q6_K"])
def test_a_ggjt_file_converted_to_gguf_gives_the_same_tokens_and_logits(tmp_path, ftype):
    from guanaco_rt.writer import ggjt_to_gguf

    from helpers import tiny_model
    src = tiny_model(tmp_path, ftype)
    dst = tmp_path / "copy.gguf"
    ggjt_to_gguf(src, dst)
    a, b = guanaco_rt.Model(src), guanaco_rt.Model(dst)
    assert a.hparams.as_dict()["n_ff"] == b.hparams.n_ff and a.n_vocab == b.n_vocab
    text = "hello world, the quick brown fox"
    assert a.tokenize(text) == b.tokenize(text)
    ids = a.tokenize(text)
    assert np.array_equal(guanaco_rt.Session(a, n_ctx=64).eval(ids, all_logits=True),
                          guanaco_rt.Session(b, n_ctx=64).eval(ids, all_logits=True))
    r = gguf.GGUFReader(str(dst))
    assert {t.name for t in r.tensors} >= {"token_embd.weight", "output.weight", "blk.1.ffn_down.weight"}
