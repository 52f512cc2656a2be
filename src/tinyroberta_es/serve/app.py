"""The HTTP API and web page of `tinyroberta-es serve`, as a FastAPI app factory.

Routes: ``POST /v1/answer`` (one question), ``POST /v1/answer/batch`` (several, each with its own top_k),
``GET /health``, ``GET /metrics`` (Prometheus text), ``GET /`` (the Spanish page), ``/docs`` and
``/openapi.json``. Every error, whatever raised it (pydantic, routing, a limit, the model), is
``{"error": code, "detail": message}`` with the status below:

- 400 ``invalid_json``: the body is not JSON (or not UTF-8).
- 422 ``invalid_request``: the JSON does not fit the schema: a missing, unknown or mistyped field, an empty or
  whitespace-only question or context, top_k outside 1..20, an empty ``items`` list. All problems at once.
- 413 ``context_too_long`` / ``too_many_items`` / ``body_too_large``: a size limit of this server
  (--max-context-chars, --max-batch-items, --max-body-bytes). These are 413, not 422: the request is valid
  but too big for this server's limits, and the fix is to send less (a shorter context, fewer items), not to
  correct a value; a client can tell them apart from schema errors by the status alone.
- 404, 405: unknown route or method. 500 ``model_error``: the model failed on the batch that held the
  request (the other batches and later requests are unaffected). 503 ``overloaded`` (with ``Retry-After``):
  more questions would be waiting for the model than --max-queue, so the server sheds load instead of letting
  every client's latency grow; 503 ``unavailable``: shutting down.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from http import HTTPStatus
from importlib import resources
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from tinyroberta_es import __version__
from tinyroberta_es.data.schema import Example
from tinyroberta_es.errors import UserError
from tinyroberta_es.extraction import Prediction
from tinyroberta_es.serve.batching import BatcherClosed, MicroBatcher, ModelError, Overloaded
from tinyroberta_es.serve.limits import BodySizeLimit
from tinyroberta_es.serve.metrics import MetricsMiddleware, ServerMetrics
from tinyroberta_es.serve.schema import (
    AnswerRequest,
    AnswerResponse,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    HealthResponse,
    SpanOut,
)


@dataclass
class ServeConfig:
    """Batching and limits of the server; each field is the `tinyroberta-es serve` flag of the same name."""

    max_batch: int = 16  # questions per model call
    batch_wait_ms: float = 5.0  # how long the first queued question waits for others to join its batch
    max_context_chars: int = 20_000  # longer contexts get 413 context_too_long
    max_batch_items: int = 32  # more items in one batch request get 413 too_many_items
    max_body_bytes: int = 1_000_000  # larger bodies get 413 body_too_large
    max_queue: int = 256  # questions waiting for the model; a request that would pass it gets 503 overloaded
    model_name: str = "model"  # shown by /health (the backend it shows is the answerer's runner's)

    def __post_init__(self) -> None:
        problems = [
            f"--{name.replace('_', '-')} {value} must be {rule}"
            for name, value, ok, rule in (
                ("max_batch", self.max_batch, self.max_batch >= 1, "at least 1"),
                ("batch_wait_ms", self.batch_wait_ms, 0 <= self.batch_wait_ms <= 10_000, "in 0..10000"),
                ("max_context_chars", self.max_context_chars, self.max_context_chars >= 1, "at least 1"),
                ("max_batch_items", self.max_batch_items, self.max_batch_items >= 1, "at least 1"),
                ("max_body_bytes", self.max_body_bytes, self.max_body_bytes >= 1024, "at least 1024"),
                ("max_queue", self.max_queue, self.max_queue >= 1, "at least 1"),
            )
            if not ok
        ]
        if problems:
            raise UserError("; ".join(problems))


class Answerer(Protocol):
    """What the server needs of a `QuestionAnswerer`."""

    config: Any  # an InferenceConfig: its null_threshold is read, and its backend (what was asked for)
    runner: Any  # a runtimes.Runner: /health reports its name and, with --backend auto, its selection

    def predict(self, examples: Sequence[Example], top_k: int = 1) -> list[Prediction]: ...


class ApiError(Exception):
    """An error answered as ``{"error": code, "detail": detail}`` with `status`."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "invalid_json: the body is not JSON"},
    413: {
        "model": ErrorResponse,
        "description": "context_too_long, too_many_items or body_too_large: over a server limit",
    },
    422: {"model": ErrorResponse, "description": "invalid_request: the JSON does not fit the schema"},
    500: {"model": ErrorResponse, "description": "model_error: the model failed on this request's batch"},
    503: {"model": ErrorResponse, "description": "overloaded (--max-queue; see Retry-After) or unavailable"},
}
_HTTP_CODES = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed"}


