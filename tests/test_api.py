"""The OpenAI-shaped API (guanaco_rt.api): response shapes, parameter mapping and checks,
logprobs, streaming, cancel from another thread, and the session pool."""
import threading
import time

import numpy as np
import pytest

import guanaco_rt
from guanaco_rt import InvalidRequestError
from guanaco_rt.api import LLM, CancelHandle, SessionPool
from guanaco_rt.chat import DEFAULT_SYSTEM, Conversation, guanaco_prompt

from helpers import tiny_model

FRANCE = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def demo(smollm2):
    with LLM(smollm2, n_ctx=256, n_sessions=2, n_threads=1) as llm:
        yield llm


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tiny_model(tmp_path_factory.mktemp("api"), "q4_0")
    with LLM(path, n_ctx=384, n_threads=1) as llm:
        yield llm


def test_chat_completion_shape_and_answer(demo):
    r = demo.create_chat_completion(FRANCE, temperature=0, max_tokens=24)
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
    assert r["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and isinstance(r["created"], int)
    (c,) = r["choices"]
    assert c["index"] == 0 and c["message"]["role"] == "assistant" and c["logprobs"] is None
    assert c["message"]["content"] == "The capital of France is Paris."
    assert c["finish_reason"] == "stop"                         # the end-of-turn token
    u = r["usage"]
    ids, _ = demo.chat_prompt(FRANCE)
    assert u["prompt_tokens"] == len(ids) and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert u["completion_tokens"] == len(demo.model.tokenize(c["message"]["content"], bos=False))


def test_chat_stream_chunks_add_up_to_the_reply(demo):
    whole = demo.create_chat_completion(FRANCE, temperature=0, max_tokens=24)
    chunks = list(demo.create_chat_completion(FRANCE, temperature=0, max_tokens=24, stream=True,
                                              stream_options={"include_usage": True}))
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_completion_logprobs_are_consistent(demo):
    r = demo.create_completion("The capital of France is", temperature=0, max_tokens=6, logprobs=3)
    lp = r["choices"][0]["logprobs"]
    assert r["object"] == "text_completion" and r["choices"][0]["finish_reason"] == "length"
    assert "".join(lp["tokens"]) == r["choices"][0]["text"]
    assert lp["text_offset"] == list(np.cumsum([0] + [len(t) for t in lp["tokens"]])[:-1])
    for tok, own, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert len(top) == 3 and own <= 0
        assert max(top.values()) == pytest.approx(own, abs=1e-12)    # greedy: the chosen token is the top one
        assert top[tok] == pytest.approx(own, abs=1e-12)
    # streamed logprobs: the same numbers, token by token
    streamed = [c["choices"][0]["logprobs"] for c in
                demo.create_completion("The capital of France is", temperature=0, max_tokens=6, logprobs=3,
                                       stream=True)]
    own = [x for s in streamed if s for x in s["token_logprobs"]]
    assert own == pytest.approx(lp["token_logprobs"], abs=1e-12)


def test_chat_logprobs_shape(demo):
    r = demo.create_chat_completion(FRANCE, temperature=0, max_tokens=4, logprobs=True, top_logprobs=2)
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == r["usage"]["completion_tokens"]
    for e in content:
        assert bytes(e["bytes"]).decode("utf-8", "replace") == e["token"]
        assert len(e["top_logprobs"]) == 2 and e["top_logprobs"][0]["logprob"] >= e["top_logprobs"][1]["logprob"]
    r = demo.create_chat_completion(FRANCE, temperature=0, max_tokens=4, logprobs=True)
    assert all(e["top_logprobs"] == [] for e in r["choices"][0]["logprobs"]["content"])


def test_seed_n_echo_and_stop(tiny):
    a = tiny.create_completion("hello", max_tokens=12, temperature=1.0, seed=7, n=2)
    b = tiny.create_completion("hello", max_tokens=12, temperature=1.0, seed=7, n=2)
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
    assert [c["index"] for c in a["choices"]] == [0, 1]
    assert a["usage"]["completion_tokens"] == 24
    e = tiny.create_completion("hello", max_tokens=3, temperature=0, echo=True)
    plain = tiny.create_completion("hello", max_tokens=3, temperature=0)
    assert e["choices"][0]["text"] == "hello" + plain["choices"][0]["text"]
    full = tiny.create_completion("hello", max_tokens=20, temperature=0)["choices"][0]["text"]
    cut = full[len(full) // 2:len(full) // 2 + 2]
    if cut.strip():
        r = tiny.create_completion("hello", max_tokens=20, temperature=0, stop=[cut])
        assert r["choices"][0]["finish_reason"] == "stop" and cut not in r["choices"][0]["text"]
        assert full.startswith(r["choices"][0]["text"])


def test_huge_max_tokens_ends_at_the_context(tiny):
    r = tiny.create_completion("hello", max_tokens=10**9, temperature=0, repeat_penalty=1.0)
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["total_tokens"] == tiny.n_ctx


@pytest.mark.parametrize("kw, param", [
    ({"temperature": 3}, "temperature"), ({"top_p": -0.1}, "top_p"), ({"max_tokens": -1}, "max_tokens"),
    ({"n": 0}, "n"), ({"logprobs": 21}, "logprobs"), ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"logit_bias": {"999999": 1}}, "logit_bias"), ({"stop": 5}, "stop"), ({"seed": "a"}, "seed"),
    ({"seed": -1}, "seed"), ({"top_k": 2**40}, "top_k"),
    ({"max_tokens": True}, "max_tokens"), ({"prompt": []}, "prompt"), ({"prompt": [1, -4]}, "prompt"),
    ({"prompt": "x" * 2000}, "prompt"),
])
def test_bad_parameters_name_themselves(tiny, kw, param):
    args = {"prompt": "hello", **kw}
    with pytest.raises(InvalidRequestError) as e:
        tiny.create_completion(**args)
    assert e.value.param == param
    if kw.get("prompt") == "x" * 2000:
        assert e.value.code == "context_length_exceeded"


