"""An OpenAI-compatible HTTP server over guanaco_rt.api.LLM (Starlette + uvicorn, the
``[server]`` extra): ``guanaco-rt serve MODEL``.

Owns: the routes (/v1/models, /v1/completions, /v1/chat/completions with SSE streaming,
/health), the API key, admission (``n_sessions`` generations at once on one shared
Model, up to ``max_queue`` more waiting in line, 429 beyond), OpenAI-style error JSON
with the right 4xx status, and cancelling a generation the moment its client goes.

Each generation runs on a thread of its own that holds a pooled Session; the event
loop only relays chunks. A client that disconnects -- mid-stream or while waiting for
a non-streamed answer -- cancels its generation within one token.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from .api import LLM, CancelHandle
from .errors import InvalidRequestError
from .results import DONE, relay

log = logging.getLogger("guanaco_rt.server")

COMPLETION_ARGS = {"prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "typical_p", "stop", "seed",
                   "frequency_penalty", "presence_penalty", "repeat_penalty", "logit_bias", "logprobs", "echo", "n",
                   "stream", "stream_options"}
CHAT_ARGS = {"messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p",
             "typical_p", "stop", "seed", "frequency_penalty", "presence_penalty", "repeat_penalty", "logit_bias",
             "logprobs", "top_logprobs", "n", "stream", "stream_options"}
# accepted and without effect here
IGNORED_ARGS = {"model", "user", "store", "metadata", "service_tier", "parallel_tool_calls", "best_of"}
MAX_BODY = 8 << 20


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
        body = await request.body()
        if len(body) > MAX_BODY:
            raise InvalidRequestError(f"request body of {len(body)} bytes is over the limit {MAX_BODY}")
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidRequestError(f"the body is not valid JSON: {e}") from None
        if not isinstance(req, dict):
            raise InvalidRequestError("the body must be a JSON object")
        unknown = sorted(set(req) - allowed - IGNORED_ARGS)
        if unknown:
            raise InvalidRequestError(f"unrecognized or unsupported request argument: {unknown[0]}", unknown[0])
        if req.get("best_of", 1) not in (None, 1):
            raise InvalidRequestError("best_of > 1 is not supported", "best_of")
        return {k: v for k, v in req.items() if k in allowed}

    async def health(request):
        return JSONResponse({"status": "ok", "model": llm.model_name, "sessions": llm.pool.size,
                             "busy": llm.pool.busy, "waiting": llm.pool.waiting})

    async def models(request):
        if not authorized(request):
            return error(401, "invalid API key", code="invalid_api_key")
        return JSONResponse(llm.models())

    def endpoint(method, allowed):
        async def handle(request: Request):
            if not authorized(request):
                return error(401, "invalid API key: pass it as 'Authorization: Bearer KEY'", code="invalid_api_key")
            try:
                args = await read_json(request, allowed)
            except InvalidRequestError as e:
                return error(400, str(e), param=e.param, code=e.code)
            if not admission.enter():
                return error(429, f"the server is busy: {admission.limit} requests in flight or waiting",
                             type_="server_busy", code="server_busy")
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
                admission.leave()
                return error(400, str(e), param=getattr(e, "param", None), code=getattr(e, "code", None))
            except Exception as e:                      # a failure of ours: logged, and a 500 without a traceback
                admission.leave()
                log.error("request failed: %s: %s", type(e).__name__, e)
                return error(500, f"{type(e).__name__}: {e}", type_="server_error")
            if stream:
                return StreamingResponse(_sse(request, result, t0), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            admission.leave()
            choices = result["choices"]
            _log_done(request, result.get("usage"), choices[0].get("finish_reason") if choices else None, t0)
            return JSONResponse(result)

        return handle

    async def _sse(request, chunks, t0):
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

    async def not_found(request, exc):
        return error(404, f"no route {request.url.path}", code="not_found")

    async def bad_method(request, exc):
        return error(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")

    app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ], exception_handlers={404: not_found, 405: bad_method})
    app.state.llm = llm
    return app if server_id is None else _with_header(app, b"x-guanaco-server", server_id.encode())


def _with_header(app, name, value):
    async def wrapped(scope, receive, send):
        async def send_with(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (name, value)]}
            await send(message)
        await app(scope, receive, send_with)
    return wrapped


def serve(llm: LLM, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, max_queue: int = 64,
          log_level: str = "info") -> None:
    """Run the server in this process until interrupted (uvicorn)."""
    import uvicorn
    uvicorn.run(create_app(llm, api_key, max_queue), host=host, port=port, log_level=log_level)