def create_app(answerer: Answerer, config: ServeConfig | None = None) -> FastAPI:
    """A FastAPI app that answers with `answerer`; start it with uvicorn (it batches in its lifespan)."""
    config = config or ServeConfig()
    metrics = ServerMetrics()
    batcher = MicroBatcher(
        answerer.predict,
        max_batch=config.max_batch,
        wait_ms=config.batch_wait_ms,
        null_threshold=getattr(answerer.config, "null_threshold", None),
        on_batch=metrics.record_batch,
        max_queue=config.max_queue,
    )
    page, page_csp = _page()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="tinyroberta-es",
        version=__version__,
        summary="Extractive question answering in Spanish",
        description=__doc__,
        lifespan=lifespan,
    )
    app.state.config, app.state.metrics, app.state.batcher = config, metrics, batcher

    async def answer_all(items: list[AnswerRequest]) -> list[AnswerResponse]:
        too_long = [i for i, item in enumerate(items) if len(item.context) > config.max_context_chars]
        if too_long:
            where = (
                "the context has" if len(items) == 1 else f"the contexts of items {_ranges(too_long)} have"
            )
            raise ApiError(
                413,
                "context_too_long",
                f"{where} more than {config.max_context_chars} characters (--max-context-chars); "
                "send a shorter context or split it",
            )
        t0 = time.perf_counter()
        examples = [
            Example(id=str(i), question=it.question, context=it.context) for i, it in enumerate(items)
        ]
        try:
            predictions = await batcher.submit_all(
                [(ex, it.top_k) for ex, it in zip(examples, items, strict=True)]
            )
        except Overloaded as err:
            raise ApiError(503, "overloaded", str(err)) from None
        ms = (time.perf_counter() - t0) * 1000
        return [_response(p, ms) for p in predictions]

    @app.post(
        "/v1/answer",
        response_model=AnswerResponse,
        responses=ERROR_RESPONSES,
        summary="Answer one question about one context",
    )
    async def answer(body: AnswerRequest) -> AnswerResponse:
        t0 = time.perf_counter()
        [result] = await answer_all([body])
        result.latency_ms = round((time.perf_counter() - t0) * 1000, 3)
        return result

    @app.post(
        "/v1/answer/batch",
        response_model=BatchResponse,
        responses=ERROR_RESPONSES,
        summary="Answer several questions (each with its own context and top_k) in one request",
    )
    async def answer_batch(body: BatchRequest) -> BatchResponse:
        t0 = time.perf_counter()
        if len(body.items) > config.max_batch_items:
            raise ApiError(
                413,
                "too_many_items",
                f"{len(body.items)} items; the limit is {config.max_batch_items} per request "
                "(--max-batch-items): split them over several requests",
            )
        results = await answer_all(body.items)
        return BatchResponse(results=results, latency_ms=round((time.perf_counter() - t0) * 1000, 3))

    @app.get(
        "/health",
        response_model=HealthResponse,
        response_model_exclude_none=True,  # backend_requested and selection only where auto chose
        summary="Liveness, model, the backend that runs it, and limits",
    )
    async def health() -> HealthResponse:
        limits = {k: int(v) for k, v in asdict(config).items() if k.startswith("max_")}
        return HealthResponse(model=config.model_name, limits=limits, **_backend(answerer))

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics (text exposition format)")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": page_csp})

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        response = _error(exc.status, exc.code, exc.detail)
        if exc.status == 503:
            response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        for err in errors:
            if err["type"] == "json_invalid":
                reason = err.get("ctx", {}).get("error", "JSON decode error")
                return _error(
                    400, "invalid_json", f"the body is not valid JSON: {reason} at character {err['loc'][-1]}"
                )
        return _error(422, "invalid_request", "; ".join(_problem(err) for err in errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_"))
        detail = exc.detail
        if exc.status_code == 400:
            detail = "the body could not be parsed; send UTF-8 JSON"
        elif exc.status_code == 404:
            detail = f"no route {request.url.path}; see /docs for the API"
        return _error(exc.status_code, code, str(detail))

    @app.exception_handler(ModelError)
    async def model_error(request: Request, exc: ModelError) -> JSONResponse:
        return _error(500, "model_error", f"the model failed on the batch that held this request: {exc}")

    @app.exception_handler(BatcherClosed)
    async def closed(request: Request, exc: BatcherClosed) -> JSONResponse:
        return _error(503, "unavailable", f"{exc}; retry later")

    # The last added middleware is the outermost: metrics see the 413s of the body limit too.
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    routes = [r.path for r in app.routes if hasattr(r, "path")]
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)
    return app


def _backend(answerer: Answerer) -> dict[str, Any]:
    """The /health fields of the backend that runs: its name, and with `auto`, what was asked and why."""
    runner = answerer.runner
    if runner.selection is None:
        return {"backend": runner.name}
    return {
        "backend": runner.name,
        "backend_requested": answerer.config.backend,
        "selection": runner.selection,
    }


def _response(prediction: Prediction, latency_ms: float) -> AnswerResponse:
    return AnswerResponse(
        answer=prediction.text,
        is_null=prediction.is_null,
        answers=[
            SpanOut(text=s.text, start=s.start, end=s.end, score=s.score, probability=s.probability)
            for s in prediction.answers
        ],
        latency_ms=round(latency_ms, 3),
    )


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=code, detail=detail).model_dump(), status_code=status)


def _problem(err: dict[str, Any]) -> str:
    """One pydantic error as ``where: what``, e.g. ``items.2.top_k: Input should be ... <= 20``."""
    loc = [str(part) for part in err.get("loc", ()) if part != "body"]
    where = ".".join(loc) or "body"
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "missing" and not loc:
        message = "a JSON body is required"
    elif err.get("type") in ("model_attributes_type", "model_type", "dict_type") and not loc:
        message = "the body must be a JSON object, sent with Content-Type: application/json"
    elif err.get("type") == "extra_forbidden":
        message = "unknown field (allowed: question, context, top_k; items for /v1/answer/batch)"
    return f"{where}: {message}"


def _ranges(indices: list[int]) -> str:
    shown = ", ".join(map(str, indices[:10]))
    return shown + (f" and {len(indices) - 10} more" if len(indices) > 10 else "")


def _page() -> tuple[str, str]:
    """The web page and a Content-Security-Policy that lets only its own inline script and style run."""
    html = resources.files("tinyroberta_es.serve").joinpath("static/index.html").read_text("utf-8")

    def digest(pattern: str) -> str:
        blocks = re.findall(pattern, html, flags=re.S)
        return " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks
        )

    csp = (
        f"default-src 'none'; script-src {digest(r'<script>(.*?)</script>')}; "
        f"style-src {digest(r'<style>(.*?)</style>')}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'"
    )
    return html, csp
