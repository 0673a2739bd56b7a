"""Tool calls through guanaco-rt serve with the official openai client: a round trip (a call,
a role tool answer, a final answer), streamed and not; a named tool_choice; a bad tools
entry is a 400 naming it. The model side is in test_tools.py."""
import json

import pytest
from test_server import KEY, Server
from test_tools import HISTORY, TOOLS, check_calls

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def client(smollm2):
    s = Server(smollm2, "-c", "1024", "-t", "2", "--api-key", KEY)
    yield openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    s.stop()


def as_dicts(calls):
    return [{"id": c.id, "type": c.type, "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in calls]


def test_round_trip_with_the_openai_client(client):
    r = client.chat.completions.create(model="m", messages=HISTORY, tools=TOOLS, temperature=0, max_tokens=48)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    calls = as_dicts(choice.message.tool_calls)
    check_calls(calls)
    assert json.loads(calls[0]["function"]["arguments"])["city"] == "Paris"
    follow = HISTORY + [{"role": "assistant", "content": None, "tool_calls": calls},
                        {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"temperature": 17}'}]
    r = client.chat.completions.create(model="m", messages=follow, tools=TOOLS, temperature=0, max_tokens=32)
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    assert "17" in r.choices[0].message.content


def test_streamed_tool_calls_with_the_openai_client(client):
    """The client's stream helper assembles delta.tool_calls into the same call as a
    non-streamed reply gives."""
    kw = dict(model="m", messages=HISTORY, tools=TOOLS, temperature=0, max_tokens=48, parallel_tool_calls=False)
    whole = as_dicts(client.chat.completions.create(**kw).choices[0].message.tool_calls)
    with client.chat.completions.stream(**kw) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    streamed = as_dicts(final.choices[0].message.tool_calls)
    assert [c["function"] for c in streamed] == [c["function"] for c in whole]
    check_calls(streamed)


def test_named_choice_and_bad_tools_over_http(client):
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                       temperature=0, max_tokens=48)
    (c,) = as_dicts(r.choices[0].message.tool_calls)
    assert c["function"]["name"] == "get_weather"
    check_calls([c])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], tools=[
            TOOLS[0], {"type": "function", "function": {"name": "f", "parameters": {"type": "strin"}}}])
    assert e.value.body["param"] == "tools[1].function.parameters" and "strin" in e.value.body["message"]
