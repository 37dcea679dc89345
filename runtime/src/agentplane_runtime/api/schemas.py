"""Request and response bodies of the OpenAI-compatible and knowledge APIs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError


def _one_of(expected: str) -> WrapValidator:
    """A union's error as one error on its field, saying what it expects (pydantic's own errors
    name each member of the union, and their locations would reach clients as field paths)."""

    def validate(value: object, handler: ValidatorFunctionWrapHandler) -> object:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError(
                "union_type", "Input should be {expected}", {"expected": expected}
            ) from None

    return WrapValidator(validate)


Stop = Annotated[str | list[str], _one_of("a string or a list of strings")]
ToolChoice = Annotated[
    Literal["none", "auto", "required"] | dict[str, object],
    _one_of("'none', 'auto', 'required' or an object naming a function"),
]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=64)
    text: str | None = None


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(max_length=128)
    arguments: str = ""


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=256)
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _encodable(self) -> ChatMessage:
        try:
            self.text().encode("utf-8")
            (self.name or "").encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode (no lone surrogates)") from None
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if self.content is None:
            return ""
        return "".join(p.text or "" for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request (the fields this runtime uses; others are ignored).

    Typed as strictly as OpenAI's API types them: a boolean must be a JSON boolean and a number a
    JSON number (`"stream": "yes"` and `"max_tokens": "16"` are refused, not coerced); an integer
    is a number wherever a float belongs. Strictness is per field, not model-wide, so unknown
    fields stay ignored as OpenAI tolerates them."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(default="", max_length=256)
    """Ignored beyond logging: the agent decides its model (list it with GET /v1/models)."""
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000, strict=True)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000, strict=True)
    temperature: float | None = Field(default=None, ge=0, le=2, strict=True)
    top_p: float | None = Field(default=None, ge=0, le=1, strict=True)
    seed: int | None = Field(default=None, strict=True)
    stop: Stop | None = None
    user: str | None = Field(default=None, max_length=256)
    n: int | None = Field(default=None, ge=1, le=1, strict=True)
    """OpenAI allows more choices; this runtime answers with one."""
    tools: list[dict[str, object]] | None = None
    """Refused unless empty: an agent's tools come from its configuration."""
    tool_choice: ToolChoice | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    """OpenAI's key-value metadata; `conversation_id` names the request's conversation, as the
    `X-Conversation-Id` header does (MCP sessions are kept per conversation)."""


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    description: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class DocumentPublic(BaseModel):
    id: str
    source: str
    owner: str
    visibility: str
    shared_with: list[str]
    created_at: str
    chunks: int


class DocumentList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DocumentPublic]


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=8000)
    top_k: int | None = Field(default=None, ge=1, le=50, strict=True)


class QueryHit(BaseModel):
    text: str
    score: float
    doc_id: str
    source: str
    chunk: int
    knowledge_base: str


class QueryResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[QueryHit]
