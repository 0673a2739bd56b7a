"""What a generation hands back: its result and timings, and the streams of text pieces.

Owns: GenerationResult, Timings, and the sync and async iterators that Session.stream()
and Session.astream() return. The async one runs the decode loop on a worker thread
and cancels the generation as soon as its consumer leaves.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generator, Iterator

if TYPE_CHECKING:
    from .session import Session


@dataclass
class Timings:
    load_ms: float = 0.0          # the model's load time
    prompt_tokens: int = 0        # prompt tokens evaluated (not reused from the cache)
    reused_tokens: int = 0        # prompt tokens whose KV entries were already cached
    shared_tokens: int = 0        # of those, the ones copied from another session's cache (copy_prefix)
    prompt_ms: float = 0.0
    generated_tokens: int = 0
    generate_ms: float = 0.0

    @property
    def prompt_tokens_per_s(self):
        return self.prompt_tokens / (self.prompt_ms / 1e3) if self.prompt_ms else 0.0

    @property
    def generate_tokens_per_s(self):
        return self.generated_tokens / (self.generate_ms / 1e3) if self.generate_ms else 0.0


@dataclass
class GenerationResult:
    text: str
    tokens: list
    finish_reason: str            # "stop" | "length" | "eos" | "cancelled"
    timings: Timings
    logprobs: list | None = field(default=None)  # per token: [(id, logprob)] of the top n_probs
    token_logprobs: list | None = field(default=None)  # per token: its own logprob (with n_probs > 0)
    parsed: Any = field(default=None)  # a json_schema constraint's value (a pydantic object for a model class)
    close_steps: int = 0          # tokens a constraint's budget close chose among (0: the model closed it alone)


class ChatReply(str):
    """Session.chat()'s reply: the text (stripped), with the generation's ``result`` and,
    under a json_schema constraint, its ``parsed`` value."""

    result: GenerationResult

    def __new__(cls, text: str, result: GenerationResult):
        self = super().__new__(cls, text)
        self.result = result
        return self

    @property
    def parsed(self) -> Any:
        return self.result.parsed


class StreamView:
    """What a decode loop shares with the stream that hands its pieces out: the Decoder
    (for ``tokens_so_far``). The loop holds this, never the stream, so the stream is not
    part of a reference cycle and dropping it closes the loop at once."""

    __slots__ = ("decoder",)

    def __init__(self):
        self.decoder = None


class TextStream:
    """Iterator of text pieces from Session.stream(); ``result`` is set when it ends.

    The generation holds its Session from the first piece until it ends, ``close()`` is
    called, the ``with`` block is left, or the stream is dropped: nothing else refers to
    the decode loop, so the last reference going (a ``return`` or ``break`` out of a
    ``for``) closes it right away, without waiting for the cyclic garbage collector."""

    def __init__(self, gen: Generator[str, None, GenerationResult], view: StreamView | None = None) -> None:
        self._gen = gen
        self._view = view if view is not None else StreamView()
        self.result: GenerationResult | None = None

    def tokens_so_far(self) -> tuple[list, list | None, list | None]:
        """(generated ids, their top log-probabilities, their own log-probabilities) up to
        the last piece handed out; call it between pieces, from the consuming thread."""
        d = self._view.decoder
        if d is None:
            return [], None, None
        return d.generated(), d.logprobs(), d.token_logprobs()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            return next(self._gen)
        except StopIteration as stop:
            self.result = stop.value
            raise

    def close(self) -> None:
        """End the generation now (if it is running) and give the Session back."""
        self._gen.close()

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc):
        self.close()


DONE = object()


def relay(iterable, name):
    """Iterate ``iterable`` on a thread of its own and hand each item to the running event
    loop -> (an asyncio.Queue of the items, then DONE or the exception that ended it; the
    thread). The thread holds only ``iterable``."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    def post(item):
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:       # the event loop is closed: nobody is listening
            pass

    def worker():
        try:
            for item in iterable:
                post(item)
            post(DONE)
        except BaseException as e:  # handed to the awaiting task
            post(e)

    thread = threading.Thread(target=worker, name=name, daemon=True)
    thread.start()
    return queue, thread


class AsyncTextStream:
    """Async iterator of text pieces from Session.astream(); ``result`` is set when it ends.

    The decode loop runs on a worker thread that hands pieces to the event loop. If the
    consumer leaves early, the generation is cancelled right away: by ``aclose()``, or
    when the iterator is dropped (``break`` out of ``async for``)."""

    def __init__(self, session: Session, stream: TextStream) -> None:
        self._session = session
        self._stream = stream
        self._queue: asyncio.Queue[Any] | None = None     # the items relay() hands over
        self._thread: threading.Thread | None = None
        self._ended = False
        self.result: GenerationResult | None = None

    def __aiter__(self) -> AsyncTextStream:
        return self

    def _start(self) -> asyncio.Queue[Any]:
        # the worker must not hold self (relay's thread holds only the stream): dropping self cancels
        self._queue, self._thread = relay(self._stream, "guanaco_rt-astream")
        return self._queue

    async def __anext__(self) -> str:
        if self._ended:
            raise StopAsyncIteration
        queue = self._queue if self._queue is not None else self._start()
        item = await queue.get()
        if item is DONE or isinstance(item, BaseException):
            self._ended = True
            self.result = self._stream.result
            if isinstance(item, BaseException):
                raise item
            raise StopAsyncIteration
        return item

    def _abandon(self):
        if self._thread is not None and self._thread.is_alive():
            self._session._abandon(self._thread)

    async def aclose(self) -> None:
        """Cancel the generation (if still running) and wait for the worker to finish."""
        self._ended = True
        self._abandon()
        if self._thread is not None and self._thread.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self.result = self._stream.result

    async def __aenter__(self) -> AsyncTextStream:
        return self

    async def __aexit__(self, *exc):
        await self.aclose()

    def __del__(self):
        self._abandon()
