"""Issue 21 (hardening 3), item 14: the command line and the messages a new user reads.
In-process calls of cli.main with argv where that suffices; subprocesses (one on a
pseudo-terminal) where the process is the thing under test."""
import argparse
import inspect
import io
import os
import pty
import select
import struct
import subprocess
import sys
import time

import pytest

import guanaco_rt
from guanaco_rt import cli
from guanaco_rt.errors import FormatError

from helpers import TESTS_DIR, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(guanaco_rt.__file__)))   # the guanaco_rt under test
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def ggjt(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("m"), "q4_0")


class _Parsed(Exception):
    pass


def parsed(argv):
    """The namespace (and parser) cli.main builds for ``argv``, without running the command."""
    real = argparse.ArgumentParser.parse_args
    got = {}

    def capture(self, args=None, namespace=None):
        got["parser"], got["ns"] = self, real(self, args, namespace)
        raise _Parsed

    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(_Parsed):
            cli.main(argv)
    finally:
        argparse.ArgumentParser.parse_args = real
    return got["ns"], got["parser"]


def run_chat(monkeypatch, capsys, argv, typed):
    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    assert cli.main(argv) == 0
    return capsys.readouterr()


# ---- chat speaks the model's role names ---------------------------------------------------
def test_chat_on_a_template_model_uses_its_role_names(smollm2, monkeypatch, capsys):
    out = run_chat(monkeypatch, capsys, ["chat", smollm2, "-n", "3", "-c", "128", "-t", "1", "--temp", "0"],
                   "Hi\n").out
    assert "### Human:" not in out and "### Assistant:" not in out, out
    assert out.startswith("user: ") and "assistant: " in out, out


def test_chat_on_guanacos_format_keeps_its_turn_names(ggjt, monkeypatch, capsys):
    out = run_chat(monkeypatch, capsys, ["chat", ggjt, "-n", "2", "-c", "128", "-t", "1", "--temp", "0"],
                   "Hi\n").out
    assert out.startswith("### Human: ") and "### Assistant: " in out, out


# ---- chat edits lines on a terminal -------------------------------------------------------
def test_chat_edits_lines_with_readline_on_a_terminal(ggjt):
    # "/bogus", cursor left, "X", Enter: with line editing the command read is "/boguXs";
    # without, the escape sequence is part of it
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "guanaco_rt", "chat", ggjt, "-c", "64", "-t", "1"],
                            stdin=follower, stdout=follower, stderr=follower, env={**ENV, "TERM": "xterm"},
                            cwd=TESTS_DIR, close_fds=True)
    os.close(follower)
    seen = b""

    def read_until(marker, timeout=60):
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.2)[0]:
                try:
                    seen += os.read(leader, 4096)
                except OSError:
                    break
        return marker in seen

    try:
        assert read_until(b"### Human: "), seen
        os.write(leader, b"/bogus\x1b[DX\r")
        assert read_until(b"unknown command"), seen
        os.write(leader, b"/quit\r")
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    assert b"'/boguXs'" in seen, seen


