"""The server's logs: the id of the request being served on every record, plain text or JSON lines.

`RequestContext` (serve/middleware.py) puts each request's id in `REQUEST_ID` for the code that serves it; a
record logged from elsewhere (the model thread) may carry it as ``extra={"request_id": ...}``.
`configure_logging` (called once by `tinyroberta-es serve`) makes every handler of the root logger add it:

- ``text`` (the default): the usual line, with ``[request ID]`` before the message when there is one;
- ``json``: one JSON object per record, ``{"time", "level", "logger", "message"}`` plus ``request_id`` when
  known, the fields of an access-log line (``method``, ``path``, ``status``, ``latency_ms``) and
  ``exception`` (the traceback) when one is attached.

uvicorn's own loggers propagate to the root logger (the command starts uvicorn with ``log_config=None``), so
its lines take the same format; its access log is off, replaced by `ACCESS_LOG` lines.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import datetime, timezone

LOG_FORMATS = ("text", "json")
REQUEST_ID: ContextVar[str | None] = ContextVar("tinyroberta_es_request_id", default=None)
ACCESS_LOG = logging.getLogger("tinyroberta_es.serve.access")
ACCESS_FIELDS = ("method", "path", "status", "latency_ms")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RequestIdFilter(logging.Filter):
    """Give every record a `request_id` attribute: its own extra, else the current request's, else None."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """The plain line, with ``[request ID] `` before the message of a record that has one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT, datefmt="%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        if request_id:
            record = logging.makeLogRecord(
                record.__dict__ | {"message": f"[request {request_id}] {record.message}"}
            )
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (one line: newlines inside strings are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            line["request_id"] = request_id
        line.update({key: getattr(record, key) for key in ACCESS_FIELDS if hasattr(record, key)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(log_format: str) -> None:
    """Format every root handler's records as `log_format` (``text`` or ``json``), with request ids."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
        handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
