"""Load-test a running `tinyroberta-es serve`: a mixed request plan, concurrent clients, and a summary.

A plan is a shuffled list of requests of four kinds, each with the status it must get:

- ``short``: a real question with its own paragraph (200, an answer that is a span of its context);
- ``long``: the same with the paragraph padded by other paragraphs to about `long_chars` characters, within
  the server's context limit (200): tens of windows each;
- ``malformed``: bodies that are not JSON, not UTF-8 or do not fit the schema (400 or 422);
- ``oversized``: a context, an item list or a body over the server's limits (413 and its code).

`run_load` sends a plan from `concurrency` clients (httpx coroutines), each taking the next request as soon as
its previous one is answered (closed loop), and records status, body and latency per request; a request that
got no response records the error's kind instead. Closed loop is how a fixed pool of clients behaves, but it
confounds comparisons: clients held by slow requests send fewer fast ones. `run_schedule` sends each request
at a set time whatever the others do (open loop, e.g. Poisson arrivals from `poisson_times`), so two runs
can give the same short requests at the same moments, with and without long ones among them. With
``fresh_connections`` every request of `run_load` opens its own TCP connection, so a refused connection (the
server stopped listening) is told apart from a request the server accepted and dropped. `summarize` counts
statuses and checks each one against its kind.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from tinyroberta_es.data.schema import Example
from tinyroberta_es.serve.config import ServeConfig
from tinyroberta_es.timing import P99_MIN_SAMPLES

JSON = {"content-type": "application/json"}
KINDS = ("short", "long", "malformed", "oversized")


@dataclass
class PlannedRequest:
    kind: str
    route: str
    body: bytes
    payload: dict[str, Any] | None = None  # the valid request, to check the answer against
    code: str | None = None  # the error code an oversized request must get


@dataclass
class Result:
    status: int | None  # None: no response
    ms: float
    body: Any = None
    error: str | None = None  # for no response: "refused" (never accepted), else the exception's name
    headers: dict[str, str] = field(default_factory=dict)


def build_plan(
    examples: Sequence[Example],
    n: int,
    *,
    shares: dict[str, float] | None = None,
    long_chars: int = 20_000,
    config: ServeConfig | None = None,
    seed: int = 0,
) -> list[PlannedRequest]:
    """`n` requests: `shares` of long, malformed and oversized ones (default 10% each), the rest short.

    Oversized requests are built against `config`'s size limits (default: the server's defaults).
    """
    shares = shares if shares is not None else {"long": 0.1, "malformed": 0.1, "oversized": 0.1}
    config = config or ServeConfig()
    if long_chars > config.max_context_chars:
        raise ValueError(f"long contexts of {long_chars} characters are over --max-context-chars")
    unknown = set(shares) - set(KINDS[1:])
    if unknown:
        raise ValueError(f"unknown request kinds {sorted(unknown)}; use long, malformed, oversized")
    rng = random.Random(seed)
    kinds = [kind for kind, share in shares.items() for _ in range(round(n * share))]
    kinds += ["short"] * (n - len(kinds))
    rng.shuffle(kinds)
    paragraphs = sorted({ex.context for ex in examples})
    plan = []
    for i, kind in enumerate(kinds):
        example = rng.choice(examples)
        if kind in ("short", "long"):
            context = example.context
            if kind == "long":
                context = _pad(context, paragraphs, long_chars, rng)
            payload = {"question": example.question, "context": context, "top_k": rng.randint(1, 3)}
            plan.append(PlannedRequest(kind, "/v1/answer", json.dumps(payload).encode(), payload))
        elif kind == "malformed":
            route, body = _malformed(i, example)
            plan.append(PlannedRequest(kind, route, body))
        else:
            route, body, code = _oversized(i, example, config)
            plan.append(PlannedRequest(kind, route, body, code=code))
    return plan


def _pad(context: str, paragraphs: Sequence[str], chars: int, rng: random.Random) -> str:
    """`context` followed by other paragraphs until it is `chars` characters long (cut at the end)."""
    parts = [context]
    size = len(context)
    while size < chars:
        parts.append(rng.choice(paragraphs))
        size += len(parts[-1]) + 1
    return "\n".join(parts)[:chars]


def _malformed(i: int, example: Example) -> tuple[str, bytes]:
    ok = {"question": example.question, "context": example.context}
    bodies = [
        b'{"question": "a", "context": ',
        b"\xff\xfe not utf-8",
        json.dumps(ok | {"question": ""}).encode(),
        json.dumps(ok | {"context": "  \n"}).encode(),
        json.dumps(ok | {"top_k": 0}).encode(),
        json.dumps(ok | {"top_k": 21}).encode(),
        json.dumps({"question": example.question}).encode(),
        json.dumps(ok | {"topk": 2}).encode(),
        json.dumps([ok]).encode(),
        json.dumps({"items": []}).encode(),
    ]
    body = bodies[i % len(bodies)]
    return ("/v1/answer/batch" if body.startswith(b'{"items"') else "/v1/answer"), body


def _oversized(i: int, example: Example, config: ServeConfig) -> tuple[str, bytes, str]:
    ok = {"question": example.question, "context": example.context}
    long_context = (example.context + " ") * (config.max_context_chars // max(len(example.context), 1) + 1)
    cases = [
        ("/v1/answer", ok | {"context": long_context[: config.max_context_chars + 1]}, "context_too_long"),
        ("/v1/answer/batch", {"items": [ok] * (config.max_batch_items + 1)}, "too_many_items"),
        ("/v1/answer", ok | {"context": "x" * (config.max_body_bytes + 1)}, "body_too_large"),
    ]
    route, body, code = cases[i % len(cases)]
    return route, json.dumps(body).encode(), code


async def run_load(
    url: str,
    plan: Sequence[PlannedRequest],
    *,
    concurrency: int = 32,
    timeout_s: float = 120,
    fresh_connections: bool = False,
) -> list[Result]:
    """Send `plan` from `concurrency` clients; one `Result` per request, in plan order."""
    results: list[Result | None] = [None] * len(plan)
    next_index = iter(range(len(plan)))
    keepalive = 0 if fresh_connections else concurrency
    pool = httpx.Limits(max_connections=concurrency, max_keepalive_connections=keepalive)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=pool) as client:

        async def worker() -> None:
            for i in next_index:
                results[i] = await _send(client, plan[i])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [r for r in results if r is not None]


def poisson_times(rate_per_s: float, n: int, rng: random.Random) -> list[float]:
    """`n` arrival times (seconds from 0) of a Poisson process of `rate_per_s`."""
    t, times = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate_per_s)
        times.append(t)
    return times


async def run_schedule(
    url: str,
    plan: Sequence[PlannedRequest],
    times: Sequence[float],
    *,
    timeout_s: float = 120,
) -> list[Result]:
    """Send request i at `times[i]` seconds after the start, however many are in flight (open loop)."""
    if len(times) != len(plan):
        raise ValueError(f"{len(times)} times for {len(plan)} requests")
    pool = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=pool) as client:
        start = time.perf_counter()

        async def send(request: PlannedRequest, at: float) -> Result:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
            return await _send(client, request)

        return list(await asyncio.gather(*(send(q, t) for q, t in zip(plan, times, strict=True))))


async def _send(client: httpx.AsyncClient, request: PlannedRequest) -> Result:
    """Post one request; its status, parsed body and latency, or for no response the error's kind."""
    t0 = time.perf_counter()
    try:
        response = await client.post(request.route, content=request.body, headers=JSON)
        try:
            body = response.json()
        except json.JSONDecodeError:
            body = response.text
        result = Result(response.status_code, 0.0, body, headers=dict(response.headers))
    except httpx.ConnectError:
        result = Result(None, 0.0, error="refused")
    except httpx.HTTPError as err:
        result = Result(None, 0.0, error=type(err).__name__)
    result.ms = (time.perf_counter() - t0) * 1000
    return result


