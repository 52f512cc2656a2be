"""The HTTP API and web page of `tinyroberta-es serve`, as a FastAPI app factory.

Routes: ``POST /v1/answer`` (one question), ``POST /v1/answer/batch`` (several, each with its own top_k and an
optional ``id`` echoed in its result: JSON Lines records ``{"id", "question", "context"}`` fit as items),
``POST /v1/answer/squad?top_k=N`` (a SQuAD-layout body, answers optional and ignored: one result per question
with its id, and ``predictions`` as ``{id: answer}``), ``GET /livez`` (the process is up), ``GET /readyz``
(200 once the model answered its warm-up; 503 before, and while shutting down), ``GET /health`` (/readyz with
details: model, backend, limits), ``GET /metrics`` (Prometheus text), ``GET /`` (the Spanish page), ``/docs``
(Swagger UI from installed files, no CDN) and ``/openapi.json``.

How one request is kept from hurting another (per-item checks before queueing, token budgets, deadlines,
disconnects) is in serve/answering.py; how questions share the model, window by window so that short ones
never wait behind a long context, in serve/batching.py and serve/engines.py; request ids, JSON logs and
security headers in serve/middleware.py and serve/logs.py; readiness and graceful shutdown in
serve/lifecycle.py. Every response carries ``X-Request-Id`` (the client's when sane, else a new one).

Every error, whatever raised it, is ``{"error": code, "detail": message}`` with the status below:

- 400 ``invalid_json``: the body is not JSON (or not UTF-8).
- 401 ``unauthorized``: the server has an API key (--api-key-file or $TINYROBERTA_ES_API_KEY) and a ``/v1``
  request did not send ``Authorization: Bearer <key>``. The page, /docs, probes and /metrics stay open.
- 422 ``invalid_request``: the JSON does not fit the schema (a missing, unknown or mistyped field, an empty
  question or context, top_k outside 1..20, no items), all problems at once; a SQuAD body the SQuAD reader
  refuses; a bad ``X-Request-Timeout``; or an item the model's settings cannot answer (e.g. a question so
  long that --doc-stride no longer fits), named as ``items.N``. Checked per item before queueing: such an
  item fails its own request only.
- 413 ``context_too_long`` / ``question_too_long`` / ``too_many_items`` / ``too_many_tokens`` /
  ``body_too_large``: over a size limit of this server (--max-context-chars, --max-question-chars,
  --max-batch-items, --max-queue-tokens, --max-body-bytes). The request is valid but too big for this server,
  and the fix is to send less, so these are 413, told apart from schema errors by the status alone.
- 404, 405: unknown route or method.
- 500 ``model_error``: the model failed on this request's questions (run alone after a failed shared batch,
  so no other request gets it); 500 ``internal_error``: any other failure. Both bodies are generic and name
  the request id; the details are in the server log under that id.
- 503 ``overloaded`` (with ``Retry-After``, the queue's drain time in seconds): more tokens would wait for
  the model than --max-queue-tokens, so the server sheds load instead of letting every latency grow.
  503 ``unavailable``: shutting down (or the warm-up failed); a request queued when the shutdown began is
  answered if it can be within --shutdown-timeout-s, else it gets this.
- 504 ``deadline_exceeded``: not answered within its deadline (--request-timeout-s, or less with the
  ``X-Request-Timeout`` header in seconds); its questions never reach the model after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from http import HTTPStatus
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from tinyroberta_es import __version__
from tinyroberta_es.data.loading import parse_squad
from tinyroberta_es.errors import UserError
from tinyroberta_es.serve.answering import Answerer, Answering, ApiError
from tinyroberta_es.serve.batching import MicroBatcher
from tinyroberta_es.serve.config import ServeConfig
from tinyroberta_es.serve.engines import make_engine
from tinyroberta_es.serve.lifecycle import Lifecycle
from tinyroberta_es.serve.limits import BodySizeLimit
from tinyroberta_es.serve.metrics import MetricsMiddleware, ServerMetrics
from tinyroberta_es.serve.middleware import ApiKey, RequestContext, error_response
from tinyroberta_es.serve.schema import (
    MAX_TOP_K,
    AnswerRequest,
    AnswerResponse,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    HealthResponse,
    ProbeResponse,
    SquadRequest,
    SquadResponse,
)
from tinyroberta_es.serve.swagger import add_docs, inline_hashes

log = logging.getLogger(__name__)

__all__ = ["Answerer", "ServeConfig", "create_app"]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "invalid_json: the body is not JSON"},
    401: {"model": ErrorResponse, "description": "unauthorized: the server needs an API key (Bearer)"},
    413: {
        "model": ErrorResponse,
        "description": "context_too_long, question_too_long, too_many_items, too_many_tokens or "
        "body_too_large: over a server limit",
    },
    422: {"model": ErrorResponse, "description": "invalid_request: the request cannot be answered as sent"},
    500: {
        "model": ErrorResponse,
        "description": "model_error or internal_error (see the log, by request id)",
    },
    503: {
        "model": ErrorResponse,
        "description": "overloaded (see Retry-After) or unavailable (shutting down)",
    },
    504: {
        "model": ErrorResponse,
        "description": "deadline_exceeded (--request-timeout-s, X-Request-Timeout)",
    },
}
_HTTP_CODES = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed"}


def create_app(answerer: Answerer, config: ServeConfig | None = None) -> FastAPI:
    """A FastAPI app that answers with `answerer`; start it with uvicorn (it batches in its lifespan)."""
    config = config or ServeConfig()
    metrics = ServerMetrics()
    batcher = MicroBatcher(
        make_engine(answerer),
        max_batch=config.max_batch,
        max_batch_tokens=config.max_batch_tokens,
        wait_ms=config.batch_wait_ms,
        max_queue_tokens=config.max_queue_tokens,
        on_batch=metrics.record_batch,
        on_drop=metrics.record_drop,
    )
    backend = _backend(answerer)
    metrics.watch_queue(batcher)
    metrics.set_info(model=config.model_name, backend=backend["backend"], version=__version__)
    lifecycle = Lifecycle(config.shutdown_timeout_s)
    answering = Answering(answerer, batcher, config, lifecycle)
    page, page_csp = _page()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lifecycle.bind()
        answering.start()
        await batcher.start()
        warm_up = asyncio.ensure_future(answering.warm_up())
        try:
            yield
        finally:
            lifecycle.drain()
            warm_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warm_up
            await batcher.stop(timeout=lifecycle.drain_time_left())
            answering.stop()

    app = FastAPI(
        title="tinyroberta-es",
        version=__version__,
        summary="Extractive question answering in Spanish",
        description=__doc__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.config, app.state.metrics, app.state.batcher = config, metrics, batcher
    app.state.lifecycle = lifecycle
    add_docs(app)
    # With a key, the routes declare Bearer auth, so /docs shows "Authorize"; ApiKey below enforces it.
    auth = [Depends(HTTPBearer(auto_error=False))] if config.api_key else []

    @app.post(
        "/v1/answer",
        response_model=AnswerResponse,
        response_model_exclude_none=True,
        responses=ERROR_RESPONSES,
        dependencies=auth,
        summary="Answer one question about one context",
    )
    async def answer(body: AnswerRequest, request: Request) -> AnswerResponse:
        t0 = time.perf_counter()
        [result] = await answering.answer([body], request)
        result.latency_ms = round((time.perf_counter() - t0) * 1000, 3)
        return result

    @app.post(
        "/v1/answer/batch",
        response_model=BatchResponse,
        response_model_exclude_none=True,
        responses=ERROR_RESPONSES,
        dependencies=auth,
        summary="Answer several questions (each with its own context, top_k and optional id) in one request",
    )
    async def answer_batch(body: BatchRequest, request: Request) -> BatchResponse:
        t0 = time.perf_counter()
        _check_items(len(body.items), config)
        results = await answering.answer(body.items, request)
        return BatchResponse(results=results, latency_ms=round((time.perf_counter() - t0) * 1000, 3))

    @app.post(
        "/v1/answer/squad",
        response_model=SquadResponse,
        responses=ERROR_RESPONSES,
        dependencies=auth,
        summary="Answer every question of a SQuAD-layout body (answers optional and ignored), by id",
    )
    async def answer_squad(
        body: SquadRequest,
        request: Request,
        top_k: int = Query(1, ge=1, le=MAX_TOP_K, description="answers per question"),
    ) -> SquadResponse:
        t0 = time.perf_counter()
        squad = body.model_dump()
        if squad["version"] is None:
            del squad["version"]  # inferred, as for a file without one
        try:
            dataset = parse_squad(squad, "the body", bad_spans="keep", labels="optional")
        except UserError as err:
            raise ApiError(422, "invalid_request", str(err)) from None
        _check_items(len(dataset.examples), config, what="questions")
        items = [
            AnswerRequest.model_construct(question=ex.question, context=ex.context, top_k=top_k, id=ex.id)
            for ex in dataset.examples
        ]
        results = await answering.answer(items, request)
        return SquadResponse(
            results=results,
            predictions={r.id or "": r.answer for r in results},
            latency_ms=round((time.perf_counter() - t0) * 1000, 3),
        )

    def health_body() -> HealthResponse:
        limits = {k: int(v) for k, v in asdict(config).items() if k.startswith("max_")}
        return HealthResponse(
            status="ok" if lifecycle.ready else lifecycle.state,
            model=config.model_name,
            version=__version__,
            limits=limits,
            request_timeout_s=config.request_timeout_s,
            api_key_required=config.api_key is not None,
            **backend,
        )

    @app.get("/livez", response_model=ProbeResponse, summary="Liveness: the process is up")
    async def livez() -> ProbeResponse:
        return ProbeResponse(status="alive")

    @app.get(
        "/readyz",
        response_model=ProbeResponse,
        responses={503: {"model": ProbeResponse, "description": "starting, draining or failed"}},
        summary="Readiness: 200 once the model answered its warm-up, 503 before and while shutting down",
    )
    async def readyz() -> JSONResponse:
        status = "ready" if lifecycle.ready else lifecycle.state
        return JSONResponse({"status": status}, status_code=200 if lifecycle.ready else 503)

    @app.get(
        "/health",
        response_model=HealthResponse,
        response_model_exclude_none=True,  # backend_requested and selection only where auto chose
        responses={503: {"model": HealthResponse, "description": "not ready: starting, draining or failed"}},
        summary="Readiness with details: model, the backend that runs it, limits (200 when ready, else 503)",
    )
    async def health() -> JSONResponse:
        body = health_body().model_dump(exclude_none=True)
        return JSONResponse(body, status_code=200 if lifecycle.ready else 503)

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics (text exposition format)")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": page_csp})

    _add_error_handlers(app)
    # The last added middleware is the outermost: RequestContext sees everything (413s and 401s included),
    # metrics count the 401s and 413s.
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    if config.api_key:
        app.add_middleware(ApiKey, key=config.api_key)
    routes = [r.path for r in app.routes if hasattr(r, "path")]
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)
    app.add_middleware(RequestContext)
    return app


def _check_items(n: int, config: ServeConfig, what: str = "items") -> None:
    if n > config.max_batch_items:
        raise ApiError(
            413,
            "too_many_items",
            f"{n} {what}; the limit is {config.max_batch_items} per request (--max-batch-items): "
            "split them over several requests",
        )


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in the ``{"error", "detail"}`` shape (see the module doc for the table)."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        for err in errors:
            if err["type"] == "json_invalid":
                reason = err.get("ctx", {}).get("error", "JSON decode error")
                return error_response(
                    400, "invalid_json", f"the body is not valid JSON: {reason} at character {err['loc'][-1]}"
                )
        return error_response(422, "invalid_request", "; ".join(_problem(err) for err in errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_"))
        detail = exc.detail
        if exc.status_code == 400:
            detail = "the body could not be parsed; send UTF-8 JSON"
        elif exc.status_code == 404:
            detail = f"no route {request.url.path}; see /docs for the API"
        return error_response(exc.status_code, code, str(detail))


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
        message = "unknown field (allowed: question, context, top_k, id; items for /v1/answer/batch)"
    return f"{where}: {message}"


def _page() -> tuple[str, str]:
    """The web page and a Content-Security-Policy that lets only its own inline script and style run."""
    html = resources.files("tinyroberta_es.serve").joinpath("static/index.html").read_text("utf-8")
    csp = (
        f"default-src 'none'; script-src {inline_hashes(html, 'script')}; "
        f"style-src {inline_hashes(html, 'style')}; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return html, csp
