"""ASGI middleware of the server: request ids, security headers, the access log, the API key.

`RequestContext` is the outermost layer, so everything below it (the body limit's 413, the key's 401, an
exception nobody handled) gets the same treatment:

- the request id: the client's ``X-Request-Id`` when it is sane (1 to 128 characters of letters, digits and
  ``._:-``), else a new one; it is in `logs.REQUEST_ID` (so every log record of the request carries it), in
  ``request.state.request_id``, and in the response's ``X-Request-Id``;
- security headers on every response: ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
  and a ``Content-Security-Policy`` that forbids everything (``frame-ancestors 'none'`` included) unless the
  route set its own (the page and /docs do, each with ``frame-ancestors 'none'``);
- one access-log line per request (method, path, status, latency in ms);
- an exception that reaches it before a response started is logged with its traceback and answered with a
  generic 500 ``internal_error`` that names the request id, never the exception's text.

`ApiKey` refuses requests under ``/v1/`` without ``Authorization: Bearer KEY`` (401 ``unauthorized``),
comparing in constant time; everything else (the page, /docs, probes, /metrics) stays open.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tinyroberta_es.serve.logs import ACCESS_LOG, REQUEST_ID

log = logging.getLogger(__name__)

SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SECURITY_HEADERS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}
API_PREFIX = "/v1/"  # the routes `ApiKey` guards


def request_id_of(header: str | None) -> str:
    """The client's request id when it is sane, else a new random one (32 hex digits)."""
    if header is not None and SANE_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error in the server's shape, ``{"error": code, "detail": detail}`` (schema.ErrorResponse)."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def internal_error(request_id: str) -> JSONResponse:
    """The 500 for a failure inside the server: a generic text that points at the log, nothing internal."""
    return error_response(
        500,
        "internal_error",
        f"the server failed on this request; see the server log for request id {request_id}",
    )


class RequestContext:
    """Request id, security headers, access log and a last-resort 500 for every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw = headers.get(b"x-request-id")
        request_id = request_id_of(raw.decode("latin-1") if raw is not None else None)
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)
        status, t0 = 0, time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                out = MutableHeaders(scope=message)
                out["x-request-id"] = request_id
                for name, value in SECURITY_HEADERS.items():
                    out[name] = value
                if "content-security-policy" not in out:
                    out["content-security-policy"] = DEFAULT_CSP
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("unhandled error while serving %s %s", scope["method"], scope["path"])
            if status:
                raise  # the response started: nothing better to send
            await internal_error(request_id)(scope, receive, send_with_headers)
        finally:
            latency_ms = round((time.perf_counter() - t0) * 1000, 3)
            ACCESS_LOG.info(
                "%s %s %s %.1f ms",
                scope["method"],
                scope["path"],
                status or "-",
                latency_ms,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "latency_ms": latency_ms,
                },
            )
            REQUEST_ID.reset(token)


class ApiKey:
    """401 ``unauthorized`` for ``/v1/*`` requests without ``Authorization: Bearer <key>``."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.key):
            await self.app(scope, receive, send)
            return
        why = "a wrong API key" if scheme.lower() == b"bearer" else "no API key"
        response = error_response(
            401,
            "unauthorized",
            f"this server needs an API key and the request has {why}: "
            "send the header 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)
