"""An OpenAI-compatible HTTP server over guanaco_rt.api.LLM (Starlette + uvicorn, the
``[server]`` extra): ``guanaco-rt serve MODEL``.

Owns: the routes (/v1/models, /v1/completions, /v1/chat/completions with SSE streaming,
/v1/embeddings, /health), the API key, admission (``n_sessions`` generations at once on one shared
Model, up to ``max_queue`` more waiting in line, 429 beyond), OpenAI-style error JSON
with the right 4xx status, and cancelling a generation the moment its client goes.
A request is judged before its body is read (the key, then admission), and the body is
read in chunks up to ``MAX_BODY`` (413 beyond, or at once for a larger Content-Length),
so a large or slow upload costs at most ``MAX_BODY`` of memory per admitted request.

Each generation runs on a thread of its own that holds a pooled Session; the event
loop only relays chunks. A client that disconnects -- mid-stream or while waiting for
a non-streamed answer -- cancels its generation within one token.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from .api import LLM, CancelHandle
from .errors import GuanacoError, InvalidRequestError
from .results import DONE, relay

log = logging.getLogger("guanaco_rt.server")

DRY_ARGS = ("dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers")
COMPLETION_ARGS = {"prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "typical_p", "stop", "seed",
                   "frequency_penalty", "presence_penalty", "repeat_penalty", "logit_bias", "logprobs", "echo", "n",
                   "stream", "stream_options", "json_schema", "grammar", "regex", "choices", *DRY_ARGS}
CHAT_ARGS = {"messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p",
             "typical_p", "stop", "seed", "frequency_penalty", "presence_penalty", "repeat_penalty", "logit_bias",
             "logprobs", "top_logprobs", "n", "stream", "stream_options", "chat_template_kwargs", "response_format",
             "json_schema", "grammar", "regex", "choices", "tools", "tool_choice", "parallel_tool_calls", *DRY_ARGS}
EMBEDDING_ARGS = {"input", "encoding_format", "dimensions"}
# accepted and without effect here
IGNORED_ARGS = {"model", "user", "store", "metadata", "service_tier", "best_of"}
MAX_BODY = 8 << 20
# Arrays and objects nested deeper than this are refused before json.loads sees them (whose
# own recursion ends at the interpreter's limit); a request needs 4 or 5 levels.
MAX_JSON_DEPTH = 64


def error(status, message, type_="invalid_request_error", param=None, code=None):
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status)


class _Admission:
    """At most ``limit`` requests in flight or waiting; the rest get 429 at once."""

    def __init__(self, limit):
        self.limit, self.n = limit, 0
        self._lock = threading.Lock()

    def enter(self):
        with self._lock:
            if self.n >= self.limit:
                return False
            self.n += 1
            return True

    def leave(self):
        with self._lock:
            self.n -= 1


def _in_thread(fn):
    """Run ``fn`` on a thread of its own -> awaitable of its result (its exception)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def done(ok, v):
        if not fut.done():
            (fut.set_result if ok else fut.set_exception)(v)

    def work():
        try:
            r = fn()
        except BaseException as e:           # handed to the awaiting request
            loop.call_soon_threadsafe(done, False, e)
        else:
            loop.call_soon_threadsafe(done, True, r)

    threading.Thread(target=work, name="guanaco_rt-request", daemon=True).start()
    return fut


class _RelayResponse(StreamingResponse):
    """A streamed reply that owns an admission slot. Its body (_sse) gives the slot back when
    it ends, however it ends; but a body that never starts (the client left before the
    reply's first byte, so ``send`` failed at once) runs no code at all: then ``unstarted()``
    gives back the slot and the stream."""

    def __init__(self, body, started, unstarted, **kw):
        super().__init__(body, **kw)
        self._started, self._unstarted = started, unstarted

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._started():
                self._unstarted()


def _closing(response):
    response.headers["Connection"] = "close"
    return response


class _BodyTooLarge(InvalidRequestError):
    """The request body is over MAX_BODY (HTTP 413)."""


async def _read_body(request):
    """The body, read chunk by chunk and refused (_BodyTooLarge) the moment it passes
    MAX_BODY; a declared Content-Length over the limit is refused before any of it is read."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise InvalidRequestError(f"Content-Length {declared[:40]!r} is not a number") from None
        if n > MAX_BODY:
            raise _BodyTooLarge(f"the request body of {n} bytes is over the limit of {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise _BodyTooLarge(f"the request body is over the limit of {MAX_BODY} bytes "
                                f"(stopped reading at {len(body)})")
    return bytes(body)


def _json_depth(body, chunk=1 << 20):
    """The deepest nesting of arrays and objects in ``body``, brackets inside strings not
    counted. One linear pass, ``chunk`` bytes at a time (a regular expression over the
    strings can take quadratic time on unclosed ones). For text that is not JSON, some
    number (json.loads refuses such text anyway)."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return 0                             # the common case, without a scan
    deepest = depth = 0
    inside = 0                               # 1: the chunk starts inside a string
    run = 0                                  # backslashes just before the chunk
    for at in range(0, len(body), chunk):
        c = np.frombuffer(body, np.uint8, count=min(chunk, len(body) - at), offset=at)
        idx = np.arange(len(c), dtype=np.int32)
        last_other = np.maximum.accumulate(np.where(c == 0x5C, -1, idx))
        runs = idx - last_other + np.where(last_other < 0, run, 0)    # backslashes ending at i
        before = np.concatenate(([run], runs[:-1]))
        quote = (c == 0x22) & (before % 2 == 0)                      # a quote no backslash escapes
        in_string = (np.cumsum(quote, dtype=np.int32) + inside) % 2 == 1
        opens = ((c == 0x5B) | (c == 0x7B)) & ~in_string             # [ {
        closes = ((c == 0x5D) | (c == 0x7D)) & ~in_string            # ] }
        levels = np.cumsum(opens.astype(np.int8) - closes, dtype=np.int32) + depth
        deepest = max(deepest, int(levels.max()))
        if deepest > MAX_JSON_DEPTH:
            break
        depth, inside, run = int(levels[-1]), (inside + int(quote.sum())) % 2, int(runs[-1])
    return deepest


