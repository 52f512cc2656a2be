"""A bounded load test of `tinyroberta-es serve`: 500 requests from 16 concurrent clients, bad ones mixed in.

The server is the real command in a child process (its own interpreter and GIL) with a tiny random model;
the clients are httpx coroutines in this process. About 10% of the requests are malformed and 5% are over a
size limit. Every request must get a response (none dropped or timed out), none a 5xx; malformed ones get
400/422, oversized ones 413, valid ones an answer that is a span of their context. The p50/p99 latency and
the counts are printed, and written as JSON to $TINYROBERTA_ES_LOAD_REPORT when it is set.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from tinyroberta_es.serve.background import ServerProcess
from tinyroberta_es.tiny import SPANISH_TEXTS, create_tiny_qa_model, spanish_texts, train_tokenizer

pytestmark = pytest.mark.slow

N_REQUESTS, CONCURRENCY, SEED = 500, 16, 0
N_MALFORMED, N_OVERSIZED = 50, 25  # 10% and 5%
SERVER_FLAGS = {
    "--max-batch": 16,
    "--batch-wait-ms": 5,
    "--threads": 1,  # the clients need the other core of a 2-core machine
    "--max-context-chars": 2000,
    "--max-batch-items": 4,
    "--max-body-bytes": 50_000,
}
JSON = {"content-type": "application/json"}


def valid_request(rng: random.Random) -> tuple[str, dict]:
    """A single question (90%) or a batch of 2 to 4, on contexts of 1 to 6 sentences."""

    def item() -> dict:
        context = " ".join(rng.sample(SPANISH_TEXTS, rng.randint(1, 6)))
        return {"question": rng.choice(SPANISH_TEXTS)[:60], "context": context, "top_k": rng.randint(1, 3)}

    if rng.random() < 0.1:
        return "/v1/answer/batch", {"items": [item() for _ in range(rng.randint(2, 4))]}
    return "/v1/answer", item()


def malformed_request(i: int) -> tuple[str, bytes]:
    ok = {"question": "¿Dónde?", "context": "En Madrid."}
    bodies = [
        b'{"question": "a", "context": ',
        b"\xff\xfe not utf-8",
        json.dumps(ok | {"question": ""}).encode(),
        json.dumps(ok | {"context": "  \n"}).encode(),
        json.dumps(ok | {"top_k": 0}).encode(),
        json.dumps(ok | {"top_k": 21}).encode(),
        json.dumps({"question": "¿Dónde?"}).encode(),
        json.dumps(ok | {"topk": 2}).encode(),
        json.dumps([ok]).encode(),
        json.dumps({"items": []}).encode(),
    ]
    body = bodies[i % len(bodies)]
    return ("/v1/answer/batch" if body.startswith(b'{"items"') else "/v1/answer"), body


def oversized_request(i: int) -> tuple[str, bytes, str]:
    ok = {"question": "¿Dónde?", "context": "En Madrid."}
    cases = [
        ("/v1/answer", ok | {"context": "palabra " * 300}, "context_too_long"),  # 2400 characters
        ("/v1/answer/batch", {"items": [ok] * 5}, "too_many_items"),
        ("/v1/answer", ok | {"context": "x" * 60_000}, "body_too_large"),
    ]
    route, body, code = cases[i % len(cases)]
    return route, json.dumps(body).encode(), code


def request_plan() -> list[dict]:
    rng = random.Random(SEED)
    kinds = ["malformed"] * N_MALFORMED + ["oversized"] * N_OVERSIZED
    kinds += ["valid"] * (N_REQUESTS - len(kinds))
    rng.shuffle(kinds)
    plan = []
    for i, kind in enumerate(kinds):
        if kind == "valid":
            route, payload = valid_request(rng)
            plan.append(
                {"kind": kind, "route": route, "body": json.dumps(payload).encode(), "payload": payload}
            )
        elif kind == "malformed":
            route, body = malformed_request(i)
            plan.append({"kind": kind, "route": route, "body": body})
        else:
            route, body, code = oversized_request(i)
            plan.append({"kind": kind, "route": route, "body": body, "code": code})
    return plan


async def run_load(url: str, plan: list[dict]) -> list[dict]:
    """Send `plan` from CONCURRENCY clients; one result per request (status None when no response came)."""
    results: list[dict] = [{} for _ in plan]
    next_index = iter(range(len(plan)))
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def worker() -> None:
            for i in next_index:
                request = plan[i]
                t0 = time.perf_counter()
                try:
                    response = await client.post(request["route"], content=request["body"], headers=JSON)
                    results[i] = {"status": response.status_code, "json": response.json()}
                except (httpx.HTTPError, json.JSONDecodeError) as err:
                    results[i] = {"status": None, "error": f"{type(err).__name__}: {err}"}
                results[i]["ms"] = (time.perf_counter() - t0) * 1000

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return results


def check_answer(body: dict, payload: dict) -> None:
    for item, result in zip(payload.get("items", [payload]), body.get("results", [body]), strict=True):
        assert 1 <= len(result["answers"]) <= item["top_k"]
        for span in result["answers"]:
            assert item["context"][span["start"] : span["end"]] == span["text"]


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 90, 99)} | {
        "max": round(float(a.max()), 2)
    }


def test_load_mixed_requests_all_answered_without_server_errors(tmp_path: Path):
    tokenizer = train_tokenizer("bpe", spanish_texts(), tmp_path / "tokenizer", vocab_size=1000)
    model = create_tiny_qa_model(tmp_path / "model", tokenizer, seed=3)
    flags = [str(x) for pair in SERVER_FLAGS.items() for x in pair]
    plan = request_plan()
    with ServerProcess(["--model", str(model), *flags], tmp_path / "serve.log") as server:
        asyncio.run(run_load(server.url, request_plan()[:32]))  # warm-up, not counted
        before = _batch_stats(server.url)
        t0 = time.perf_counter()
        results = asyncio.run(run_load(server.url, plan))
        wall = time.perf_counter() - t0
        after = _batch_stats(server.url)

    dropped = [(i, r) for i, r in enumerate(results) if r.get("status") is None]
    assert not dropped, f"{len(dropped)} requests got no response, e.g. {dropped[:3]}"
    statuses = Counter(r["status"] for r in results)
    assert not [s for s in statuses if s >= 500], f"server errors: {statuses}\n{server.log()[-3000:]}"
    for request, result in zip(plan, results, strict=True):
        if request["kind"] == "valid":
            assert result["status"] == 200, (request["body"][:200], result)
            check_answer(result["json"], request["payload"])
        elif request["kind"] == "malformed":
            assert result["status"] in (400, 422), (request["body"][:200], result)
            assert set(result["json"]) == {"error", "detail"}
        else:
            assert result["status"] == 413, (request["body"][:200], result)
            assert result["json"]["error"] == request["code"]

    batches, examples = after[0] - before[0], after[1] - before[1]
    report = {
        "requests": N_REQUESTS,
        "concurrency": CONCURRENCY,
        "kinds": dict(Counter(r["kind"] for r in plan)),
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "dropped": len(dropped),
        "server_errors": sum(v for k, v in statuses.items() if k >= 500),
        "wall_s": round(wall, 2),
        "requests_per_s": round(N_REQUESTS / wall, 1),
        "latency_ms": {
            "all": percentiles([r["ms"] for r in results]),
            "valid": percentiles(
                [r["ms"] for q, r in zip(plan, results, strict=True) if q["kind"] == "valid"]
            ),
            "rejected": percentiles(
                [r["ms"] for q, r in zip(plan, results, strict=True) if q["kind"] != "valid"]
            ),
        },
        "model_calls": batches,
        "mean_batch_size": round(examples / max(batches, 1), 2),
        "server_flags": SERVER_FLAGS,
        "model": "tiny random RoBERTa QA model (2 layers, hidden 64, byte-level BPE of 1000 pieces)",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "client": "httpx.AsyncClient, latency measured per request from send to parsed response",
        "command": "TINYROBERTA_ES_LOAD_REPORT=benchmarks/results/serve-load.json "
        "python -m pytest -s tests/test_serve_load.py",
    }
    print(json.dumps(report, indent=2))
    if os.environ.get("TINYROBERTA_ES_LOAD_REPORT"):
        Path(os.environ["TINYROBERTA_ES_LOAD_REPORT"]).write_text(json.dumps(report, indent=2) + "\n")
    assert report["mean_batch_size"] > 1  # 16 concurrent clients: the server batched them


def _batch_stats(url: str) -> tuple[float, float]:
    """(model calls, questions answered) so far, from the server's /metrics."""
    values = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            values[sample.name] = sample.value
    return values.get("tinyroberta_es_batch_size_count", 0.0), values.get(
        "tinyroberta_es_batch_size_sum", 0.0
    )
