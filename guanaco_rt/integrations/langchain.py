"""LangChain adapters (the ``langchain`` extra; from a checkout of guanaco_rt,
``pip install '.[langchain]'``).

``ChatGuanaco`` is a langchain-core chat model, ``GuanacoLLM`` a text-completion LLM and
``GuanacoEmbeddings`` an Embeddings model (``embed_documents``/``embed_query``), all over a
``guanaco_rt.LLM`` (one Model and its session pool, shareable between adapters and
threads). They support ``invoke``/``batch``/``stream`` (and the async
variants, which LangChain runs on a worker thread), ``stop``, and the sampling settings
as fields or per call::

    from guanaco_rt.integrations.langchain import ChatGuanaco
    chat = ChatGuanaco(temperature=0, max_tokens=64)          # the demo model
    chat.invoke([("system", "You are a helpful assistant."), ("human", "What is the capital of France?")])

The chat model also takes tools (``bind_tools``: pydantic models, functions, LangChain
tools or OpenAI dicts; the reply's ``tool_calls``, and ``ToolMessage`` answers in the
history) and gives structured output (``with_structured_output``: a pydantic model or a
JSON schema, through a constrained ``response_format`` by default or a forced tool call
with ``method="function_calling"``).
"""
from __future__ import annotations

import json
from operator import itemgetter
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from ..api import LLM
from ..sampling import DEFAULTS
from . import missing_extra

try:
    from langchain_core.callbacks import CallbackManagerForLLMRun
    from langchain_core.embeddings import Embeddings
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.language_models.llms import LLM as _LangChainLLM
    from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
    from langchain_core.messages.tool import tool_call_chunk
    from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, GenerationChunk
    from langchain_core.runnables import RunnableLambda, RunnableMap, RunnablePassthrough
    from langchain_core.utils.function_calling import convert_to_openai_tool
    from pydantic import BaseModel, ConfigDict, Field, model_validator
except ModuleNotFoundError as e:
    raise missing_extra(__name__, "langchain", e) from e

SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "frequency_penalty", "presence_penalty",
            "seed", "logit_bias")
ROLE_OF = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}
# passed through to create_chat_completion as they are (bind_tools, with_structured_output)
CHAT_ONLY = ("tools", "tool_choice", "parallel_tool_calls", "response_format")


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
        args.update({k: v for k, v in kw.items() if k in SAMPLING or k in CHAT_ONLY})
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
                raise ValueError(f"ChatGuanaco takes system, human, ai and tool messages, not {m.type!r}")
            msg: dict[str, Any] = {"role": role, "content": m.content}
            if isinstance(m, AIMessage) and m.tool_calls:
                msg["tool_calls"] = [{"id": tc["id"], "type": "function",
                                      "function": {"name": tc["name"], "arguments": json.dumps(tc["args"])}}
                                     for tc in m.tool_calls]
                msg["content"] = m.content or None
            elif isinstance(m, ToolMessage):
                msg["tool_call_id"] = m.tool_call_id
                if not isinstance(m.content, str):
                    msg["content"] = json.dumps(m.content)
            out.append(msg)
        return out

    def bind_tools(self, tools: Sequence[Union[dict[str, Any], type, Callable, Any]], *,
                   tool_choice: Optional[Union[dict, str, bool]] = None, **kwargs: Any):
        """The model with ``tools`` (anything langchain-core's convert_to_openai_tool takes)
        offered on every call. ``tool_choice``: 'auto', 'none', 'required' or 'any' (or True):
        a call is required; a tool's name: that tool; or OpenAI's dict."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice in ("any", True):
            tool_choice = "required"
        elif isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "required"):
            tool_choice = {"type": "function", "function": {"name": tool_choice}}
        elif tool_choice is False:
            tool_choice = "none"
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    def with_structured_output(self, schema: Any, *, method: str = "json_schema",
                               include_raw: bool = False, strict: Optional[bool] = None, **kwargs: Any):
        """A runnable that answers with ``schema``'s data: a pydantic object for a pydantic
        model, else a dict. ``method``: 'json_schema' (the reply is the JSON, constrained to
        the schema: OpenAI's response_format), 'function_calling' (a forced call of a tool
        made from the schema) or 'json_mode' (any JSON object). ``include_raw``: a dict of
        the raw message, the parsed value and the parsing error, as LangChain's others give."""
        if kwargs:
            raise ValueError(f"with_structured_output got unsupported arguments {sorted(kwargs)}")
        is_model = isinstance(schema, type) and hasattr(schema, "model_json_schema")
        parser: Any
        fmt: dict[str, Any]
        if method == "function_calling":
            tool = convert_to_openai_tool(schema, strict=strict)
            name = tool["function"]["name"]
            llm = self.bind_tools([tool], tool_choice=name, parallel_tool_calls=False)
            parser = (PydanticToolsParser(tools=[schema], first_tool_only=True) if is_model
                      else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True))
        elif method in ("json_schema", "json_mode"):
            if method == "json_mode":
                fmt = {"type": "json_object"}
            else:
                if is_model:
                    body, name = schema.model_json_schema(), schema.__name__
                else:
                    fn = convert_to_openai_tool(schema)["function"]
                    is_tool = isinstance(schema, dict) and ("parameters" in schema or schema.get("type") == "function")
                    body, name = (fn["parameters"] if is_tool else schema), fn["name"]
                fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": body,
                                                              "strict": True if strict is None else strict}}
            llm = self.bind(response_format=fmt)

            def parse(msg):
                return schema.model_validate_json(msg.content) if is_model else json.loads(msg.content)
            parser = RunnableLambda(parse)
        else:
            raise ValueError(f"method must be 'json_schema', 'function_calling' or 'json_mode', got {method!r}")
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([fallback], exception_key="parsing_error")

    def _generate(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                  run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> ChatResult:
        r = self.llm.create_chat_completion(self._messages(messages), **self._kwargs(stop, kwargs))
        c, u = r["choices"][0], r["usage"]
        calls = [{"name": tc["function"]["name"], "args": json.loads(tc["function"]["arguments"]),
                  "id": tc["id"], "type": "tool_call"} for tc in c["message"].get("tool_calls") or []]
        msg = AIMessage(content=c["message"]["content"] or "", tool_calls=calls,
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
                calls = [tool_call_chunk(name=d.get("function", {}).get("name"),
                                         args=d.get("function", {}).get("arguments"), id=d.get("id"), index=d["index"])
                         for d in choice["delta"].get("tool_calls") or []]
                if not text and not meta and not calls:
                    continue
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=text, response_metadata=meta,
                                                                   tool_call_chunks=calls))
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


class GuanacoEmbeddings(BaseModel, Embeddings):
    """LangChain embeddings from a guanaco_rt.LLM's model (Model.embed: the hidden states after
    the final norm, pooled and L2-normalized). ``pooling`` None: the file's pooling_type,
    else mean."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: Any = Field(default=None, description="a guanaco_rt.LLM; made from model_path when not given")
    model_path: Optional[str] = None          # None: the demo model
    pooling: Optional[str] = None

    @model_validator(mode="after")
    def _load(self):
        if self.llm is None:
            self.llm = LLM(self.model_path, n_ctx=512)
        return self

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return self.llm.model.embed(list(texts), pooling=self.pooling).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]
