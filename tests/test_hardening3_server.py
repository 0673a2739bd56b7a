"""Issue 21 (hardening 3), items 5 and 6: the server judges a request before reading its
body, reads at most MAX_BODY of it, refuses deep JSON with a 400, and will not listen
beyond loopback without an API key. Live server processes, raw sockets where a client
library would hide what is sent. Run alone with ``pytest -m server``."""
import socket
import subprocess
import sys
import threading
import time

import pytest

import guanaco_rt

from helpers import child, free_port

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
from test_server import KEY, NO_END, Server  # noqa: E402

pytestmark = pytest.mark.server
MB = 1 << 20


def _hwm_mb(pid):
    """The peak resident memory (VmHWM) of process ``pid``, in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def _rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc status")


def _response(sock, timeout=15):
    """Read an HTTP response until the server closes or a full JSON body is in: (status, text)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            break
        if not chunk:
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep and body.rstrip().endswith(b"}"):
            break
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else None
    return status, data.decode("latin-1")


def _head(path, length=None, chunked=False, key=KEY, port=None):
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture(scope="module")
def server(smollm2):
    s = Server(smollm2, "--parallel", "1", "--max-queue", "0", "-c", "256", "-t", "1", "--api-key", KEY)
    yield s
    s.stop()


def test_declared_oversize_body_is_413_before_any_of_it_is_read(server):
    # the headers promise 300 MB; not one byte of it is sent, and the answer comes anyway
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(_head("/v1/completions", length=300 * MB, port=server.port))
        status, text = _response(sock)
    assert status == 413, text
    assert "request_too_large" in text and str(8 * MB) in text


def test_chunked_oversize_body_stops_at_the_limit_with_bounded_memory(server):
    # 300 MB without a Content-Length: the server reads up to its limit, answers 413 and
    # drops the rest; its peak memory must not grow by anything like the body
    base = _rss_mb(server.proc.pid)
    assert _hwm_mb(server.proc.pid) < base + 100        # no earlier test left a peak to hide behind
    piece = b'{"prompt": "' + b"x" * (MB - 16)
    sent = [0]

    def send(sock):
        try:
            sock.sendall(_head("/v1/completions", chunked=True, port=server.port))
            for _ in range(300):
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent[0] += len(piece)
            sock.sendall(b"0\r\n\r\n")
        except OSError:                     # the server closed the connection: expected
            pass

    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        t = threading.Thread(target=send, args=(sock,), daemon=True)
        t.start()
        status, text = _response(sock, timeout=60)
        t.join(60)
    assert status == 413, text
    grew = _hwm_mb(server.proc.pid) - base
    assert grew < 200, f"the server's peak RSS grew by {grew:.0f} MB on a {sent[0] >> 20} MB upload"
    # and it still serves
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200


def test_admission_and_key_are_checked_before_the_body(server):
    port = server.port
    # no key: 401 at once, though a body is promised and never sent
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head("/v1/completions", length=1000, key=None, port=port))
        status, text = _response(sock)
    assert status == 401, text
    # the one session busy and no queue: 429 at once, the promised body never sent
    body = {"prompt": "Tell me a long story.", "max_tokens": 200, "temperature": 1.0, "stream": True,
            "logit_bias": NO_END}
    with httpx.Client(timeout=60) as h, h.stream("POST", server.url + "/v1/completions", json=body,
                                                  headers={"Authorization": f"Bearer {KEY}"}) as r:
        lines = r.iter_lines()
        next(lines)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_head("/v1/completions", length=1000, port=port))
            status, text = _response(sock)
        assert status == 429, text
        assert "server_busy" in text


def test_a_client_gone_mid_upload_frees_its_slot_quietly(server):
    # half a body, then the connection closes: no traceback, and the one slot (no queue) is free again
    deadline = time.monotonic() + 30
    while server.health()["busy"] and time.monotonic() < deadline:     # an earlier test's stream ending
        time.sleep(0.05)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(_head("/v1/completions", length=1000, port=server.port) + b'{"prompt": "x"')
        time.sleep(0.3)
    time.sleep(0.5)
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200, r.text
    logs = server.logs()
    assert "client gone during the upload" in logs, logs
    assert "Traceback" not in logs, logs


