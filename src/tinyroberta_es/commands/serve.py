"""`tinyroberta-es serve`: answer questions over HTTP (JSON API, Prometheus metrics and a web page)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tinyroberta_es.commands.predict import (
    add_inference_arguments,
    answerer_from_args,
    check_inference_flags,
    describe_backend,
)

HELP = "serve a QA model over HTTP: JSON API with server-side batching, /metrics and a web page at /"

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="QA model folder (config, weights, tokenizer) or Hub id"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    add_inference_arguments(parser)  # --backend and --threads among them
    parser.add_argument("--max-batch", type=int, default=16, help="questions per model call (default 16)")
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long a question waits for others to share its model call (default 5)",
    )
    parser.add_argument(
        "--max-context-chars", type=int, default=20_000, help="longer contexts get 413 (default 20000)"
    )
    parser.add_argument(
        "--max-batch-items", type=int, default=32, help="items per batch request, more get 413 (default 32)"
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=1_000_000, help="larger bodies get 413 (default 1000000)"
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="questions waiting for the model; requests beyond it get 503 with Retry-After (default 256)",
    )


def run(args: argparse.Namespace) -> None:
    from tinyroberta_es.errors import UserError

    try:
        import uvicorn

        from tinyroberta_es.serve.app import ServeConfig, create_app
    except ImportError as err:
        raise UserError(
            f"the server needs FastAPI, uvicorn and prometheus-client ({err.name} is missing): "
            "pip install 'tinyroberta-es[serve]'"
        ) from None
    problems = [] if 0 <= args.port <= 65535 else [f"--port {args.port} must be in 0..65535"]
    check_inference_flags(args, *problems)
    config = ServeConfig(
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        max_context_chars=args.max_context_chars,
        max_batch_items=args.max_batch_items,
        max_body_bytes=args.max_body_bytes,
        max_queue=args.max_queue,
        model_name=Path(args.model).name if Path(args.model).is_dir() else args.model,
    )
    answerer = answerer_from_args(args)  # /health reports the backend it runs (with auto, the one chosen)
    log.info(
        "serving %s on %s at http://%s:%d (page at /, API docs at /docs)",
        args.model,
        describe_backend(answerer.runner),
        args.host,
        args.port,
    )
    uvicorn.run(create_app(answerer, config), host=args.host, port=args.port, log_level="info")
