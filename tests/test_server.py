"""guanaco-rt serve, tested as a client sees it: a real server process on a free localhost
port, the official ``openai`` client, raw HTTP for what that client cannot send.
Run alone with ``pytest -m server``."""
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time

import pytest

from helpers import free_port

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.server
KEY = "sk-test-guanaco"
NO_END = {"0": -100, "1": -100, "2": -100}      # <|endoftext|>, <|im_start|>, <|im_end|>: no early end
FRANCE = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "What is the capital of France?"}]



class Server:
    def __init__(self, model, *args):
        self.port = free_port()
        self.log_path = f"/tmp/guanaco_rt-server-{self.port}.log"
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "guanaco_rt", "serve", model, "--port", str(self.port),
                                      *args], stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=os.path.dirname(__file__))
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{self.logs()}")
            time.sleep(0.2)

    def logs(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def health(self):
        return httpx.get(self.url + "/health", timeout=5).json()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


@pytest.fixture(scope="module")
def server(smollm2):
    s = Server(smollm2, "--parallel", "2", "-c", "320", "-t", "1", "--api-key", KEY)
    yield s
    s.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def test_models_and_health(server, client):
    (m,) = client.models.list().data
    assert m.id == "SmolLM2-135M-Instruct.Q4_1.gguf" and m.owned_by == "guanaco_rt"
    h = server.health()
    assert h["status"] == "ok" and h["sessions"] == 2
    assert h["shared_prefix_tokens"] >= 0 and h["cold_share_waits"] >= 0 and h["waiting"] == 0
    # --parallel 2: the two sessions share passes, and /health says how they went
    assert h["batch"]["max_seqs"] == 2 and h["batch"]["members"] == 0 and h["batch"]["queued"] == 0
    client.chat.completions.create(model="any", messages=FRANCE, temperature=0, max_tokens=4)
    b = server.health()["batch"]
    assert b["passes"] >= 4 and b["rows"] > b["passes"] and b["occupancy"] >= 1 and b["tokens_per_s"] > 0


def test_chat_non_streaming(client):
    r = client.chat.completions.create(model="any", messages=FRANCE, temperature=0, max_tokens=24)
    assert r.choices[0].message.content == "The capital of France is Paris."
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens > 0


def test_chat_streaming(client):
    chunks = list(client.chat.completions.create(model="any", messages=FRANCE, temperature=0, max_tokens=24,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The capital of France is Paris."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens


def test_completion_with_logprobs(client):
    r = client.completions.create(model="any", prompt="The capital of France is", max_tokens=4, temperature=0,
                                  logprobs=2)
    assert r.choices[0].text.startswith(" Paris")
    assert "".join(r.choices[0].logprobs.tokens) == r.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="any", prompt="The capital of France is", max_tokens=4, temperature=0, stream=True))
    assert streamed == r.choices[0].text


def test_eight_concurrent_clients(server, client):
    # 2 sessions serve 8 clients; the rest wait in line; greedy answers equal the serial one
    want = client.completions.create(model="any", prompt="Once upon a time", max_tokens=16, temperature=0)
    want = want.choices[0].text

    def one(i):
        c = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        if i % 2:
            return "".join(ch.choices[0].text for ch in c.completions.create(
                model="any", prompt="Once upon a time", max_tokens=16, temperature=0, stream=True))
        return c.completions.create(model="any", prompt="Once upon a time", max_tokens=16,
                                    temperature=0).choices[0].text

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        got = list(ex.map(one, range(8)))
    assert got == [want] * 8
    assert server.health()["busy"] == 0


def test_disconnect_mid_stream_cancels_the_generation(server):
    body = {"model": "any", "prompt": "Tell me a long story.", "max_tokens": 100000, "stream": True,
            "temperature": 1.0, "logit_bias": NO_END}
    with httpx.Client(timeout=30) as h:
        with h.stream("POST", server.url + "/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(x.startswith("data: {") for x in got)
            assert server.health()["busy"] == 1
        # leaving the block closed the connection
    deadline = time.monotonic() + 10
    while server.health()["busy"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.health()["busy"] == 0
    ms = [float(x) for x in re.findall(r"client gone: generation \S+ ended ([\d.]+) ms after", server.logs())]
    assert ms and ms[-1] < 1000


def test_disconnect_while_waiting_for_a_non_streamed_reply(server):
    body = {"model": "any", "prompt": "Tell me a long story.", "max_tokens": 100000, "temperature": 1.0,
            "logit_bias": NO_END}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                   timeout=0.5)
    deadline = time.monotonic() + 10
    while server.health()["busy"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.health()["busy"] == 0
    assert re.search(r"client gone: /v1/completions ended [\d.]+ ms after", server.logs())


def test_a_client_gone_while_its_request_waits_for_a_session_ends_the_request_at_once(server):
    # both sessions (--parallel 2) stream long replies; a third request waits in line, and its
    # client leaves: the request ends then, not once a session frees and it has generated
    auth = {"Authorization": f"Bearer {KEY}"}
    long = {"model": "any", "prompt": "Tell me a long story.", "max_tokens": 100000, "stream": True,
            "temperature": 1.0, "logit_bias": NO_END}
    gone = r"client gone: /v1/completions ended ([\d.]+) ms after"
    before = len(re.findall(gone, server.logs()))
    url = server.url + "/v1/completions"
    with httpx.Client(timeout=30) as h, h.stream("POST", url, json=long, headers=auth) as a, \
            h.stream("POST", url, json=long, headers=auth) as b:
        lines = a.iter_lines(), b.iter_lines()          # held: a dropped iterator closes its response
        assert all(next(x).startswith("data: {") for x in lines) and server.health()["busy"] == 2
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/completions", headers=auth, timeout=0.5,
                       json={"model": "any", "prompt": "Name a colour.", "max_tokens": 50, "logit_bias": NO_END})
        deadline = time.monotonic() + 5
        while len(re.findall(gone, server.logs())) == before and time.monotonic() < deadline:
            time.sleep(0.02)
        ms = [float(x) for x in re.findall(gone, server.logs())[before:]]
        assert ms and ms[-1] < 1000 and server.health()["busy"] == 2 and server.health()["waiting"] == 0
        assert re.search(r"/v1/completions: \d+ tokens in, 0 out, finish cancelled", server.logs())


def test_malformed_json_and_bad_arguments_are_400_with_openai_errors(server, client):
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body, param in [(b"{not json", None), (b"[1, 2]", None), (b'{"prompt": "x", "bogus": 1}', "bogus"),
                        (b'{"prompt": "x", "temperature": "hot"}', "temperature"),
                        (b'{"prompt": "x", "max_tokens": -5}', "max_tokens"), (b"\xff\xfe", None)]:
        r = httpx.post(server.url + "/v1/completions", content=body, headers=auth)
        assert r.status_code == 400, body
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["message"] and err["param"] == param
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="any", messages=[{"role": "wizard", "content": "x"}])
    assert e.value.status_code == 400
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="any", prompt="word " * 400)
    assert e.value.code == "context_length_exceeded"
    r = httpx.get(server.url + "/v1/nothing", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert "Traceback" not in server.logs()


def test_huge_max_tokens_stops_at_the_context(client):
    r = client.completions.create(model="any", prompt="Once", max_tokens=10**9, temperature=0, logit_bias=NO_END)
    assert r.choices[0].finish_reason == "length" and r.usage.total_tokens == 320


def test_wrong_or_missing_key_is_401(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="any", messages=FRANCE)
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/health").status_code == 200      # health needs no key


def test_requests_over_the_queue_limit_get_429(smollm2):
    s = Server(smollm2, "--parallel", "1", "--max-queue", "0", "-c", "256", "-t", "1")
    try:
        body = {"prompt": "Tell me a long story.", "max_tokens": 200, "temperature": 1.0, "stream": True,
                "logit_bias": NO_END}
        with httpx.Client(timeout=30) as h, h.stream("POST", s.url + "/v1/completions", json=body) as r:
            lines = r.iter_lines()             # kept: dropping it would close the stream
            next(lines)
            second = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
            assert second.status_code == 429 and second.json()["error"]["code"] == "server_busy"
    finally:
        s.stop()


def test_readme_server_snippets(server):
    # the README's curl line and openai snippet, run as written (port and key filled in)
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    section = readme.split("## The server", 1)[1].split("\n## ", 1)[0]
    curl = re.search(r"```bash\n(curl .*?)```", section, re.S).group(1)
    curl = curl.replace("localhost:8000", f"127.0.0.1:{server.port}").replace("$GUANACO_RT_API_KEY", KEY)
    out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120)
    assert "Paris" in json.loads(out.stdout)["choices"][0]["message"]["content"]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("localhost:8000", f"127.0.0.1:{server.port}")
    env = {**os.environ, "GUANACO_RT_API_KEY": KEY}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


def test_structured_output_with_the_openai_client(server, client):
    """response_format through the official client: parse() with a pydantic model returns
    the object; a json_schema stream's text validates; a schema the engine cannot
    compile is a 400 naming response_format."""
    pydantic = pytest.importorskip("pydantic")
    jsonschema = pytest.importorskip("jsonschema")

    class Capital(pydantic.BaseModel):
        country: str
        capital: str

    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    r = parse(model="m", messages=FRANCE, response_format=Capital, temperature=0, max_tokens=80)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "stop" and isinstance(msg.parsed, Capital)
    assert msg.parsed == Capital.model_validate_json(msg.content)
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 30},
                                               "sure": {"type": "boolean"}},
              "required": ["answer", "sure"], "additionalProperties": False}
    stream = client.chat.completions.create(
        model="m", messages=FRANCE, stream=True, temperature=0.7, seed=3, max_tokens=80,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), schema)
    r = client.chat.completions.create(model="m", messages=FRANCE, response_format={"type": "json_object"},
                                       temperature=0, max_tokens=80)
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=FRANCE, response_format={
            "type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "strin"}, "strict": True}})
    assert e.value.body["param"] == "response_format" and "strin" in e.value.body["message"]
    r = client.completions.create(model="m", prompt="The capital of France is", max_tokens=5,
                                  extra_body={"choices": [" Paris", " Lyon"]})
    assert r.choices[0].text in (" Paris", " Lyon") and r.choices[0].finish_reason == "stop"


def test_embeddings_endpoint(server, client):
    r = client.embeddings.create(model="m", input=["The cat sat on the mat.", "Paris is in France."])
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == 576
    assert abs(sum(x * x for x in r.data[0].embedding) - 1) < 1e-4 and r.usage.prompt_tokens > 4
    b64 = httpx.post(server.url + "/v1/embeddings", headers={"Authorization": f"Bearer {KEY}"},
                     json={"input": "The cat sat on the mat.", "encoding_format": "base64"}, timeout=60).json()
    import base64

    import numpy as np
    v = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(v, r.data[0].embedding, rtol=1e-6)
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="m", input="x", dimensions=64)
    assert e.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="m", input=[""])
    assert e.value.body["param"] == "input"