@pytest.mark.parametrize("body", [b"[" * 200_000 + b"]" * 200_000,
                                  b'{"prompt": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001,
                                  b'{"prompt": "x", "logit_bias": ' + b"[" * 100 + b"]" * 100 + b"}"])
def test_deeply_nested_json_is_400(server, body):
    r = httpx.post(server.url + "/v1/completions", content=body,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "deep" in err["message"]
    assert "RecursionError" not in server.logs()


def test_brackets_inside_strings_do_not_count_as_nesting(server):
    prompt = "[" * 60 + "{" * 60 + '\\"['       # 121 brackets: over the depth limit were they counted
    r = httpx.post(server.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 1},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200, r.text


# ---- item 6: a public bind needs a key ----------------------------------------------------
FAKE_RESOLVER = """
import socket, sys
real = socket.getaddrinfo
def fake(host, *a, **kw):
    if host == "llm.example.test":          # a name that resolves to a LAN address
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 0))]
    return real(host, *a, **kw)
socket.getaddrinfo = fake
from guanaco_rt.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "llm.example.test"])
def test_public_bind_without_a_key_refuses_to_start(host, monkeypatch):
    monkeypatch.delenv("GUANACO_RT_API_KEY", raising=False)
    # refused before the model loads: no model argument is needed, nothing listens
    out = subprocess.run([sys.executable, "-c", FAKE_RESOLVER, "serve", "--host", host, "--port", str(free_port())],
                         capture_output=True, text=True, timeout=120, **child())
    assert out.returncode == 2, out.stderr
    assert f"--host {host}" in out.stderr and "--api-key" in out.stderr and "--insecure-no-key" in out.stderr
    assert "Traceback" not in out.stderr


def test_check_bind_rules(monkeypatch):
    from guanaco_rt.errors import GuanacoError
    from guanaco_rt.server import check_bind
    for host in ("127.0.0.1", "localhost", "::1", "127.1.2.3"):
        check_bind(host, None)                      # loopback: no key needed
    for host in ("0.0.0.0", "::", "192.168.1.10"):
        check_bind(host, "sk-key")                  # a key: any address
        with pytest.raises(GuanacoError, match="no API key"):
            check_bind(host, None)
        check_bind(host, None, insecure_no_key=True)
    with pytest.raises(GuanacoError, match="does not resolve"):
        check_bind("no-such-host.invalid", None)


def test_insecure_no_key_starts_with_a_warning(smollm2, monkeypatch):
    monkeypatch.delenv("GUANACO_RT_API_KEY", raising=False)
    s = Server(smollm2, "--host", "0.0.0.0", "--insecure-no-key", "-c", "64", "-t", "1")
    try:
        assert httpx.post(s.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1},
                          timeout=60).status_code == 200
        assert "WITHOUT an API key" in s.logs()
    finally:
        s.stop()


def _asgi_post(app, path, body, send):
    """One POST through the ASGI app in this process, with the given ``send``."""
    import asyncio
    import json as _json
    data = _json.dumps(body).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(data)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    sent = []

    async def receive():
        if not sent:
            sent.append(True)
            return {"type": "http.request", "body": data, "more_body": False}
        await asyncio.sleep(3600)

    async def main():
        try:
            await app(scope, receive, send)
        except OSError:
            pass
    asyncio.run(main())


def test_a_stream_whose_client_left_before_its_first_byte_frees_its_slot(smollm2):
    # the one session and no queue: a streamed reply that never starts (send fails at once)
    # must give back its admission slot and its session, or every later request is a 429
    from guanaco_rt.server import create_app
    llm = guanaco_rt.LLM(smollm2, n_ctx=128, n_sessions=1, n_threads=1)
    app = create_app(llm, max_queue=0)
    body = {"prompt": "Hi", "max_tokens": 4, "stream": True}

    async def gone(message):
        raise OSError("the client is gone")
    _asgi_post(app, "/v1/completions", body, gone)
    statuses = []

    async def keep(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
    for _ in range(2):
        _asgi_post(app, "/v1/completions", dict(body, stream=False), keep)
    assert statuses == [200, 200], statuses
    assert llm.pool.busy == 0
    llm.close()
