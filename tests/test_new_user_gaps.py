"""What a new user of structured output and tools tripped on, one regression test each: a
misspelt key in a function definition, a tool message without its call id, llama-cpp-python's
create_embedding(model=...) and embed(), a max_tokens too small for a tool call, and
Session.generate(strict=...)."""
import json

import numpy as np
import pytest

import guanaco_rt
from guanaco_rt import tools as tc
from guanaco_rt.api import LLM, normalize_messages
from guanaco_rt.errors import ConstraintError, InvalidRequestError

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}]


@pytest.fixture(scope="module")
def llm(smollm2):
    with LLM(smollm2, n_ctx=1024, n_threads=2) as llm:
        yield llm


def test_misspelt_function_key_is_named():
    bad = [{"type": "function", "function": {"name": "get_weather", "paramters": SCHEMA}}]
    with pytest.raises(InvalidRequestError) as e:
        tc.check_tools(bad)
    assert e.value.param == "tools[0].function.paramters"
    assert "Unknown parameter" in str(e.value) and "'parameters'" in str(e.value)
    with pytest.raises(InvalidRequestError) as e:
        tc.check_tools([{"type": "function", "function": TOOLS[0]["function"], "functoin": {}}])
    assert e.value.param == "tools[0].functoin"
    # every key OpenAI defines still passes
    ok = tc.check_tools([{"type": "function", "function": {"name": "f", "description": "d", "parameters": SCHEMA,
                                                          "strict": True}}])
    assert ok[0]["function"]["parameters"] == SCHEMA


def test_misspelt_key_through_the_api(llm):
    bad = [{"type": "function", "function": {"name": "get_weather", "paramters": SCHEMA}}]
    with pytest.raises(InvalidRequestError) as e:
        llm.create_chat_completion([{"role": "user", "content": "hi"}], tools=bad, max_tokens=4)
    assert e.value.param == "tools[0].function.paramters"


def test_tool_message_needs_its_call_id():
    with pytest.raises(InvalidRequestError) as e:
        normalize_messages([{"role": "user", "content": "hi"}, {"role": "tool", "content": "17 C"}])
    assert e.value.param == "messages[1].tool_call_id"
    ok = normalize_messages([{"role": "tool", "content": "17 C", "tool_call_id": "call_1"}])
    assert ok[0]["tool_call_id"] == "call_1"


def test_create_embedding_takes_a_model_name(llm):
    r = llm.create_embedding("hello", model="anything")
    assert len(r["data"]) == 1 and len(r["data"][0]["embedding"]) == llm.model.hparams.n_embd


def test_embed_as_llama_cpp_python(llm):
    v = llm.embed("hello there")
    assert isinstance(v, list) and len(v) == llm.model.hparams.n_embd and isinstance(v[0], float)
    # not normalized by default (llama-cpp-python's), the same direction as the normalized one
    u = np.array(llm.embed("hello there", normalize=True))
    assert abs(np.linalg.norm(u) - 1) < 1e-5 and abs(np.linalg.norm(v) - 1) > 1e-3
    assert np.allclose(u, np.array(v) / np.linalg.norm(v), atol=1e-6)
    vs, n = llm.embed(["a", "b c"], return_count=True)
    assert len(vs) == 2 and n == len(llm.model.tokenize("a")) + len(llm.model.tokenize("b c"))
    long = "word " * 2000
    assert len(llm.embed(long)) == llm.model.hparams.n_embd          # truncated to n_ctx
    with pytest.raises(InvalidRequestError) as e:
        llm.embed(long, truncate=False)
    assert e.value.param == "input"


def test_max_tokens_too_small_for_a_call_shows(llm):
    # 25 tokens: the call's name is written, its arguments are not finished, and its shortest
    # completion needs more than are left. As OpenAI: the cut call is in tool_calls with the
    # arguments written so far, and the finish reason is "length".
    r = llm.create_chat_completion([{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS,
                                   tool_choice="required", max_tokens=25, temperature=0)
    choice = r["choices"][0]
    assert choice["finish_reason"] == "length"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and call["function"]["arguments"]
    with pytest.raises(ValueError):
        json.loads(call["function"]["arguments"])
    # with enough tokens the call is complete
    r = llm.create_chat_completion([{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS,
                                   tool_choice="required", max_tokens=60, temperature=0)
    assert r["choices"][0]["finish_reason"] == "tool_calls"
    json.loads(r["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])


def test_session_strict(smollm2):
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True, "maxItems": 3}
    with guanaco_rt.Model(smollm2, n_threads=2) as m, guanaco_rt.Session(m, n_ctx=512) as s:
        with pytest.raises(ConstraintError, match="uniqueItems"):
            s.generate("Three numbers:", 20, json_schema=schema, temperature=0)
        r = s.generate("Three numbers:", 40, json_schema=schema, temperature=0, strict=False)
        assert isinstance(r.parsed, list) and len(r.parsed) <= 3
        r = s.chat("Three numbers as a JSON array", 40, json_schema=schema, temperature=0, strict=False)
        assert isinstance(r.parsed, list)
        with s.stream("Three numbers:", 40, json_schema=schema, temperature=0, strict=False) as st:
            "".join(st)
        assert isinstance(st.result.parsed, list)
