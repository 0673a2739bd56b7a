"""Issue 23, item 4: the chat templates of Qwen2/2.5, Qwen3, Gemma 3, Phi-3 and Llama 3.x
render as HF transformers renders them (its own render_jinja_template, the function behind
apply_chat_template), and the token each template ends a turn with ends generation.

The templates are the real ones (tests/data/templates/README.md says where each comes from).
"""
import family_vocab as fv
import pytest

import guanaco_rt
from guanaco_rt.chat import ChatTemplate
from guanaco_rt.errors import ChatTemplateError

render_jinja_template = pytest.importorskip("transformers.utils.chat_template_utils").render_jinja_template

# template -> (bos_token, eos_token) as the model's tokenizer_config.json names them
FAMILIES = {
    "Qwen-Qwen2-7B-Instruct": ("", "<|im_end|>"),
    "Qwen-Qwen2.5-7B-Instruct": ("", "<|im_end|>"),
    "Qwen-Qwen3-0.6B": ("", "<|im_end|>"),
    "google-gemma-3-it": ("<bos>", "<eos>"),
    "microsoft-Phi-3-mini-4k-instruct": ("<s>", "<|endoftext|>"),
    "microsoft-Phi-3.5-mini-instruct": ("<s>", "<|endoftext|>"),
    "meta-llama-Llama-3.1-8B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.3-70B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
}
SYSTEM = {"role": "system", "content": "You are a terse assistant.\nAnswer in one line."}
CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "Hello!"}],
    "system and user": [SYSTEM, {"role": "user", "content": "What is 2+2?"}],
    "multi-turn": [SYSTEM, {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                   {"role": "user", "content": "Another one?"}],
    "no system, multi-turn": [{"role": "user", "content": "Hi"},
                              {"role": "assistant", "content": "Hello, how can I help?"},
                              {"role": "user", "content": "Tell me a joke."}],
    "whitespace and markup": [{"role": "user", "content": "  padded  \n\n"},
                              {"role": "assistant", "content": "\n reply with {{ braces }} and <b>tags</b>\t"},
                              {"role": "user", "content": "日本語 🦙 {% raw %} é"}],
    "ends with the assistant": [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "Yes."}],
}


def hf(source, messages, add_generation_prompt, bos, eos, **variables):
    rendered, _ = render_jinja_template(conversations=[messages], chat_template=source,
                                        add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos,
                                        **variables)
    return rendered[0]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_renders_as_hf(family, conversation, add_generation_prompt):
    """Ours == HF's, character for character (Llama 3.2 writes today's date from
    strftime_now: before, ours wrote the template's fallback "26 Jul 2024")."""
    source = fv.template(family)
    bos, eos = FAMILIES[family]
    messages = CONVERSATIONS[conversation]
    ours = ChatTemplate(source, bos, eos).render(messages, add_generation_prompt)
    assert ours == hf(source, messages, add_generation_prompt, bos, eos)


QWEN3_HISTORY = [{"role": "user", "content": "2+2?"},
                 {"role": "assistant", "content": "<think>\nSimple sum.\n</think>\n\n4."},
                 {"role": "user", "content": "And 3+3?"}]


@pytest.mark.parametrize("messages", [CONVERSATIONS["system and user"], QWEN3_HISTORY],
                         ids=["system and user", "reasoning in history"])
@pytest.mark.parametrize("variables", [{}, {"enable_thinking": True}, {"enable_thinking": False}],
                         ids=["default", "thinking", "no thinking"])
def test_qwen3_enable_thinking(messages, variables):
    """Qwen3 with and without thinking: enable_thinking=False writes the empty
    <think></think> block, as HF does with apply_chat_template(..., enable_thinking=False);
    past reasoning is dropped from the history. Before: no way to pass the variable."""
    source = fv.template("Qwen-Qwen3-0.6B")
    ours = ChatTemplate(source, "", "<|im_end|>", variables=variables).render(messages, True)
    assert ours == hf(source, messages, True, "", "<|im_end|>", **variables)
    assert ours.endswith("<think>\n\n</think>\n\n") == (variables.get("enable_thinking") is False)
    assert "Simple sum." not in ours


