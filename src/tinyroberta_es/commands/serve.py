"""`tinyroberta-es serve`: answer questions over HTTP (JSON API, Prometheus metrics and a web page)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from tinyroberta_es.commands.predict import (
    add_inference_arguments,
    answerer_from_args,
    check_inference_flags,
    describe_backend,
)
from tinyroberta_es.errors import UserError
from tinyroberta_es.serve.config import ServeConfig
from tinyroberta_es.serve.logs import LOG_FORMATS  # serve.logs imports only the standard library

HELP = (
    "serve a QA model over HTTP: JSON API with server-side batching, /livez /readyz /metrics, /docs and a "
    "web page at /"
)
API_KEY_VARIABLE = "TINYROBERTA_ES_API_KEY"

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    d = ServeConfig()  # the defaults live there, once
    parser.add_argument(
        "--model", required=True, help="QA model folder (config, weights, tokenizer) or Hub id"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    add_inference_arguments(parser)  # --backend and --threads among them
    for flag, kind, default, help_text in (
        ("--max-batch", int, d.max_batch, "questions per model call"),
        (
            "--max-batch-tokens",
            int,
            d.max_batch_tokens,
            "tokens per model call (a question larger than this runs alone)",
        ),
        ("--batch-wait-ms", float, d.batch_wait_ms, "how long a question waits for others to share its call"),
        ("--max-context-chars", int, d.max_context_chars, "longer contexts get 413"),
        ("--max-question-chars", int, d.max_question_chars, "longer questions get 413"),
        ("--max-batch-items", int, d.max_batch_items, "items (or SQuAD questions) per request, more get 413"),
        ("--max-body-bytes", int, d.max_body_bytes, "larger bodies get 413"),
        (
            "--max-queue-tokens",
            int,
            d.max_queue_tokens,
            "tokens waiting for the model: requests beyond it get 503 with Retry-After, larger ones 413",
        ),
        (
            "--request-timeout-s",
            float,
            d.request_timeout_s,
            "deadline of a request, 504 past it; the header X-Request-Timeout: SECONDS may ask for less",
        ),
        (
            "--shutdown-timeout-s",
            float,
            d.shutdown_timeout_s,
            "on SIGTERM: stop accepting, answer what is queued for up to this long (503 for the rest), exit",
        ),
    ):
        parser.add_argument(flag, type=kind, default=default, help=f"{help_text} (default {default})")
    parser.add_argument(
        "--api-key-file",
        default=None,
        help=f"file holding an API key (or set ${API_KEY_VARIABLE}): /v1/* then need the header "
        "'Authorization: Bearer KEY' (401 otherwise); the page asks for the key; probes, /docs stay open",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text lines, or json: one JSON object per line with request_id and access fields (default text)",
    )


def run(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from tinyroberta_es.serve.app import create_app
        from tinyroberta_es.serve.lifecycle import RESPONSE_GRACE_S, DrainingServer
        from tinyroberta_es.serve.logs import configure_logging
    except ImportError as err:
        raise UserError(
            f"the server needs FastAPI, uvicorn, prometheus-client and fastapi-offline ({err.name} is "
            "missing): pip install 'tinyroberta-es[serve]'"
        ) from None
    problems = [] if 0 <= args.port <= 65535 else [f"--port {args.port} must be in 0..65535"]
    check_inference_flags(args, *problems)
    config = ServeConfig(
        max_batch=args.max_batch,
        max_batch_tokens=args.max_batch_tokens,
        batch_wait_ms=args.batch_wait_ms,
        max_context_chars=args.max_context_chars,
        max_question_chars=args.max_question_chars,
        max_batch_items=args.max_batch_items,
        max_body_bytes=args.max_body_bytes,
        max_queue_tokens=args.max_queue_tokens,
        request_timeout_s=args.request_timeout_s,
        shutdown_timeout_s=args.shutdown_timeout_s,
        model_name=Path(args.model).name if Path(args.model).is_dir() else args.model,
        api_key=_api_key(args.api_key_file),
    )
    configure_logging(args.log_format)
    answerer = answerer_from_args(args)  # /health reports the backend it runs (with auto, the one chosen)
    log.info(
        "serving %s on %s at http://%s:%d (page at /, API docs at /docs%s); warming up",
        args.model,
        describe_backend(answerer.runner),
        args.host,
        args.port,
        ", API key required for /v1" if config.api_key else "",
    )
    app = create_app(answerer, config)
    server_config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_config=None,  # uvicorn's loggers propagate to ours (text or JSON lines)
        access_log=False,  # RequestContext writes one access line per request, with its id
        timeout_graceful_shutdown=config.shutdown_timeout_s + RESPONSE_GRACE_S,
    )
    DrainingServer(server_config, app.state.lifecycle).run()


def _api_key(path: str | None) -> str | None:
    """The API key from --api-key-file, else from $TINYROBERTA_ES_API_KEY, else None (no key).

    ServeConfig strips the key; the file's is stripped here too, to tell an empty file apart.
    """
    if path is None:
        return os.environ.get(API_KEY_VARIABLE)
    try:
        key = Path(path).read_text("utf-8").strip()
    except OSError as err:
        raise UserError(
            f"--api-key-file {path}: cannot read it ({err.strerror}); give a file holding the key"
        ) from None
    if not key:
        raise UserError(f"--api-key-file {path} is empty: write the key in it")
    return key
