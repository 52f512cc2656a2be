"""The JSON the server reads and writes, as pydantic models (they are also the OpenAPI schema).

Requests are strict: unknown fields are refused (a typo such as ``"topk"`` must not be silently ignored), and
``top_k`` must be a JSON integer. Limits that depend on the server's flags (context length, batch size, body
size) are checked by the routes, not here, because they answer 413 rather than 422.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

MAX_TOP_K = 20  # extraction keeps n_best = 20 candidates per window; more would not be a prefix of them


class AnswerRequest(BaseModel):
    """One question about one context."""

    model_config = ConfigDict(extra="forbid", strict=True)

    question: str = Field(description="the question, e.g. '¿Dónde nació Frida Kahlo?'", examples=["¿Quién?"])
    context: str = Field(
        description="the text that holds the answer (at most --max-context-chars characters)"
    )
    top_k: int = Field(1, ge=1, le=MAX_TOP_K, description=f"how many answers to return (1 to {MAX_TOP_K})")

    @field_validator("question", "context")
    @classmethod
    def _not_blank(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise ValueError(f"the {info.field_name} is empty or only whitespace")
        return value


class BatchRequest(BaseModel):
    """Several questions at once (at most --max-batch-items); each item has its own top_k."""

    model_config = ConfigDict(extra="forbid", strict=True)

    items: list[AnswerRequest] = Field(min_length=1, description="the questions, answered in this order")


class SpanOut(BaseModel):
    """A candidate answer: ``context[start:end] == text``."""

    text: str
    start: int = Field(description="character offset of the first character in the context")
    end: int = Field(description="character offset one past the last character")
    score: float = Field(description="start logit + end logit")
    probability: float = Field(description="softmax over the returned answers (and the null answer)")


class AnswerResponse(BaseModel):
    """The answer to one question: the best span's text (or "" for no answer) and the candidates."""

    answer: str
    is_null: bool = Field(description="true when the model says the context holds no answer")
    answers: list[SpanOut] = Field(description="up to top_k candidates, best first")
    latency_ms: float = Field(description="server time for the request, queueing and batching included")


class BatchResponse(BaseModel):
    """One result per request item, in the items' order."""

    results: list[AnswerResponse]
    latency_ms: float = Field(description="server time for the whole request")


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer has this shape."""

    error: str = Field(
        description="a stable code: invalid_json, invalid_request, context_too_long, too_many_items, "
        "body_too_large, not_found, method_not_allowed, model_error, unavailable",
        examples=["invalid_request"],
    )
    detail: str = Field(description="what was wrong and how to fix it", examples=["top_k: must be <= 20"])


class BackendCandidate(BaseModel):
    """One backend `--backend auto` considered: its parity verdict, and its time or why it was skipped."""

    backend: str
    parity: str | None = Field(None, description="the export's parity check of it, e.g. '-0.12 F1 on ...'")
    ms: float | None = Field(None, description="median milliseconds of one window at batch 1 (if measured)")
    skipped: str | None = Field(None, description="why it was not measured (no export, failed parity, ...)")


class BackendSelection(BaseModel):
    """How `--backend auto` chose the backend that runs."""

    chosen: str
    reason: str
    candidates: list[BackendCandidate]


class HealthResponse(BaseModel):
    """The server is up; which model it serves, the backend that runs it, and its limits."""

    status: str = "ok"
    model: str
    backend: str = Field(description="the backend that runs the model (with --backend auto: the one chosen)")
    backend_requested: str | None = Field(None, description="'auto' when --backend auto chose the backend")
    selection: BackendSelection | None = Field(None, description="with --backend auto: how it chose")
    limits: dict[str, int]
