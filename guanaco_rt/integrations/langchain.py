"""LangChain adapters (the ``langchain`` extra; from a checkout of guanaco_rt,
``pip install '.[langchain]'``).

``ChatGuanaco`` is a langchain-core chat model and ``GuanacoLLM`` a text-completion LLM,
both over a ``guanaco_rt.LLM`` (one Model and its session pool, shareable between
adapters and threads). They support ``invoke``/``batch``/``stream`` (and the async
variants, which LangChain runs on a worker thread), ``stop``, and the sampling settings
as fields or per call::

    from guanaco_rt.integrations.langchain import ChatGuanaco
    chat = ChatGuanaco(temperature=0, max_tokens=64)          # the demo model
    chat.invoke([("system", "You are a helpful assistant."), ("human", "What is the capital of France?")])
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

from ..api import LLM
from ..sampling import DEFAULTS
from . import missing_extra

try:
    from langchain_core.callbacks import CallbackManagerForLLMRun
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.language_models.llms import LLM as _LangChainLLM
    from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, GenerationChunk
    from pydantic import BaseModel, ConfigDict, Field, model_validator
except ModuleNotFoundError as e:
    raise missing_extra(__name__, "langchain", e) from e

SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "frequency_penalty", "presence_penalty",
            "seed", "logit_bias")
ROLE_OF = {"system": "system", "human": "user", "ai": "assistant"}


class _GuanacoFields(BaseModel):
    """What both adapters share: the guanaco_rt.LLM and the sampling settings (OpenAI's
    names, as guanaco_rt.api takes them)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: Any = Field(default=None, description="a guanaco_rt.LLM; made from model_path when not given")
    model_path: Optional[str] = None          # None: the demo model
    n_ctx: int = 2048
    n_sessions: int = 1
    max_tokens: Optional[int] = 256
    temperature: float = DEFAULTS["temperature"]
    top_p: float = DEFAULTS["top_p"]
    top_k: int = DEFAULTS["top_k"]
    min_p: float = DEFAULTS["min_p"]
    repeat_penalty: float = DEFAULTS["repetition_penalty"]
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: Optional[int] = None
    logit_bias: Optional[dict] = None
    stop: Optional[list[str]] = None

    @model_validator(mode="after")
    def _load(self):
        if self.llm is None:
            self.llm = LLM(self.model_path, n_ctx=self.n_ctx, n_sessions=self.n_sessions)
        return self

    @property
    def _identifying_params(self) -> dict:
        return {"model": self.llm.model_name, **{k: getattr(self, k) for k in SAMPLING}}

    def _kwargs(self, stop, kw):
        args = {k: getattr(self, k) for k in SAMPLING if getattr(self, k) is not None}
        args["max_tokens"] = kw.pop("max_tokens", self.max_tokens)
        args.update({k: v for k, v in kw.items() if k in SAMPLING})
        stops = stop if stop is not None else self.stop
        if stops:
            args["stop"] = list(stops)
        return args


class ChatGuanaco(_GuanacoFields, BaseChatModel):
    """A LangChain chat model over guanaco_rt: the model's own chat template (a GGUF
    file's, or Guanaco's ``### Human:`` turns for ggjt files)."""

    @property
    def _llm_type(self) -> str:
        return "guanaco_rt-chat"

    @staticmethod
    def _messages(messages: list[BaseMessage]) -> list[dict]:
        out = []
        for m in messages:
            role = ROLE_OF.get(m.type)
            if role is None:
                raise ValueError(f"ChatGuanaco takes system, human and ai messages, not {m.type!r}")
            out.append({"role": role, "content": m.content})
        return out

    def _generate(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                  run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> ChatResult:
        r = self.llm.create_chat_completion(self._messages(messages), **self._kwargs(stop, kwargs))
        c, u = r["choices"][0], r["usage"]
        msg = AIMessage(content=c["message"]["content"],
                        response_metadata={"finish_reason": c["finish_reason"], "model_name": r["model"]},
                        usage_metadata={"input_tokens": u["prompt_tokens"], "output_tokens": u["completion_tokens"],
                                        "total_tokens": u["total_tokens"]})
        return ChatResult(generations=[ChatGeneration(message=msg)], llm_output={"model_name": r["model"]})

    def _stream(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        chunks = self.llm.create_chat_completion(self._messages(messages), stream=True, **self._kwargs(stop, kwargs))
        try:
            for c in chunks:
                choice = c["choices"][0]
                text = choice["delta"].get("content") or ""
                meta = {"finish_reason": choice["finish_reason"]} if choice["finish_reason"] else {}
                if not text and not meta:
                    continue
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=text, response_metadata=meta))
                if run_manager and text:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
        finally:
            chunks.close()            # a consumer that stops early frees the session at once


class GuanacoLLM(_GuanacoFields, _LangChainLLM):
    """A LangChain text-completion LLM over guanaco_rt (raw prompt, no chat template)."""

    @property
    def _llm_type(self) -> str:
        return "guanaco_rt"

    def _call(self, prompt: str, stop: Optional[list[str]] = None,
              run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> str:
        return self.llm.create_completion(prompt, **self._kwargs(stop, kwargs))["choices"][0]["text"]

    def _stream(self, prompt: str, stop: Optional[list[str]] = None,
                run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        chunks = self.llm.create_completion(prompt, stream=True, **self._kwargs(stop, kwargs))
        try:
            for c in chunks:
                text = c["choices"][0]["text"]
                if text:
                    chunk = GenerationChunk(text=text)
                    if run_manager:
                        run_manager.on_llm_new_token(text, chunk=chunk)
                    yield chunk
        finally:
            chunks.close()
