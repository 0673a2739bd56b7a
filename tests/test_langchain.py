"""The LangChain adapters, driven through langchain-core itself (invoke, batch, stream,
stop, callbacks, async). Run alone with ``pytest -m langchain``."""
import asyncio

import pytest

pytest.importorskip("langchain_core")
from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402

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
    from langchain_core.messages import ToolMessage
    with pytest.raises(ValueError, match="tool"):
        ChatGuanaco(llm=llm).invoke([ToolMessage("x", tool_call_id="1")])
