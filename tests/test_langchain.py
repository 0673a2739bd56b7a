"""The LangChain adapters, driven through langchain-core itself (invoke, batch, stream,
stop, callbacks, async). Run alone with ``pytest -m langchain``."""
import asyncio
import json

import pytest

pytest.importorskip("langchain_core")
from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from guanaco_rt.api import LLM  # noqa: E402
from guanaco_rt.integrations.langchain import ChatGuanaco, GuanacoLLM  # noqa: E402

pytestmark = pytest.mark.langchain
FRANCE = [SystemMessage("You are a helpful assistant."), HumanMessage("What is the capital of France?")]


@pytest.fixture(scope="module")
def llm(smollm2):
    with LLM(smollm2, n_ctx=256, n_sessions=2, n_threads=1) as llm:
        yield llm


def test_chat_invoke(llm):
    chat = ChatGuanaco(llm=llm, temperature=0, max_tokens=24)
    msg = chat.invoke(FRANCE)
    assert isinstance(msg, AIMessage) and msg.content == "The capital of France is Paris."
    assert msg.response_metadata["finish_reason"] == "stop"
    assert msg.usage_metadata["output_tokens"] > 0


def test_chat_stream_and_callbacks(llm):
    tokens = []

    class Collect(BaseCallbackHandler):
        def on_llm_new_token(self, token, **kw):
            tokens.append(token)

    chat = ChatGuanaco(llm=llm, temperature=0, max_tokens=24, callbacks=[Collect()])
    chunks = list(chat.stream(FRANCE))
    assert "".join(c.content for c in chunks) == "The capital of France is Paris."
    assert "".join(tokens) == "The capital of France is Paris."
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    assert merged.response_metadata["finish_reason"] == "stop"


def test_chat_stop_and_prompt_template(llm):
    chat = ChatGuanaco(llm=llm, temperature=0, max_tokens=24)
    assert chat.invoke(FRANCE, stop=["Paris"]).content == "The capital of France is "
    chain = ChatPromptTemplate.from_messages([("system", "You are a helpful assistant."),
                                              ("human", "What is the capital of {country}?")]) | chat
    assert "Paris" in chain.invoke({"country": "France"}).content


def test_chat_batch_and_async(llm):
    chat = ChatGuanaco(llm=llm, temperature=0, max_tokens=24)
    a, b = chat.batch([FRANCE, FRANCE])
    assert a.content == b.content == "The capital of France is Paris."
    assert asyncio.run(chat.ainvoke(FRANCE)).content == a.content

    async def collect():
        return "".join([c.content async for c in chat.astream(FRANCE)])
    assert asyncio.run(collect()) == a.content


def test_text_llm(llm):
    text = GuanacoLLM(llm=llm, temperature=0, max_tokens=4)
    out = text.invoke("The capital of France is")
    assert out.startswith(" Paris")
    assert "".join(text.stream("The capital of France is")) == out
    assert text.invoke("The capital of France is", stop=["."]) == " Paris"


def test_bad_message_type_is_refused(llm):
    from langchain_core.messages import ChatMessage
    with pytest.raises(ValueError, match="'chat'"):
        ChatGuanaco(llm=llm).invoke([ChatMessage(role="critic", content="x")])


# ---- tools and structured output ------------------------------------------------------------
@pytest.fixture(scope="module")
def chat(smollm2):
    with LLM(smollm2, n_ctx=1024, n_threads=2) as llm:
        yield ChatGuanaco(llm=llm, temperature=0, max_tokens=48)


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return json.dumps({"city": city, "temperature": 17, "unit": "c"})


class BookTable(BaseModel):
    """Book a table at a restaurant."""
    people: int = Field(ge=1, le=12)
    time: str = Field(pattern=r"^[0-2][0-9]:[0-5][0-9]$")


def worked_call(city, i):
    return AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": city}, "id": f"call_{i}"}])