def test_gemma3_folds_the_system_text_into_the_first_user_turn():
    ours = ChatTemplate(fv.template("google-gemma-3-it"), "<bos>", "<eos>").render(CONVERSATIONS["multi-turn"])
    assert ours == ("<bos><start_of_turn>user\nYou are a terse assistant.\nAnswer in one line.\n\nName a colour."
                    "<end_of_turn>\n<start_of_turn>model\nBlue.<end_of_turn>\n<start_of_turn>user\nAnother one?"
                    "<end_of_turn>\n<start_of_turn>model\n")


@pytest.mark.parametrize("messages", [
    [{"role": "assistant", "content": "I start."}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [SYSTEM, SYSTEM, {"role": "user", "content": "a"}],
])
def test_gemma3_bad_role_order_is_refused(messages):
    """The template's raise_exception: HF raises TemplateError, we a ChatTemplateError with
    the template's message."""
    source = fv.template("google-gemma-3-it")
    from jinja2.exceptions import TemplateError
    with pytest.raises(TemplateError, match="roles must alternate"):
        hf(source, messages, True, "<bos>", "<eos>")
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        ChatTemplate(source, "<bos>", "<eos>").render(messages)


def test_llama32_writes_todays_date():
    """Llama 3.2's template asks strftime_now for the date (3.1's and 3.3's write a fixed one)."""
    from datetime import datetime
    out = ChatTemplate(fv.template("meta-llama-Llama-3.2-3B-Instruct"), "<|begin_of_text|>", "<|eot_id|>").render(
        CONVERSATIONS["one user turn"])
    assert f"Today Date: {datetime.now().strftime('%d %b %Y')}\n" in out


# ---- the token that ends a turn ends generation --------------------------------------------
@pytest.mark.parametrize("family, vocab_name, turn_end", [
    ("Qwen-Qwen2.5-7B-Instruct", "qwen2", "<|im_end|>"),
    ("Qwen-Qwen3-0.6B", "qwen2", "<|im_end|>"),
    ("meta-llama-Llama-3.1-8B-Instruct", "llama-bpe", "<|eot_id|>"),
    ("microsoft-Phi-3-mini-4k-instruct", "phi-3", "<|end|>"),
])
def test_the_turn_end_a_template_writes_is_an_end_of_generation_token(vocabs, family, vocab_name, turn_end):
    """The token the template closes an assistant turn with is in the vocabulary's EOG set
    (so the model's own turn end stops it), and it is one token in the prompt ids."""
    vocab, tok = vocabs(vocab_name)
    rendered = ChatTemplate(fv.template(family), *FAMILIES[family]).render(CONVERSATIONS["multi-turn"], False)
    assert turn_end in rendered
    tid = vocab["tokens"].index(turn_end)
    assert tid in tok.eog_ids
    assert tid in tok.encode(rendered, bos=False, special=True)


def test_qwen_chat_prompt_is_hf_ids_and_stops_at_im_end(vocabs, tmp_path):
    """A Session on a tiny model with Qwen's vocabulary and Qwen2.5's template: the chat
    prompt's ids are HF's (render, then HF tokenizers on the text), and a reply whose first
    token is <|im_end|> ends there (finish "eos"), leaving an empty reply."""
    from test_family_tokenizers import write_bpe_model
    vocab, _ = vocabs("qwen2")
    path = write_bpe_model(tmp_path / "qwen.gguf", vocab)
    source = fv.template("Qwen-Qwen2.5-7B-Instruct")
    with guanaco_rt.Model(path, n_threads=1) as m:
        s = guanaco_rt.Session(m, n_ctx=256, template=source, system="You are terse.")
        ids = s.chat_prompt("What is 2+2?")
        text = hf(source, [{"role": "system", "content": "You are terse."},
                           {"role": "user", "content": "What is 2+2?"}], True, "", "<|im_end|>")
        assert ids == fv.hf_bpe(vocab, "qwen2").encode(text, add_special_tokens=False).ids
        im_end = vocab["tokens"].index("<|im_end|>")
        assert s.chat("What is 2+2?", max_new_tokens=8, logit_bias={im_end: 100.0}, temperature=0.0) == ""
        assert s.last_result.finish_reason == "eos" and s.last_result.tokens == []


def test_qwen3_session_without_thinking(vocabs, tmp_path):
    """A Session's template takes HF's extra variables through ``template.variables``:
    Qwen3 with enable_thinking False opens the reply after an empty think block."""
    from test_family_tokenizers import write_bpe_model
    vocab, _ = vocabs("qwen2")
    source = fv.template("Qwen-Qwen3-0.6B")
    with guanaco_rt.Model(write_bpe_model(tmp_path / "qwen3.gguf", vocab), n_threads=1) as m:
        s = guanaco_rt.Session(m, n_ctx=256, template=source, system="")
        s.template.variables["enable_thinking"] = False
        text = hf(source, [{"role": "user", "content": "Hi"}], True, "", "<|im_end|>", enable_thinking=False)
        assert text.endswith("<think>\n\n</think>\n\n")
        assert s.chat_prompt("Hi") == fv.hf_bpe(vocab, "qwen2").encode(text, add_special_tokens=False).ids


def test_gemma3_session_uses_the_files_template(shared_data, tmp_path):
    """A Gemma-style file carrying Gemma 3's template: the Session's chat prompt is HF's text
    (system folded into the user turn) as tokens, with one BOS (the template's, none added),
    and a reply that starts with <end_of_turn> ends there."""
    from test_family_tokenizers import write_gemma_style
    with guanaco_rt.Model(write_gemma_style(tmp_path / "g.gguf", shared_data, n_embd=32), n_threads=1) as m:
        s = guanaco_rt.Session(m, n_ctx=256, system="Be brief.")
        text = hf(fv.template("google-gemma-3-it"), [{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": "Hi"}], True, "<bos>", "<eos>")
        assert text == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        ids = s.chat_prompt("Hi")
        assert ids == m.tokenize(text, bos=False, special=True) and ids[0] == 2 and ids.count(2) == 1
        assert s.chat("Hi", max_new_tokens=8, logit_bias={5: 100.0}, temperature=0.0) == ""
        assert s.last_result.finish_reason == "eos"


def test_chat_completions_take_chat_template_kwargs(vocabs, tmp_path):
    """LLM.create_chat_completion(chat_template_kwargs=...) (vLLM's and llama.cpp's servers'
    name): Qwen3 without thinking gets HF's prompt for apply_chat_template(...,
    enable_thinking=False); the reply ends at <|im_end|> with finish_reason "stop"; a
    malformed value is an InvalidRequestError naming the field."""
    from test_family_tokenizers import write_bpe_model
    vocab, _ = vocabs("qwen2")
    source = fv.template("Qwen-Qwen3-0.6B")
    messages = [{"role": "user", "content": "Hi"}]
    with guanaco_rt.LLM(write_bpe_model(tmp_path / "qwen3.gguf", vocab), n_ctx=256, n_threads=1,
                        template=source) as llm:
        ref = fv.hf_bpe(vocab, "qwen2")
        for kw in ({}, {"enable_thinking": False}, {"enable_thinking": True}):
            ids, _ = llm.chat_prompt(messages, kw)
            assert ids == ref.encode(hf(source, messages, True, "", "<|im_end|>", **kw), add_special_tokens=False).ids
        im_end = vocab["tokens"].index("<|im_end|>")
        out = llm.create_chat_completion(messages, max_tokens=8, logit_bias={str(im_end): 100},
                                         chat_template_kwargs={"enable_thinking": False})
        assert out["choices"][0]["finish_reason"] == "stop" and out["choices"][0]["message"]["content"] == ""
        assert out["usage"]["prompt_tokens"] == len(llm.chat_prompt(messages, {"enable_thinking": False})[0])
        for bad in (["enable_thinking"], {"messages": []}, {"not a name": 1}):
            with pytest.raises(guanaco_rt.InvalidRequestError, match="chat_template_kwargs"):
                llm.create_chat_completion(messages, max_tokens=1, chat_template_kwargs=bad)
