"""The Ray Serve deployment (guanaco_rt.integrations.ray_serve) on a local one-node Ray
cluster: 2 replicas behind Serve's proxy, driven with the openai client. Run alone with
``pytest -m ray``."""
import collections
import os
import time

import pytest

from helpers import free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.ray
NO_END = {"0": -100, "1": -100, "2": -100}



@pytest.fixture(scope="module")
def cluster(smollm2, tmp_path_factory):
    from guanaco_rt.integrations.ray_serve import app
    port = free_port()
    # Ray's workers start in the driver's directory: from a checkout's root they would import
    # its unbuilt guanaco_rt/ instead of the installed package
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"GUANACO_RT_THREADS": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app(smollm2, num_replicas=2, n_ctx=256, n_threads=1, ray_actor_options={"num_cpus": 0.5}),
                  route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        os.chdir(cwd)


def replica_of(resp):
    return resp.headers["x-guanaco-server"]


def test_requests_reach_both_replicas(cluster):
    client = openai.OpenAI(base_url=cluster + "/v1", api_key="none", max_retries=0, timeout=60)
    split = collections.Counter()
    for _ in range(12):
        raw = client.chat.completions.with_raw_response.create(
            model="any", temperature=0, max_tokens=24,
            messages=[{"role": "system", "content": "You are a helpful assistant."},
                      {"role": "user", "content": "What is the capital of France?"}])
        split[replica_of(raw)] += 1
        assert raw.parse().choices[0].message.content == "The capital of France is Paris."
    print(f"request split across replicas: {dict(split)}")
    assert len(split) == 2


def _wait_two_replicas(timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = serve.status().applications["default"]
        dep = next(iter(st.deployments.values()))
        if st.status == "RUNNING" and dep.replica_states.get("RUNNING", 0) == 2:
            return
        time.sleep(0.5)
    raise AssertionError(f"the deployment did not recover: {serve.status()}")


def test_a_killed_replica_gives_its_client_an_error_and_is_replaced(cluster):
    body = {"prompt": "Tell me a long story.", "max_tokens": 100000, "temperature": 1.0, "stream": True,
            "logit_bias": NO_END}
    t0 = time.monotonic()
    with httpx.Client(timeout=httpx.Timeout(30.0)) as h:
        with h.stream("POST", cluster + "/v1/completions", json=body) as r:
            victim = replica_of(r)
            lines = r.iter_lines()
            for _ in range(4):
                assert next(lines) is not None
            name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                        if a["name"].endswith("#" + victim))
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
            t_kill = time.monotonic()
            ended_cleanly = False
            try:
                for line in lines:
                    if line == "data: [DONE]":
                        ended_cleanly = True
            except httpx.HTTPError:
                pass                                   # the connection broke: a clean error
    waited = time.monotonic() - t_kill
    print(f"client of the killed replica released {waited:.2f} s after the kill")
    assert not ended_cleanly and waited < 30 and time.monotonic() - t0 < 60
    _wait_two_replicas()
    seen = set()
    deadline = time.monotonic() + 30
    while len(seen) < 2 and time.monotonic() < deadline:
        r = httpx.post(cluster + "/v1/completions", json={"prompt": "Hello", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200
        seen.add(replica_of(r))
    assert victim not in seen and len(seen) == 2