def _parse_json(body):
    """Request bytes -> a JSON value; InvalidRequestError for anything else (bad UTF-8,
    bad JSON, nesting deeper than MAX_JSON_DEPTH)."""
    depth = _json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise InvalidRequestError(f"the body nests arrays/objects deeper than the limit of {MAX_JSON_DEPTH}")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequestError(f"the body is not valid JSON: {e}") from None
    except RecursionError:                   # not reached after the depth check; kept as a backstop
        raise InvalidRequestError(f"the body nests too deeply (limit {MAX_JSON_DEPTH})") from None


async def _wait_disconnect(request):
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


def create_app(llm: LLM, api_key: str | None = None, max_queue: int = 64, server_id: str | None = None):
    """The ASGI app serving ``llm``. ``api_key``: required as ``Authorization: Bearer KEY``
    on /v1/ routes when set. ``max_queue``: requests that may wait for a free session.
    ``server_id``: sent as the ``X-Guanaco-Server`` header of every response (which
    replica answered, behind a load balancer)."""
    admission = _Admission(llm.pool.size + max_queue)

    def authorized(request):
        if not api_key:
            return True
        got = request.headers.get("authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {api_key}".encode())

    async def read_json(request, allowed):
        req = _parse_json(await _read_body(request))
        if not isinstance(req, dict):
            raise InvalidRequestError("the body must be a JSON object")
        unknown = sorted(set(req) - allowed - IGNORED_ARGS)
        if unknown:
            raise InvalidRequestError(f"unrecognized or unsupported request argument: {unknown[0]}", unknown[0])
        if req.get("best_of", 1) not in (None, 1):
            raise InvalidRequestError("best_of > 1 is not supported", "best_of")
        return {k: v for k, v in req.items() if k in allowed}

    async def health(request):
        body = {"status": "ok", "model": llm.model_name, "sessions": llm.pool.size, "busy": llm.pool.busy,
                "waiting": llm.pool.waiting, "shared_prefix_tokens": llm.pool.shared_tokens,
                "cold_share_waits": llm.pool.cold_waits}
        if llm.batcher is not None:
            body["batch"] = llm.batch_stats()
        return JSONResponse(body)

    async def models(request):
        if not authorized(request):
            return error(401, "invalid API key", code="invalid_api_key")
        return JSONResponse(llm.models())

    def endpoint(method, allowed):
        async def handle(request: Request):
            # The key, then admission, then the body: a refused request costs no upload. A
            # refusal with the body unread closes the connection, else uvicorn would read on
            # (and drop) the rest of it to reach the next request.
            if not authorized(request):
                return _closing(error(401, "invalid API key: pass it as 'Authorization: Bearer KEY'",
                                      code="invalid_api_key"))
            if not admission.enter():
                return _closing(error(429, f"the server is busy: {admission.limit} requests in flight or waiting",
                                      type_="server_busy", code="server_busy"))
            streaming = False                   # True once the SSE relay owns the admission slot
            try:
                try:
                    args = await read_json(request, allowed)
                except _BodyTooLarge as e:
                    return _closing(error(413, str(e), code="request_too_large"))
                except ClientDisconnect:            # gone mid-upload: nobody reads an answer
                    log.info("client gone during the upload: %s", request.url.path)
                    return _closing(error(400, "the client disconnected during the upload"))
                except InvalidRequestError as e:
                    return error(400, str(e), param=e.param, code=e.code)
                response = await run(request, method, args)
                streaming = isinstance(response, StreamingResponse)
                return response
            finally:
                if not streaming:
                    admission.leave()

        return handle

    async def run(request, method, args):
        t0 = time.perf_counter()
        stream = bool(args.get("stream", False))
        handle = CancelHandle()
        if not stream:
            args["cancel"] = handle
        fut = _in_thread(lambda: method(**args))
        if not stream:
            # a client that leaves while its reply is generated cancels the generation
            watcher = asyncio.ensure_future(_wait_disconnect(request))
            await asyncio.wait({fut, watcher}, return_when=asyncio.FIRST_COMPLETED)
            watcher.cancel()
            if not fut.done():
                t_gone = time.perf_counter()
                handle.cancel()
                await asyncio.wait({fut})
                log.info("client gone: %s ended %.1f ms after the disconnect", request.url.path,
                         (time.perf_counter() - t_gone) * 1e3)
        try:
            result = await fut
        except (InvalidRequestError, ValueError, TypeError) as e:
            return error(400, str(e), param=getattr(e, "param", None), code=getattr(e, "code", None))
        except Exception as e:                      # a failure of ours: logged, and a 500 without a traceback
            log.error("request failed: %s: %s", type(e).__name__, e)
            return error(500, f"{type(e).__name__}: {e}", type_="server_error")
        if stream:
            started = []

            def unstarted():
                result.close()
                admission.leave()
            return _RelayResponse(_sse(request, result, t0, started), lambda: bool(started), unstarted,
                                  media_type="text/event-stream",
                                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        choices = result.get("choices", [])
        _log_done(request, result.get("usage"), choices[0].get("finish_reason") if choices else None, t0)
        return JSONResponse(result)

    async def _sse(request, chunks, t0, started):
        started.append(True)                 # from here on, this body's finally gives the slot back
        queue, thread = relay(chunks, "guanaco_rt-stream")     # an exception is sent as an error event
        ended = False
        try:
            while True:
                item = await queue.get()
                if item is DONE:
                    ended = True
                    yield "data: [DONE]\n\n"
                    break
                if isinstance(item, BaseException):
                    ended = True
                    log.error("stream failed: %s", item)
                    body = {"error": {"message": str(item), "type": "server_error", "param": None, "code": None}}
                    yield f"data: {json.dumps(body)}\n\n"
                    break
                yield f"data: {json.dumps(item, ensure_ascii=False)}\n\n"
        finally:
            # no await in here: a cancelled response task would be cancelled again at it
            if not ended:
                chunks.cancel()              # the client left: stop generating now
                t_gone = time.perf_counter()

                def reap():
                    thread.join()
                    log.info("client gone: generation %s ended %.1f ms after the disconnect", chunks.id,
                             (time.perf_counter() - t_gone) * 1e3)
                    admission.leave()
                threading.Thread(target=reap, name="guanaco_rt-reap", daemon=True).start()
            else:
                admission.leave()
                _log_done(request, chunks.usage, chunks.finish_reason, t0)

    def _log_done(request, usage, finish, t0):
        log.info("%s %s: %s tokens in, %s out, finish %s, %.0f ms", request.method, request.url.path,
                 (usage or {}).get("prompt_tokens"), (usage or {}).get("completion_tokens"), finish,
                 (time.perf_counter() - t0) * 1e3)

    completions = endpoint(llm.create_completion, COMPLETION_ARGS)
    chat = endpoint(llm.create_chat_completion, CHAT_ARGS)
    embeddings = endpoint(llm.create_embedding, EMBEDDING_ARGS)

    async def not_found(request, exc):
        return error(404, f"no route {request.url.path}", code="not_found")

    async def bad_method(request, exc):
        return error(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")

    app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ], exception_handlers={404: not_found, 405: bad_method})
    app.state.llm = llm
    return app if server_id is None else _with_header(app, b"x-guanaco-server", server_id.encode())


