"""The JSON the server reads and writes, as pydantic models (they are also the OpenAPI schema).

Requests are strict: unknown fields are refused (a typo such as ``"topk"`` must not be silently ignored), and
``top_k`` must be a JSON integer. Limits that depend on the server's flags (context and question length, batch
size, body size) are checked by the routes, not here, because they answer 413 rather than 422.

Unlabeled data fits as is: a JSON Lines record ``{"id", "question", "context"}`` is a batch item (its ``id``
is echoed in its result), and a SQuAD file without answers is a `SquadRequest` (its ``data`` is checked by
the toolkit's SQuAD reader, which ignores answers when they are there).
"""

from __future__ import annotations

from typing import Any

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
    id: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="optional: echoed in the result (e.g. a JSON Lines id)",
    )

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


class SquadRequest(BaseModel):
    """Questions in SQuAD layout, answers optional (ignored): ``{"version": ..., "data": [articles]}``."""

    model_config = ConfigDict(extra="allow")

    data: list[dict[str, Any]] = Field(
        min_length=1,
        description="articles: {title, paragraphs: [{context, qas: [{id, question}]}]}; question ids unique",
    )
    version: str | None = Field(None, description="e.g. v2.0 (read as the SQuAD reader reads a file)")


class SpanOut(BaseModel):
    """A candidate answer: ``context[start:end] == text``."""

    text: str
    start: int = Field(description="character offset of the first character in the context")
    end: int = Field(description="character offset one past the last character")
    score: float = Field(description="start logit + end logit")
    probability: float = Field(
        description="p_start * p_end: the start and end softmaxes over the context tokens of the window the "
        "span was read from (with the null answer's position for v2 models); independent of top_k"
    )


class AnswerResponse(BaseModel):
    """The answer to one question: the best span's text (or "" for no answer) and the candidates."""

    id: str | None = Field(None, description="the request item's id (only when it had one)")
    answer: str
    is_null: bool = Field(description="true when the model says the context holds no answer")
    answers: list[SpanOut] = Field(description="up to top_k candidates, best first")
    latency_ms: float = Field(description="server time for the request, queueing and batching included")


class BatchResponse(BaseModel):
    """One result per request item, in the items' order."""

    results: list[AnswerResponse]
    latency_ms: float = Field(description="server time for the whole request")


class SquadResponse(BaseModel):
    """The answers to a SQuAD-layout body: one result per question (with its id), in file order."""

    results: list[AnswerResponse]
    predictions: dict[str, str] = Field(description="{question id: answer}, as the official scripts read")
    latency_ms: float = Field(description="server time for the whole request")


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer has this shape."""

    error: str = Field(
        description="a stable code: invalid_json, invalid_request, unauthorized, context_too_long, "
        "question_too_long, too_many_items, too_many_tokens, body_too_large, not_found, method_not_allowed, "
        "model_error, internal_error, overloaded, unavailable, deadline_exceeded",
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


class ProbeResponse(BaseModel):
    """/livez and /readyz: ``alive``; ``ready``, or ``starting`` / ``draining`` / ``failed`` (with 503)."""

    status: str


class HealthResponse(BaseModel):
    """Readiness with details: the model, the backend that runs it, and the server's limits."""

    status: str = Field(description="ok when ready (200); else starting, draining or failed (503)")
    model: str
    version: str = Field(description="the tinyroberta-es version")
    backend: str = Field(description="the backend that runs the model (with --backend auto: the one chosen)")
    backend_requested: str | None = Field(None, description="'auto' when --backend auto chose the backend")
    selection: BackendSelection | None = Field(None, description="with --backend auto: how it chose")
    limits: dict[str, int]
    request_timeout_s: float = Field(description="the default and largest deadline (X-Request-Timeout)")
    api_key_required: bool = Field(description="whether /v1/* need 'Authorization: Bearer <key>'")
