"""The README's snippets, run as written (the demo model; ports filled in), so that the
README cannot rot. The server's are run against a live server in test_server.py."""
import os
import re
import subprocess
import sys

import pytest

from helpers import free_port

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
HERE = os.path.dirname(os.path.abspath(__file__))


def section(title):
    text = open(README).read()
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def python_block(title):
    return re.search(r"```python\n(.*?)```", section(title), re.S).group(1)


def run(code, timeout=300, env=None):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=HERE,
                       env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_embedding_snippet(smollm2):
    out = run(python_block("Embedding it"))
    assert "n_vocab" in out


def test_openai_api_snippet(smollm2):
    out = run(python_block("The OpenAI-shaped API"))
    assert out.count("The capital of France is Paris.") == 2 and " Paris" in out


def test_batching_snippet(smollm2):
    out = run(python_block("Many conversations at once"))
    reply, occupancy = out.strip().rsplit(" ", 1)
    assert reply == "The capital of France is Paris." and float(occupancy) > 1.5


def test_lora_snippet(smollm2, tmp_path):
    from test_lora import random_weights, write_gguf_adapter

    import guanaco_rt

    with guanaco_rt.Model(smollm2) as m:
        adapter = write_gguf_adapter(tmp_path / "adapter.gguf", random_weights(m, 8, 3, strength=0.05), 16)
    out = run(python_block("LoRA adapters").replace('"adapter.gguf"', repr(adapter)))
    assert "tensors" in out


def test_gguf_snippet_runs_from_any_folder(smollm2):
    # run as written from the tests folder, not the demo model's cache folder
    out = run("import guanaco_rt\n" + python_block("GGUF files") + "\nprint(ids[:3])")
    assert "Paris" in out


@pytest.mark.langchain
def test_langchain_snippet(smollm2):
    pytest.importorskip("langchain_core")
    out = run(python_block("LangChain"))
    assert "Paris" in out


@pytest.mark.ray
def test_ray_serve_snippet(smollm2):
    pytest.importorskip("ray.serve")
    port = free_port()
    code = python_block("Ray Serve").replace('"model.gguf"', repr(smollm2)).replace('"port": 8000', f'"port": {port}')
    code = code.replace("ray.init()", "ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)")
    code += f"""
import httpx
r = httpx.post("http://127.0.0.1:{port}/v1/completions", json={{"prompt": "The capital of France is",
               "max_tokens": 4, "temperature": 0}}, timeout=60)
print(r.json()["choices"][0]["text"])
serve.shutdown()
ray.shutdown()
"""
    assert "Paris" in run(code)


def test_structured_output_snippet(smollm2):
    pytest.importorskip("pydantic")
    lines = run(python_block("Structured output")).splitlines()
    assert lines[0].startswith("City(name=") and lines[0].endswith(" stop")
    assert lines[1] in ("yes", "no")
    assert re.fullmatch(r"[0-9]{1,2}", lines[2])
    assert re.fullmatch(r"[0-9]{1,3} apples", lines[3])
    assert '"city"' in "".join(lines[4:])


def test_tools_snippet(smollm2):
    out = run(python_block("Tools"))
    assert "get_weather {'city': 'Paris'}" in out


def test_embeddings_snippet(smollm2):
    lines = run(python_block("Embeddings")).splitlines()
    assert lines[0].startswith("(3, 576) [")
    sims = [float(x) for x in lines[0].split("[", 1)[1].rstrip("]").split()]
    assert max(sims[:2]) > sims[2]                 # the cat sentences are nearer the cat query
    assert int(lines[1]) >= 3
    assert lines[2].startswith("1 576 {'prompt_tokens'")