def metric_total(url: str, name: str, **labels: str) -> float:
    """`sample_value` of `name` and `labels` in a server's /metrics."""
    return sample_value(httpx.get(f"{url}/metrics").text, name, **labels)


def sample_value(exposition: str, name: str, **labels: str) -> float:
    """The first sample `name` with `labels` among its labels (0.0 when absent: nothing counted yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def check(request: PlannedRequest, result: Result) -> str | None:
    """Why `result` is wrong for `request`, or None when it is what the kind must get."""
    if result.status is None:
        return f"no response ({result.error})"
    if request.kind in ("short", "long"):
        if result.status != 200:
            return f"status {result.status}: {result.body}"
        payload = request.payload or {}
        for span in result.body.get("answers", []):
            if payload["context"][span["start"] : span["end"]] != span["text"]:
                return f"answer {span} is not a span of its context"
        if not 1 <= len(result.body.get("answers", [])) <= payload["top_k"]:
            return f"{len(result.body.get('answers', []))} answers for top_k {payload['top_k']}"
        return None
    if request.kind == "malformed":
        return None if result.status in (400, 422) else f"status {result.status} for a malformed body"
    if result.status != 413 or not isinstance(result.body, dict) or result.body.get("error") != request.code:
        return f"status {result.status} {result.body} for an oversized request (wants 413 {request.code})"
    return None


def percentiles(values: Sequence[float]) -> dict[str, float] | None:
    """p50, p90, p99 and max in ms (p99 only from `P99_MIN_SAMPLES` samples), None without values."""
    if not len(values):
        return None
    a = np.asarray(values)
    out = {f"p{q}": round(float(np.percentile(a, q)), 1) for q in (50, 90)}
    out["p99"] = round(float(np.percentile(a, 99)), 1) if len(a) >= P99_MIN_SAMPLES else None
    return out | {"max": round(float(a.max()), 1), "n": len(a)}


def summarize(plan: Sequence[PlannedRequest], results: Sequence[Result], wall_s: float) -> dict[str, Any]:
    """Counts by kind and status, wrong answers, and latency percentiles per kind."""
    statuses = Counter(str(r.status) if r.status is not None else f"none:{r.error}" for r in results)
    wrong = [
        {"index": i, "kind": q.kind, "why": why}
        for i, (q, r) in enumerate(zip(plan, results, strict=True))
        if (why := check(q, r)) is not None
    ]
    return {
        "requests": len(plan),
        "kinds": dict(Counter(q.kind for q in plan)),
        "status_counts": dict(sorted(statuses.items())),
        "server_errors": sum(1 for r in results if r.status is not None and r.status >= 500),
        "no_response": sum(1 for r in results if r.status is None),
        "wrong": len(wrong),
        "wrong_examples": wrong[:5],
        "wall_s": round(wall_s, 2),
        "requests_per_s": round(len(plan) / wall_s, 1) if wall_s > 0 else None,
        "latency_ms": {
            kind: percentiles([r.ms for q, r in zip(plan, results, strict=True) if q.kind == kind])
            for kind in KINDS
            if any(q.kind == kind for q in plan)
        },
    }