@pytest.mark.parametrize("messages, param", [
    ([], "messages"), ("hi", "messages"), ([{"role": "robot", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], "messages[0].content"),
    ([{"role": "user"}], "messages[0]"),
])
def test_bad_messages_name_themselves(tiny, messages, param):
    with pytest.raises(InvalidRequestError) as e:
        tiny.create_chat_completion(messages)
    assert e.value.param == param


def test_guanaco_chat_format_matches_conversation():
    c = Conversation()
    c.add("hi", "hello")
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "and?"}]
    assert guanaco_prompt(msgs) == c.prompt("and?")
    assert guanaco_prompt([{"role": "system", "content": "Be brief."}] + msgs).startswith("Be brief.\n### Human: hi")
    assert guanaco_prompt(msgs[:2]).endswith("### Assistant: hello")        # continues the reply
    assert guanaco_prompt(msgs[:1]).startswith(DEFAULT_SYSTEM)


def test_text_parts_are_joined(tiny):
    a = tiny.create_chat_completion([{"role": "user", "content": [{"type": "text", "text": "hel"},
                                                                   {"type": "text", "text": "lo"}]}],
                                    temperature=0, max_tokens=4)
    b = tiny.create_chat_completion([{"role": "user", "content": "hello"}], temperature=0, max_tokens=4)
    assert a["choices"][0]["message"] == b["choices"][0]["message"]


def test_stream_cancel_from_another_thread(tiny):
    s = tiny.create_completion("hello", max_tokens=100, temperature=1.0, seed=1, stream=True)
    first = next(s)
    assert first["choices"][0]["text"] is not None
    t = threading.Thread(target=s.cancel)      # another thread, while the stream is between tokens
    t.start()
    t.join()
    rest = list(s)
    assert rest[-1]["choices"][0]["finish_reason"] == "cancelled"
    assert sum(1 for c in rest if c["choices"][0]["text"]) < 99
    # the session went back to the pool: the next call runs at once
    assert tiny.pool.busy == 0
    assert tiny.create_completion("hello", max_tokens=2)["choices"][0]["finish_reason"] == "length"


def test_non_stream_cancel_handle(tiny):
    h = CancelHandle()
    threading.Timer(0.05, h.cancel).start()
    r = tiny.create_completion("hello", max_tokens=100000, temperature=1.0, cancel=h, repeat_penalty=1.0)
    assert r["choices"][0]["finish_reason"] in ("cancelled", "length")
    if r["choices"][0]["finish_reason"] == "length":         # the machine was fast enough to fill the context
        assert r["usage"]["total_tokens"] == tiny.n_ctx


def test_closing_a_stream_returns_its_session(tiny):
    s = tiny.create_completion("hello", max_tokens=50, stream=True)
    next(s)
    assert tiny.pool.busy == 1
    s.close()
    assert tiny.pool.busy == 0


def test_pool_serves_in_arrival_order_and_prefers_the_cached_prefix(tmp_path):
    model = guanaco_rt.Model(tiny_model(tmp_path, "q4_0"), n_threads=1)
    pool = SessionPool(model, 2, n_ctx=64)
    a, b = pool.acquire(), pool.acquire()
    a.eval([1, 5, 6, 7])
    b.eval([1, 9, 9])
    pool.release(a)
    pool.release(b)
    s = pool.acquire([1, 5, 6, 7, 8])
    assert s is a                                   # the longest cached prefix
    order = []
    holders = [pool.acquire()]                     # both sessions taken now

    def waiter(i):
        with pool.session():
            order.append(i)
            time.sleep(0.01)

    threads = []
    for i in range(4):
        t = threading.Thread(target=waiter, args=(i,))
        t.start()
        threads.append(t)
        time.sleep(0.05)                            # they queue in this order
    assert pool.waiting == 4
    pool.release(holders[0])
    pool.release(s)
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3]
    with pytest.raises(TimeoutError):
        with pool.session(), pool.session(), pool.session(timeout=0.05):
            pass
    pool.close()
    model.close()