def _non_loopback(host):
    """The addresses ``host`` stands for that are not loopback ([] when it is loopback only;
    a name that does not resolve counts as not loopback)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        return [f"{host} (does not resolve: {e})"]
    out = []
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if not addr.is_loopback:
            out.append(str(addr))
    return sorted(set(out))


def check_bind(host: str, api_key: str | None, insecure_no_key: bool = False, warn: bool = True) -> None:
    """Refuse (GuanacoError) to listen beyond loopback without an API key, unless
    ``insecure_no_key``; then log a warning (``warn``). Any address other than 127.0.0.0/8 and ::1
    (0.0.0.0, ::, a LAN address, a name that resolves to one) is public here."""
    if api_key:
        return
    public = _non_loopback(host)
    if not public:
        return
    if not insecure_no_key:
        raise GuanacoError(f"--host {host} listens beyond this machine ({', '.join(public)}) and no API key is set: "
                           "pass --api-key KEY (or set GUANACO_RT_API_KEY), bind 127.0.0.1, or pass "
                           "--insecure-no-key to serve anyone who can reach the port")
    if warn:
        log.warning("serving on %s (%s) WITHOUT an API key (--insecure-no-key): anyone who can reach the port can "
                    "use it", host, ", ".join(public))


def _with_header(app, name, value):
    async def wrapped(scope, receive, send):
        async def send_with(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (name, value)]}
            await send(message)
        await app(scope, receive, send_with)
    return wrapped


def serve(llm: LLM, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, max_queue: int = 64,
          log_level: str = "info", insecure_no_key: bool = False) -> None:
    """Run the server in this process until interrupted (uvicorn). A ``host`` beyond
    loopback needs ``api_key``, or ``insecure_no_key`` (check_bind)."""
    import uvicorn
    check_bind(host, api_key, insecure_no_key)
    uvicorn.run(create_app(llm, api_key, max_queue), host=host, port=port, log_level=log_level)
