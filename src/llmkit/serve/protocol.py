"""OpenAI's request and response objects, as pydantic models.

Requests ignore fields they do not know (OpenAI clients send extras, e.g. `user`, `metadata`) but validate the
types of those they do strictly: `"temperature": "hot"` and `"temperature": "0.5"` are both 400s naming the field,
never coerced. OpenAI fields that llmkit cannot honour are declared and refused with a 400 when set
(`check_supported`), rather than silently ignored.

Shapes follow https://platform.openai.com/docs/api-reference (chat, completions, embeddings, models).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


# ---------------------------------------------------------------------------------------------------------
# Requests


class TextPart(Request):
    type: Literal["text"]
    text: str


class FunctionCall(Request):
    name: str
    arguments: str  # JSON text, as OpenAI sends it (the model wrote it; it may not parse)


class ToolCallIn(Request):
    """A call an earlier assistant turn made, sent back in the history."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # a string, or a list of content parts of which llmkit serves the text ones (images are refused)
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None  # assistant turns that called tools
    tool_call_id: str | None = None  # role tool: the call this message answers

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message of role tool needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class JsonSchema(Request):
    name: str = Field(max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        return self


# A function name as OpenAI allows it (also what the tool-call grammar and parser rely on: no quotes, no escapes)
FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionDef(Request):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    # a JSON Schema of the arguments object; omitted: a function that takes no arguments
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and v.get("type", "object") != "object":
            raise ValueError(f"must be a JSON Schema of an object (\"type\": \"object\"), got type {v['type']!r}")
        if v is not None and not isinstance(v.get("properties", {}), dict):
            raise ValueError("'properties' must be an object mapping argument names to their schemas")
        return v


class Tool(Request):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(Request):
    name: str


class NamedToolChoice(Request):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(Request):
    include_usage: bool = False


Stop = str | Annotated[list[str], Field(max_length=4)] | None


class Sampling(Request):
    """Fields that chat and completions share."""

    model: str
    n: int = Field(1, ge=1, le=16)
    stop: Stop = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # OpenAI fields llmkit does not implement: accepted only at their no-op values
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def unsupported(self) -> list[tuple[str, str]]:
        """(param, why) for every field set to something llmkit cannot do; the serving layer answers 400."""
        out = []
        for f in ("frequency_penalty", "presence_penalty"):
            if getattr(self, f):
                out.append((f, f"{f} is not supported; leave it unset or 0"))
        if self.logit_bias:
            out.append(("logit_bias", "logit_bias is not supported"))
        if self.stream_options is not None and not self.stream:
            out.append(("stream_options", "stream_options is only allowed when stream is true"))
        return out


class RagOptions(Request):
    """llmkit's extra body field: answer from a collection's chunks, cited (see serve/rag.py)."""

    collection: str
    top_k: int = Field(4, ge=1, le=20)
    source: str | list[str] | None = None  # only chunks of files matching these globs


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    # OpenAI's default: "none" with no tools, "auto" with tools (serve/tools.py)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None  # OpenAI's default: true
    rag: RagOptions | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        if self.top_logprobs is not None and not self.logprobs:
            out.append(("top_logprobs", "top_logprobs needs logprobs: true"))
        return out

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(Sampling):
    # every form OpenAI takes: a string, strings, token ids, lists of token ids (ids are checked against the
    # model's vocabulary by the serving layer, which knows it)
    prompt: str | Annotated[list[str], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=0)  # 0: score the prompt only (with echo, as vLLM allows)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    def unsupported(self) -> list[tuple[str, str]]:
        out = super().unsupported()
        if self.max_tokens == 0 and not self.echo:
            out.append(("max_tokens", "max_tokens 0 is only allowed with echo: true (it scores the prompt)"))
        if self.echo and self.stream:
            out.append(("echo", "echo is not supported with stream: true"))
        if self.suffix:
            out.append(("suffix", "suffix (insertion) is not supported"))
        if self.best_of not in (None, self.n):
            out.append(("best_of", "best_of is not supported (leave it unset or equal to n)"))
        return out

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text or token ids."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)

    def max_new_tokens(self) -> int | None:
        return self.max_tokens


class EmbeddingRequest(Request):
    model: str
    input: str | Annotated[list[str], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# ---------------------------------------------------------------------------------------------------------
# Responses


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class FunctionCallOut(BaseModel):
    name: str
    arguments: str  # JSON text of the arguments object


class ToolCall(BaseModel):
    id: str = Field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


FinishReason = Literal["stop", "length", "content_filter", "tool_calls"]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class Citation(BaseModel):
    index: int  # the [n] the model was asked to cite
    source: str
    page: int | None = None
    heading: str | None = None
    text: str
    start: int
    end: int
    score: float
    cited: bool | None = None  # whether an answer names [index]; null in a stream's first chunk


class RagChatCompletion(ChatCompletion):
    citations: list[Citation]


class FunctionDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A streamed call: its first delta has id, type and function.name (arguments ""); the next ones only
    `index` and a fragment of function.arguments, as OpenAI streams them."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class RagChatCompletionChunk(ChatCompletionChunk):
    citations: list[Citation]


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"] | None = None


class Completion(BaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # floats, or base64 of float32 little-endian


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmkit"
    parent: str | None = None  # an adapter's base model id (vLLM sets it too); null for the base models
    llmkit_version: int | None = None  # the registry version served (`registry:NAME@ALIAS`); null for the others


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class FeedbackRequest(Request):
    """llmkit's own: a rating of one answer, stored beside its request in the request log."""

    request_id: str = Field(min_length=1, description="The `id` of a chat or completion response of this server.")
    rating: Literal["up", "down", 1, -1] = Field(description="Thumbs up (`up` or 1) or down (`down` or -1).")
    comment: str | None = Field(None, max_length=4000)

    def score(self) -> int:
        return 1 if self.rating in ("up", 1) else -1


class Feedback(BaseModel):
    id: str = Field(default_factory=lambda: new_id("fb"))
    object: Literal["feedback"] = "feedback"
    created: int = Field(default_factory=now)
    request_id: str
    rating: int  # +1 or -1
    comment: str | None = None


class Health(BaseModel):
    status: Literal["ok", "draining"]
    models: list[str]
    embedder: str | None = None  # loading, ready, or failed: <why>; null without an embedder
    inflight: int
    registry: dict[str, Any] | None = None  # serving from the registry: each followed model's version and status


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
