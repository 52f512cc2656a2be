"""Load test of `tinyroberta-es serve` on a real model: mixed traffic, long contexts, and SIGTERM under load.

Three phases against the real command in a child process, with real XQuAD-es questions and paragraphs
(`tinyroberta_es.serve.load` builds and checks the requests):

1. mixed: N requests from C clients, 10% malformed, 10% oversized, 10% long contexts (~20k characters) and
   the rest short (a question with its own paragraph);
2. without long: the same plan minus its long requests. In this closed loop the comparison is confounded:
   clients held by long requests send fewer short ones, so the short ones meet a shorter queue with long ones
   mixed in than without; both runs are reported, but the target is read from phase 3;
3. interference, open loop: short requests at Poisson times (30% of the window throughput measured in phase
   2), once alone and once with long requests (40% more) at their own Poisson times, so the same short
   requests arrive at the same moments in both runs;
4. SIGTERM: a plan of short and long requests on fresh connections; SIGTERM after a few seconds. Every request
   the server accepted must be answered (200) or refused with 503; the process must exit within its
   --shutdown-timeout-s (plus the time to stop uvicorn).

Targets (issue 12): 0 5xx and nothing dropped in phases 1-3; the short requests' p99 with long ones at most 2x
their p99 without (phase 3); in phase 4 no accepted request left without a response.

    python benchmarks/serve_load.py --model runs/reproduction-small/teacher
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tinyroberta_es import atomic
from tinyroberta_es.bench import machine_info
from tinyroberta_es.data.loading import load_dataset
from tinyroberta_es.data.schema import Example
from tinyroberta_es.features import prepare_features
from tinyroberta_es.model_folder import load_fast_tokenizer
from tinyroberta_es.serve.background import ServerProcess
from tinyroberta_es.serve.config import ServeConfig
from tinyroberta_es.serve.load import (
    PlannedRequest,
    build_plan,
    metric_total,
    poisson_times,
    run_load,
    run_schedule,
    summarize,
)

ROOT = Path(__file__).resolve().parents[1]
XQUAD_ES = ROOT.parent / "shared" / "data" / "xquad_es" / "xquad.es.json"
OUT = ROOT / "benchmarks" / "results" / "serve-load.json"
SHUTDOWN_TIMEOUT_S = 20.0
SHORT_LOAD, LONG_LOAD = 0.3, 0.4  # open loop: shares of the measured window throughput each kind brings


def server_flags(args: argparse.Namespace) -> list[str]:
    return [
        "--model",
        args.model,
        "--backend",
        args.backend,
        "--max-queue-tokens",
        str(args.max_queue_tokens),
        "--threads",
        str(args.threads),
        "--max-length",
        str(args.max_length),
        "--doc-stride",
        str(args.max_length // 2),
        "--shutdown-timeout-s",
        str(SHUTDOWN_TIMEOUT_S),
        "--request-timeout-s",
        str(args.request_timeout_s),
        *args.extra,
    ]


def phase(url: str, plan: list, concurrency: int, **kwargs) -> tuple[dict, list]:
    t0 = time.perf_counter()
    results = asyncio.run(run_load(url, plan, concurrency=concurrency, **kwargs))
    return summarize(plan, results, time.perf_counter() - t0), results


def windows_of(args: argparse.Namespace, requests: list[PlannedRequest]) -> float:
    """Mean windows per request, as the server cuts them (its tokenizer, --max-length, --doc-stride)."""
    tokenizer = load_fast_tokenizer(args.model)
    examples = [
        Example(id=str(i), question=q.payload["question"], context=q.payload["context"])
        for i, q in enumerate(requests)
    ]
    features = prepare_features(
        examples, tokenizer, max_length=args.max_length, doc_stride=args.max_length // 2
    )
    return len(features) / len(examples)


def interference_phase(
    args: argparse.Namespace, url: str, plan: list[PlannedRequest], windows_per_s: float
) -> dict:
    """Short requests at fixed Poisson times, alone and with long ones at their own: short latency of each."""
    short = [q for q in plan if q.kind == "short"][: args.open_loop_short]
    long = [q for q in plan if q.kind == "long"]
    w_short, w_long = windows_of(args, short), windows_of(args, long)
    rate_short = SHORT_LOAD * windows_per_s / w_short
    rate_long = LONG_LOAD * windows_per_s / w_long
    rng = random.Random(3)
    short_times = poisson_times(rate_short, len(short), rng)
    long_times = [t for t in poisson_times(rate_long, len(long), rng) if t < short_times[-1]]
    long = long[: len(long_times)]
    runs = {}
    for name, requests, times in (
        ("short_alone", short, short_times),
        ("short_with_long", short + long, short_times + long_times),
    ):
        t0 = time.perf_counter()
        results = asyncio.run(run_schedule(url, requests, times))
        runs[name] = summarize(requests, results, time.perf_counter() - t0)
        print(name, json.dumps(runs[name]["latency_ms"]), flush=True)
    alone, mixed = runs["short_alone"]["latency_ms"]["short"], runs["short_with_long"]["latency_ms"]["short"]
    return {
        "window_throughput_per_s": round(windows_per_s, 2),
        "windows_per_request": {"short": round(w_short, 2), "long": round(w_long, 1)},
        "rates_per_s": {"short": round(rate_short, 3), "long": round(rate_long, 4)},
        "offered_share_of_throughput": {"short": SHORT_LOAD, "long": LONG_LOAD},
        "requests": {"short": len(short), "long": len(long)},
        **runs,
        "short_p99_ratio": _ratio(mixed["p99"], alone["p99"]),  # None below 100 requests: no p99
        "short_p50_ratio": _ratio(mixed["p50"], alone["p50"]),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def sigterm_phase(args: argparse.Namespace, examples: list, log: Path) -> dict:
    """Load on fresh connections, SIGTERM after `args.sigterm_after_s`: who got what, and the exit time."""
    plan = build_plan(examples, args.sigterm_requests, shares={"long": 0.1}, seed=2)
    with ServerProcess(server_flags(args), log, startup_timeout=600) as server:
        asyncio.run(run_load(server.url, plan[:8], concurrency=4))  # warm the connections' code paths
        outcome: dict = {}

        def load() -> None:
            outcome["summary"], outcome["results"] = phase(
                server.url, plan, args.concurrency, fresh_connections=True
            )

        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(args.sigterm_after_s)
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(SHUTDOWN_TIMEOUT_S + 30)
        except Exception:
            code = None
        exit_s = time.monotonic() - sent
        thread.join()
    results = outcome["results"]
    answered = sum(1 for r in results if r.status == 200)
    refused_503 = sum(1 for r in results if r.status == 503)
    refused = sum(1 for r in results if r.status is None and r.error == "refused")
    dropped = [r.error for r in results if r.status is None and r.error != "refused"]
    others = sorted({r.status for r in results if r.status not in (None, 200, 503)})
    return {
        "requests": len(plan),
        "sigterm_after_s": args.sigterm_after_s,
        "answered_200": answered,
        "refused_503": refused_503,
        "connection_refused_after_close": refused,
        "accepted_without_response": len(dropped),
        "accepted_without_response_errors": sorted(set(dropped)),
        "other_statuses": others,
        "exit_code": code,
        "exit_s_after_sigterm": round(exit_s, 2),
        "shutdown_timeout_s": SHUTDOWN_TIMEOUT_S,
        "passed": not dropped and not others and code is not None and exit_s <= SHUTDOWN_TIMEOUT_S + 10,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="QA model folder")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--backend",
        default="openvino-bf16",
        help="serve's --backend (default openvino-bf16: pinned, since auto's choice among close backends "
        "varies from run to run, and runs compared must run the same one)",
    )
    parser.add_argument(
        "--max-queue-tokens",
        type=int,
        default=600_000,
        help="serve's queue bound; the default holds 32 clients' largest requests (~12k tokens each), so no "
        "request is refused for load by design",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--request-timeout-s", type=float, default=120)
    parser.add_argument("--sigterm-requests", type=int, default=300)
    parser.add_argument("--sigterm-after-s", type=float, default=8.0)
    parser.add_argument("--open-loop-short", type=int, default=300, help="short requests of phase 3")
    parser.add_argument("--output", default=str(OUT))
    parser.add_argument("extra", nargs="*", help="more `serve` flags, after --")
    args = parser.parse_args()
    if not XQUAD_ES.is_file():
        raise SystemExit(f"{XQUAD_ES} is missing: this benchmark needs ../shared/data")
    examples = list(load_dataset(str(XQUAD_ES)).examples)
    plan = build_plan(examples, args.requests, seed=1, config=ServeConfig())  # the server's defaults
    without_long = [q for q in plan if q.kind != "long"]
    logs = Path(tempfile.mkdtemp(prefix="serve-load-"))  # the servers' logs: large, not results
    print(f"server logs in {logs}", flush=True)
    report: dict = {
        "command": " ".join(["python benchmarks/serve_load.py", *map(shlex.quote, sys.argv[1:])]),
        "model": args.model,
        "server_flags": server_flags(args),
        "data": "XQuAD-es questions with their paragraphs; long: padded with others to 20,000 characters",
        "concurrency": args.concurrency,
        "machine": machine_info(),
    }
    with ServerProcess(server_flags(args), logs / "mixed.log", startup_timeout=600) as server:
        report["health"] = httpx.get(f"{server.url}/health").json()  # the backend that runs, its limits
        asyncio.run(run_load(server.url, without_long[:64], concurrency=args.concurrency))  # warm-up
        report["mixed"], _ = phase(server.url, plan, args.concurrency)
        print(json.dumps(report["mixed"], indent=2), flush=True)
        windows = "tinyroberta_es_batch_windows_sum"
        before = metric_total(server.url, windows)
        report["without_long"], _ = phase(server.url, without_long, args.concurrency)
        windows_per_s = (metric_total(server.url, windows) - before) / report["without_long"]["wall_s"]
        if windows_per_s <= 0:
            raise RuntimeError(f"the server's /metrics counted no windows ({windows}): cannot set the rates")
        print(json.dumps(report["without_long"], indent=2), flush=True)
        report["interference"] = interference_phase(args, server.url, plan, windows_per_s)
    report["sigterm"] = sigterm_phase(args, examples, logs / "sigterm.log")
    print(json.dumps(report["sigterm"], indent=2), flush=True)
    p99 = {k: report[k]["latency_ms"]["short"]["p99"] for k in ("mixed", "without_long")}
    report["closed_loop_short_p99_ratio"] = _ratio(p99["mixed"], p99["without_long"])  # see phase 2
    ratio = report["interference"]["short_p99_ratio"]
    runs = {
        "mixed": report["mixed"],
        "without_long": report["without_long"],
        "open_loop_short_alone": report["interference"]["short_alone"],
        "open_loop_short_with_long": report["interference"]["short_with_long"],
    }
    failures = {k: run["server_errors"] + run["no_response"] for k, run in runs.items()}
    report["targets"] = [
        {
            "target": "0 5xx and nothing dropped (every run but the SIGTERM one)",
            "measured": failures,
            "met": not any(failures.values()),
        },
        {
            "target": "every request got the status its kind must get",
            "measured": {k: run["wrong"] for k, run in runs.items()},
            "met": not any(run["wrong"] for run in runs.values()),
        },
        {
            "target": "short requests' p99 with long contexts at most 2x their p99 without (open loop, the "
            "same short arrivals)",
            "measured": ratio,
            "met": ratio is not None and ratio <= 2.0,
        },
        {
            "target": "SIGTERM under load: every accepted request answered or 503, exit within the timeout",
            "measured": report["sigterm"],
            "met": report["sigterm"]["passed"],
        },
    ]
    atomic.write_json(Path(args.output), report)
    print(json.dumps(report["targets"], indent=2))


if __name__ == "__main__":
    main()
