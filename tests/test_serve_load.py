"""A bounded load test of `tinyroberta-es serve`: 400 requests from 16 clients, bad and long ones mixed in.

The server is the real command in a child process (its own interpreter and GIL) with a tiny random model;
the clients are httpx coroutines in this process (`tinyroberta_es.serve.load`). 10% of the requests are
malformed, 10% over a size limit and 10% carry contexts of 20,000 characters (tens of windows each). Every
request must get a response (none dropped or timed out), none a 5xx; malformed ones get 400/422, oversized
ones 413 with their code, valid ones an answer that is a span of their context. Latency is printed, never
asserted: the real-model numbers come from `benchmarks/serve_load.py`.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from serve_helpers import build_tiny_model
from tinyroberta_es.data.schema import Example
from tinyroberta_es.serve.background import ServerProcess
from tinyroberta_es.serve.config import ServeConfig
from tinyroberta_es.serve.load import build_plan, metric_total, run_load, summarize
from tinyroberta_es.tiny import SPANISH_TEXTS

pytestmark = pytest.mark.slow

LIMITS = ServeConfig(max_context_chars=20_000, max_batch_items=4, max_body_bytes=100_000)
SERVER_FLAGS = {
    "--max-batch": 16,
    "--batch-wait-ms": 5,
    "--threads": 1,  # the clients need the other core of a 2-core machine
    "--max-context-chars": LIMITS.max_context_chars,
    "--max-batch-items": LIMITS.max_batch_items,
    "--max-body-bytes": LIMITS.max_body_bytes,
    "--max-length": 128,
    "--doc-stride": 64,
    # 16 clients x a 20k-character context (~35k tokens at 128-token windows) always fit: no 503 by design
    "--max-queue-tokens": 600_000,
}


def examples() -> list[Example]:
    """Questions about the sample's sentences: each context holds a few of them, the question one."""
    out = []
    for i, text in enumerate(SPANISH_TEXTS):
        context = " ".join(SPANISH_TEXTS[i : i + 3])
        out.append(Example(id=str(i), question=f"¿Qué dice «{text[:40]}»?", context=context))
    return out


def test_load_mixed_requests_all_answered_without_server_errors(tmp_path: Path):
    model = build_tiny_model(tmp_path)
    flags = [str(x) for pair in SERVER_FLAGS.items() for x in pair]
    plan = build_plan(examples(), 400, config=LIMITS, seed=0)
    with ServerProcess(["--model", str(model), *flags], tmp_path / "serve.log") as server:
        asyncio.run(run_load(server.url, [q for q in plan if q.kind == "short"][:32], concurrency=16))
        before = _batch_stats(server.url)
        t0 = time.perf_counter()
        results = asyncio.run(run_load(server.url, plan, concurrency=16))
        summary = summarize(plan, results, time.perf_counter() - t0)
        after = _batch_stats(server.url)
        log = server.log()
    print(json.dumps(summary, indent=2))
    assert summary["kinds"] == {"short": 280, "long": 40, "malformed": 40, "oversized": 40}
    assert summary["no_response"] == 0, summary
    assert summary["server_errors"] == 0, (summary, log[-3000:])
    assert summary["wrong"] == 0, summary["wrong_examples"]
    for request, result in zip(plan, results, strict=True):
        assert result.headers.get("x-request-id"), "every response carries X-Request-Id"
        if request.kind in ("malformed", "oversized"):
            assert set(result.body) == {"error", "detail"}, result.body
    batches, questions = after[0] - before[0], after[1] - before[1]
    assert questions >= 320  # every short and long question reached the model
    assert questions / max(batches, 1) > 1  # 16 concurrent clients: the server batched them


def _batch_stats(url: str) -> tuple[float, float]:
    """(model calls, questions answered) so far, from the server's /metrics."""
    return metric_total(url, "tinyroberta_es_batch_size_count"), metric_total(
        url, "tinyroberta_es_batch_size_sum"
    )