# two worked calls show the tiny demo model (not trained on tools) when to call
HISTORY = [HumanMessage("Weather in London?"), worked_call("London", 1),
           HumanMessage("Weather in Rome?"), worked_call("Rome", 2), HumanMessage("Weather in Paris?")]


def test_tool_calling_agent_loop(chat):
    """bind_tools (a LangChain tool, a pydantic model, an OpenAI dict) -> invoke gives an
    AIMessage with tool_calls -> the tool runs -> its ToolMessage goes back -> invoke gives
    the final answer, with no call."""
    dict_tool = {"type": "function", "function": {"name": "get_time", "description": "The time in a city",
                                                  "parameters": {"type": "object",
                                                                 "properties": {"city": {"type": "string"}}}}}
    agent = chat.bind_tools([get_weather, BookTable, dict_tool])
    tools_by_name = {"get_weather": get_weather}
    messages = list(HISTORY)
    for _ in range(3):
        ai = agent.invoke(messages)
        messages.append(ai)
        if not ai.tool_calls:
            break
        assert ai.response_metadata["finish_reason"] == "tool_calls"
        for call in ai.tool_calls:
            assert call["name"] == "get_weather" and call["args"] == {"city": "Paris"}
            messages.append(tools_by_name[call["name"]].invoke(call))      # a ToolMessage
            assert isinstance(messages[-1], ToolMessage) and messages[-1].tool_call_id == call["id"]
    assert [type(m).__name__ for m in messages[5:]] == ["AIMessage", "ToolMessage", "AIMessage"]
    assert not messages[-1].tool_calls and "17" in messages[-1].content


def test_bind_tools_streams_tool_call_chunks(chat):
    """Streamed, the chunks merge (LangChain's + on AIMessageChunk) into the call invoke gives;
    tool_choice 'any' and a tool's name force a call."""
    agent = chat.bind_tools([get_weather])
    merged = None
    for c in agent.stream(HISTORY):
        merged = c if merged is None else merged + c
    assert merged.tool_calls == [{**agent.invoke(HISTORY).tool_calls[0], "id": merged.tool_calls[0]["id"]}]
    for choice in ("any", "get_weather"):
        ai = chat.bind_tools([get_weather, BookTable], tool_choice=choice, max_tokens=96).invoke("Weather in Oslo?")
        assert ai.tool_calls and (choice == "any" or ai.tool_calls[0]["name"] == choice)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output(chat, method):
    """A pydantic model gives its object; a JSON schema a dict that validates; include_raw
    gives the raw message beside the parsed value."""
    jsonschema = pytest.importorskip("jsonschema")
    ask = [HumanMessage("Book a table for two at 19:30.")]
    booked = chat.with_structured_output(BookTable, method=method).invoke(ask)
    assert isinstance(booked, BookTable)
    schema = {"title": "Person", "description": "A person", "type": "object",
              "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0}},
              "required": ["name", "age"], "additionalProperties": False}
    person = chat.with_structured_output(schema, method=method).invoke("Make up a person.")
    jsonschema.validate(person, schema)
    out = chat.with_structured_output(BookTable, method=method, include_raw=True).invoke(ask)
    assert isinstance(out["raw"], AIMessage) and isinstance(out["parsed"], BookTable) and out["parsing_error"] is None


def test_embeddings_adapter(llm):
    from guanaco_rt.integrations.langchain import GuanacoEmbeddings
    emb = GuanacoEmbeddings(llm=llm)
    docs = ["The cat sat on the mat.", "A kitten rested on the rug.", "Quarterly revenue rose."]
    vecs = emb.embed_documents(docs)
    assert len(vecs) == 3 and len(vecs[0]) == llm.model.hparams.n_embd
    assert vecs[0] == llm.model.embed(docs[0])[0].tolist()
    q = emb.embed_query("a cat on a mat")
    sims = [sum(a * b for a, b in zip(q, v)) for v in vecs]
    assert sims.index(max(sims)) in (0, 1)
    assert emb.embed_documents([]) == []