# ---- -n is checked where it is parsed -----------------------------------------------------
@pytest.mark.parametrize("value", ["-1", "0", "x"])
def test_chat_n_predict_is_validated(value, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["chat", "model.gguf", "-n", value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "-n/--n-predict" in err and value in err


# ---- --version, -v anywhere, help everywhere ----------------------------------------------
def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"guanaco-rt {guanaco_rt.__version__}"


def test_verbose_before_or_after_the_subcommand():
    assert parsed(["-v", "config"])[0].verbose is True
    assert parsed(["config", "-v"])[0].verbose is True
    assert parsed(["info", "m.gguf", "--verbose"])[0].verbose is True
    assert parsed(["config"])[0].verbose is False


def test_every_argument_has_help():
    _, parser = parsed(["config"])
    missing = []

    def walk(p, where):
        for act in p._actions:
            if isinstance(act, argparse._SubParsersAction):
                for name, sp in act.choices.items():
                    walk(sp, f"{where} {name}")
            elif not act.help or act.help == argparse.SUPPRESS:
                missing.append(f"{where} {'/'.join(act.option_strings) or act.dest}")
    walk(parser, "guanaco-rt")
    assert not missing, missing


# ---- ggjt v3 and GGUF, said everywhere ----------------------------------------------------
def test_docs_and_messages_name_both_formats(tmp_path, capsys):
    assert "GGUF" in guanaco_rt.Model.__doc__.split("\n")[0]
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "GGUF" in capsys.readouterr().out
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00\x01\x02\x03" + b"\0" * 60)
    with pytest.raises(FormatError) as e:
        guanaco_rt.Model(bad)
    assert "ggjt v3" in str(e.value) and "GGUF" in str(e.value) and "0x03020100" in str(e.value)


# ---- ggml types are named ----------------------------------------------------------------
def _gguf_with_tensor_type(ttype):
    name = b"t"
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 0)
    info = struct.pack("<Q", len(name)) + name + struct.pack("<I", 1) + struct.pack("<Q", 256) + \
        struct.pack("<IQ", ttype, 0)
    data = head + info
    return data + b"\0" * (-len(data) % 32) + b"\0" * 1024


@pytest.mark.parametrize("ttype, name", [(39, "MXFP4"), (28, "F64"), (40, "NVFP4")])   # (BF16, the i-quants: read now)
def test_unknown_tensor_types_are_named(ttype, name):
    from guanaco_rt import gguf_file
    with pytest.raises(FormatError) as e:
        gguf_file.parse("t.gguf", _gguf_with_tensor_type(ttype))
    assert f"{name} (ggml type {ttype})" in str(e.value)


def test_the_type_table_has_every_name_gguf_py_knows():
    gguf = pytest.importorskip("gguf")
    from guanaco_rt.ggml_types import GGML_TYPE_NAMES, GGML_TYPES
    for t in gguf.GGMLQuantizationType:
        assert GGML_TYPE_NAMES.get(t.value) == t.name, t
    for t in GGML_TYPES.values():
        assert GGML_TYPE_NAMES[t.id] == t.name


# ---- one set of defaults ------------------------------------------------------------------
def test_session_llm_cli_and_adapter_share_the_sampling_defaults():
    from guanaco_rt.api import LLM
    from guanaco_rt.sampling import SamplingParams
    p = SamplingParams()
    ns, _ = parsed(["generate", "-p", "x"])
    chat_ns, _ = parsed(["chat"])
    for method in (LLM.create_completion, LLM.create_chat_completion):
        d = {k: v.default for k, v in inspect.signature(method).parameters.items()}
        got = dict(temperature=d["temperature"], top_k=d["top_k"], top_p=d["top_p"], min_p=d["min_p"],
                   typical_p=d["typical_p"], repetition_penalty=d["repeat_penalty"])
        want = {k: getattr(p, k) for k in got}
        assert got == want, method.__name__
        for a in (ns, chat_ns):
            cli_vals = dict(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                            typical_p=a.typical_p, repetition_penalty=a.repeat_penalty)
            assert cli_vals == want
    assert (ns.repeat_last_n, ns.frequency_penalty, ns.presence_penalty) == \
        (p.repeat_last_n, p.frequency_penalty, p.presence_penalty)
    from guanaco_rt.sampling import CLI_CONTEXT_POLICY, CONTEXT_POLICY, DEFAULTS
    assert {k: getattr(p, k) for k in DEFAULTS} == DEFAULTS
    assert inspect.signature(guanaco_rt.Session).parameters["context_policy"].default == CONTEXT_POLICY
    assert ns.context_policy == CLI_CONTEXT_POLICY


def test_langchain_adapter_defaults():
    pytest.importorskip("langchain_core")
    from guanaco_rt.integrations.langchain import _GuanacoFields
    from guanaco_rt.sampling import DEFAULTS
    f = _GuanacoFields.model_fields
    assert {k: f[k].default for k in ("temperature", "top_p", "top_k", "min_p")} == \
        {k: DEFAULTS[k] for k in ("temperature", "top_p", "top_k", "min_p")}
    assert f["repeat_penalty"].default == DEFAULTS["repetition_penalty"]


# ---- a missing extra is named, as a checkout installs it -----------------------------------
@pytest.mark.parametrize("module, blocked, extra", [
    ("guanaco_rt.integrations.langchain", "langchain_core", "langchain"),
    ("guanaco_rt.integrations.ray_serve", "ray", "ray"),
])
def test_integrations_name_their_extra(module, blocked, extra):
    code = f"import sys; sys.modules[{blocked!r}] = None\ntry:\n    import {module}\n" \
           f"except ModuleNotFoundError as e:\n    print(type(e).__name__, e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV,
                         cwd=TESTS_DIR)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ModuleNotFoundError") and f"pip install '.[{extra}]'" in out.stdout, out.stdout


def test_serve_hint_names_the_checkout_install():
    code = "import sys; sys.modules['starlette'] = None\nfrom guanaco_rt.cli import main\nsys.exit(main(['serve']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV,
                         cwd=TESTS_DIR)
    assert out.returncode == 2
    assert "pip install '.[server]'" in out.stderr and "guanaco_rt[server]" not in out.stderr, out.stderr
