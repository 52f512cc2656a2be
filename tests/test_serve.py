"""`tinyroberta-es serve` over real HTTP: answers, batching, limits, error shape, metrics, the command itself.

The servers run on 127.0.0.1 with a free port (uvicorn on a thread, or the real command in a child process)
and answer with a tiny random QA model built in a tmp folder: its answers are arbitrary, but always spans of
the context, which is what these tests check.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tinyroberta_es.cli import main
from tinyroberta_es.data.schema import Example
from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer
from tinyroberta_es.serve.app import ServeConfig, create_app
from tinyroberta_es.serve.background import BackgroundServer, ServerProcess
from tinyroberta_es.serve.batching import truncate
from tinyroberta_es.tiny import create_tiny_qa_model, spanish_texts, train_tokenizer

# An emoji first: every offset after it differs between code points (the API) and UTF-16 units.
CONTEXT = (
    "😀 Gabriel García Márquez nació en Aracataca, Colombia, el 6 de marzo de 1927. En 1982 recibió el "
    "Premio Nobel de Literatura. «Cien años de soledad» se publicó en Buenos Aires en 1967."
)
CONTEXTS = (
    CONTEXT,
    "El río Ebro desemboca en el mar Mediterráneo, cerca de Tortosa.",
    "La Alhambra de Granada fue declarada Patrimonio de la Humanidad en 1984.",
)
# Small limits, so that the limit cases are cheap to send.
LIMITS = {"max_context_chars": 2000, "max_batch_items": 4, "max_body_bytes": 20_000, "batch_wait_ms": 2}


def build_tiny_model(root: Path) -> Path:
    """A tiny random RoBERTa-like QA model folder (byte-level BPE tokenizer) under `root`."""
    tokenizer = train_tokenizer("bpe", spanish_texts(), root / "tokenizer", vocab_size=1000)
    return create_tiny_qa_model(root / "model", tokenizer, seed=3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def answerer(model_dir: Path) -> QuestionAnswerer:
    return QuestionAnswerer.from_pretrained(model_dir, device="cpu")


@pytest.fixture(scope="module")
def serve(answerer: QuestionAnswerer) -> Iterator:
    """`serve(answerer=..., **ServeConfig overrides)` starts a server and returns an httpx client for it."""
    with ExitStack() as stack:

        def start(qa=answerer, **overrides) -> httpx.Client:
            app = create_app(qa, ServeConfig(**(LIMITS | overrides)))
            server = stack.enter_context(BackgroundServer(app))
            return stack.enter_context(httpx.Client(base_url=server.url, timeout=30))

        yield start


@pytest.fixture(scope="module")
def client(serve) -> httpx.Client:
    return serve()


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The value of one sample of /metrics (0 when absent)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def assert_answer(body: dict, context: str, top_k: int = 1) -> None:
    """The documented answer shape, with every candidate a span of `context`."""
    assert set(body) == {"answer", "is_null", "answers", "latency_ms"}
    assert 1 <= len(body["answers"]) <= top_k
    assert body["is_null"] is False
    assert body["answer"] == body["answers"][0]["text"]
    assert body["latency_ms"] > 0
    for span in body["answers"]:
        assert set(span) == {"text", "start", "end", "score", "probability"}
        assert context[span["start"] : span["end"]] == span["text"] != ""
        assert 0 < span["probability"] <= 1


def test_answer_is_a_span_of_the_context(client):
    response = client.post(
        "/v1/answer", json={"question": "¿Dónde nació García Márquez?", "context": CONTEXT}
    )
    assert response.status_code == 200, response.text
    assert_answer(response.json(), CONTEXT)


def test_top_k_returns_distinct_spans_best_first_with_probabilities_summing_to_one(client):
    body = client.post("/v1/answer", json={"question": "¿Cuándo?", "context": CONTEXT, "top_k": 5}).json()
    assert_answer(body, CONTEXT, top_k=5)
    spans = body["answers"]
    assert len(spans) == 5  # a 40-token context has far more than 5 candidate spans
    assert len({(s["start"], s["end"]) for s in spans}) == 5
    assert [s["score"] for s in spans] == sorted((s["score"] for s in spans), reverse=True)
    assert sum(s["probability"] for s in spans) == pytest.approx(1.0)
    best = client.post("/v1/answer", json={"question": "¿Cuándo?", "context": CONTEXT}).json()
    assert (best["answers"][0]["start"], best["answers"][0]["end"]) == (spans[0]["start"], spans[0]["end"])


def test_batch_answers_each_item_in_order_with_its_own_top_k(client):
    items = [
        {"question": "¿Qué pasó?", "context": c, "top_k": k} for c, k in zip(CONTEXTS, (1, 3, 2), strict=True)
    ]
    response = client.post("/v1/answer/batch", json={"items": items})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"results", "latency_ms"}
    assert len(body["results"]) == len(items)
    for result, item in zip(body["results"], items, strict=True):
        assert_answer(result, item["context"], item["top_k"])
    assert len(body["results"][1]["answers"]) == 3


@pytest.mark.parametrize("null_threshold", [None, 0.0])
def test_cutting_a_larger_top_k_equals_predicting_the_smaller_one(model_dir, null_threshold):
    # The batcher predicts a shared batch with the largest top_k and cuts each request's answers down.
    qa = QuestionAnswerer.from_pretrained(model_dir, InferenceConfig(null_threshold=null_threshold), "cpu")
    examples = [Example(id=str(i), question="¿Quién?", context=c) for i, c in enumerate(CONTEXTS)]
    for many, few in zip(qa.predict(examples, top_k=6), qa.predict(examples, top_k=2), strict=True):
        cut = truncate(many, 2, null_threshold)
        assert [(s.text, s.start, s.end) for s in cut.answers] == [
            (s.text, s.start, s.end) for s in few.answers
        ]
        assert [s.probability for s in cut.answers] == pytest.approx([s.probability for s in few.answers])
        assert cut.null_probability == pytest.approx(few.null_probability)
        assert (cut.is_null, cut.null_score_diff) == (few.is_null, pytest.approx(few.null_score_diff))


def test_health_openapi_and_docs(client):
    health = client.get("/health").json()
    assert health == {
        "status": "ok",
        "model": "model",
        "backend": "pytorch",
        "limits": {
            "max_batch": 16,
            "max_context_chars": 2000,
            "max_batch_items": 4,
            "max_body_bytes": 20_000,
            "max_queue": 256,
        },
    }
    schema = client.get("/openapi.json").json()
    assert {"/v1/answer", "/v1/answer/batch", "/health", "/metrics"} <= set(schema["paths"])
    answer = schema["paths"]["/v1/answer"]["post"]
    for status in ("400", "413", "422", "500", "503"):
        assert answer["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    assert set(schema["components"]["schemas"]["BatchRequest"]["properties"]) == {"items"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_health_reports_the_backend_that_runs_and_how_auto_chose_it(serve, model_dir):
    bf16 = QuestionAnswerer.from_pretrained(model_dir, InferenceConfig(backend="pytorch-bf16"), "cpu")
    health = serve(qa=bf16).get("/health").json()
    assert health["backend"] == "pytorch-bf16" and "backend_requested" not in health
    # No export in this folder: auto measures PyTorch alone (the others have no files and no parity check).
    auto = QuestionAnswerer.from_pretrained(model_dir, InferenceConfig(backend="auto", threads=1), "cpu")
    health = serve(qa=auto).get("/health").json()
    assert (health["backend"], health["backend_requested"]) == ("pytorch", "auto")
    selection = health["selection"]
    assert selection["chosen"] == "pytorch" and selection["reason"].startswith("fastest at 1 x 384 tokens")
    candidates = {row["backend"]: row for row in selection["candidates"]}
    assert candidates["pytorch"]["ms"] > 0 and candidates["pytorch"]["parity"] == "the reference"
    assert candidates["onnx"]["skipped"] == "no export" and "ms" not in candidates["onnx"]
    assert "ms" not in candidates["pytorch-bf16"]  # it needs a passed parity check too


def test_page_is_the_spanish_ui_with_a_strict_content_security_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for needle in ("Pregunta", "Texto", "Responder", 'id="context"', 'id="question"', 'id="ask"'):
        assert needle in page.text
    assert "innerHTML" not in page.text
    assert "script-src 'sha256-" in page.headers["content-security-policy"]


def test_metrics_count_requests_by_route_and_status_and_record_batches(client):
    labels = {"route": "/v1/answer", "method": "POST"}
    ok, bad = (
        metric(client, "tinyroberta_es_requests_total", status="200", **labels),
        metric(client, "tinyroberta_es_requests_total", status="422", **labels),
    )
    batches = metric(client, "tinyroberta_es_batch_size_count")
    client.post("/v1/answer", json={"question": "¿Dónde?", "context": CONTEXT})
    client.post("/v1/answer", json={"question": " ", "context": CONTEXT})
    client.get("/no/such/route")
    assert metric(client, "tinyroberta_es_requests_total", status="200", **labels) == ok + 1
    assert metric(client, "tinyroberta_es_requests_total", status="422", **labels) == bad + 1
    assert metric(client, "tinyroberta_es_requests_total", route="other", status="404") >= 1
    assert metric(client, "tinyroberta_es_batch_size_count") == batches + 1
    assert metric(client, "tinyroberta_es_request_latency_seconds_count", route="/v1/answer") >= 2
    text = client.get("/metrics").text
    assert "tinyroberta_es_requests_in_flight" in text and "tinyroberta_es_model_seconds_bucket" in text


def _chunks(n: int) -> Iterator[bytes]:
    yield from (b" " * 1000 for _ in range(n))  # no Content-Length: sent chunked


OK = {"question": "¿Dónde?", "context": "En Madrid."}
ERROR_CASES = [
    # (id, route, body: JSON value, raw bytes or a generator, headers, status, error code, words in detail)
    ("broken-json", "/v1/answer", b'{"question": ', {}, 400, "invalid_json", ["JSON"]),
    ("not-utf8", "/v1/answer", b"\xff\xfe{}", {}, 400, "invalid_json", []),
    ("no-body", "/v1/answer", b"", {}, 422, "invalid_request", ["body"]),
    ("a-list", "/v1/answer", [OK], {}, 422, "invalid_request", ["JSON object"]),
    (
        "text-plain",
        "/v1/answer",
        json.dumps(OK).encode(),
        {"content-type": "text/plain"},
        422,
        "invalid_request",
        ["application/json"],
    ),
    ("missing-context", "/v1/answer", {"question": "¿Qué?"}, {}, 422, "invalid_request", ["context"]),
    (
        "empty-question",
        "/v1/answer",
        OK | {"question": ""},
        {},
        422,
        "invalid_request",
        ["question", "empty"],
    ),
    (
        "blank-context",
        "/v1/answer",
        OK | {"context": " \n\t"},
        {},
        422,
        "invalid_request",
        ["context", "empty"],
    ),
    ("top-k-0", "/v1/answer", OK | {"top_k": 0}, {}, 422, "invalid_request", ["top_k"]),
    ("top-k-21", "/v1/answer", OK | {"top_k": 21}, {}, 422, "invalid_request", ["top_k", "20"]),
    ("top-k-string", "/v1/answer", OK | {"top_k": "2"}, {}, 422, "invalid_request", ["top_k"]),
    ("top-k-float", "/v1/answer", OK | {"top_k": 1.5}, {}, 422, "invalid_request", ["top_k"]),
    ("question-number", "/v1/answer", OK | {"question": 7}, {}, 422, "invalid_request", ["question"]),
    ("unknown-field", "/v1/answer", OK | {"topk": 3}, {}, 422, "invalid_request", ["topk", "unknown"]),
    (
        "all-problems",
        "/v1/answer",
        {"question": "", "context": "x", "top_k": 99},
        {},
        422,
        "invalid_request",
        ["question", "top_k"],
    ),
    ("no-items", "/v1/answer/batch", {"items": []}, {}, 422, "invalid_request", ["items"]),
    (
        "bad-item",
        "/v1/answer/batch",
        {"items": [OK, OK | {"question": " "}]},
        {},
        422,
        "invalid_request",
        ["items.1.question"],
    ),
    ("long-context", "/v1/answer", OK | {"context": "a " * 1001}, {}, 413, "context_too_long", ["2000"]),
    (
        "long-item",
        "/v1/answer/batch",
        {"items": [OK, OK | {"context": "b" * 2001}]},
        {},
        413,
        "context_too_long",
        ["items 1"],
    ),
    ("many-items", "/v1/answer/batch", {"items": [OK] * 5}, {}, 413, "too_many_items", ["5 items", "4"]),
    ("big-body", "/v1/answer", OK | {"context": "c" * 30_000}, {}, 413, "body_too_large", ["20000 bytes"]),
    (
        "big-chunked-body",
        "/v1/answer",
        _chunks,
        {"content-type": "application/json"},
        413,
        "body_too_large",
        ["20000 bytes"],
    ),
    ("no-route", "/v2/answer", OK, {}, 404, "not_found", ["/docs"]),
]


@pytest.mark.parametrize(
    ("route", "body", "headers", "status", "code", "words"),
    [c[1:] for c in ERROR_CASES],
    ids=[c[0] for c in ERROR_CASES],
)
def test_every_bad_request_gets_the_documented_status_and_error_shape(
    client, route, body, headers, status, code, words
):
    if callable(body):
        response = client.post(route, content=body(30), headers=headers)
    elif isinstance(body, bytes):
        response = client.post(route, content=body, headers={"content-type": "application/json"} | headers)
    else:
        response = client.post(route, json=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()
    assert set(error) == {"error", "detail"}
    assert error["error"] == code
    assert isinstance(error["detail"], str) and error["detail"]
    for word in words:
        assert word in error["detail"], error["detail"]


def test_wrong_method_gets_405_in_the_error_shape(client):
    response = client.get("/v1/answer")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


def test_concurrent_requests_are_answered_together(serve):
    client = serve(max_batch=16, batch_wait_ms=50)
    url = str(client.base_url)

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as ac:
            return await asyncio.gather(
                *(
                    ac.post("/v1/answer", json={"question": f"¿Pregunta {i}?", "context": CONTEXTS[i % 3]})
                    for i in range(16)
                )
            )

    responses = asyncio.run(fire())
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        assert_answer(response.json(), CONTEXTS[i % 3])
    calls = metric(client, "tinyroberta_es_batch_size_count")
    assert metric(client, "tinyroberta_es_batch_size_sum") == 16
    assert calls < 16  # fewer model calls than requests: some were answered together
    assert metric(client, "tinyroberta_es_batch_size_bucket", le="1.0") < calls  # a batch larger than 1


class FlakyAnswerer:
    """A real answerer that raises on a batch holding a question with 💥, and loses an answer for 🙃."""

    def __init__(self, answerer: QuestionAnswerer) -> None:
        self.answerer, self.config, self.runner = answerer, answerer.config, answerer.runner

    def predict(self, examples, top_k=1):
        if any("💥" in ex.question for ex in examples):
            raise RuntimeError("simulated model failure")
        predictions = self.answerer.predict(examples, top_k=top_k)
        return predictions[1:] if any("🙃" in ex.question for ex in examples) else predictions


def test_a_failing_model_call_answers_500_to_its_batch_and_the_server_goes_on(serve, answerer):
    client = serve(qa=FlakyAnswerer(answerer))
    for question, why in (("💥", "simulated model failure"), ("🙃", "ValueError")):
        failed = client.post("/v1/answer", json={"question": question, "context": CONTEXT})
        assert failed.status_code == 500
        assert failed.json()["error"] == "model_error"
        assert why in failed.json()["detail"]
        after = client.post("/v1/answer", json={"question": "¿Dónde?", "context": CONTEXT})
        assert after.status_code == 200
        assert_answer(after.json(), CONTEXT)
    labels = {"route": "/v1/answer", "method": "POST", "status": "500"}
    assert metric(client, "tinyroberta_es_requests_total", **labels) == 2


class SlowAnswerer:
    """A real answerer that takes a quarter of a second per model call: requests pile up behind it."""

    def __init__(self, answerer: QuestionAnswerer) -> None:
        self.answerer, self.config, self.runner = answerer, answerer.config, answerer.runner

    def predict(self, examples, top_k=1):
        time.sleep(0.25)
        return self.answerer.predict(examples, top_k=top_k)


def test_over_the_queue_limit_requests_get_503_with_retry_after_and_the_rest_are_answered(serve, answerer):
    client = serve(qa=SlowAnswerer(answerer), max_batch=1, batch_wait_ms=0, max_queue=3)
    url = str(client.base_url)

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as ac:
            body = {"question": "¿Dónde?", "context": CONTEXT}
            return await asyncio.gather(*(ac.post("/v1/answer", json=body) for _ in range(12)))

    responses = asyncio.run(fire())
    answered = [r for r in responses if r.status_code == 200]
    shed = [r for r in responses if r.status_code == 503]
    assert len(answered) + len(shed) == 12 and answered and shed
    assert len(answered) <= 1 + 3 + 1  # one in the model, three waiting (a request may slip in as one leaves)
    for r in shed:
        assert r.json()["error"] == "overloaded" and "--max-queue 3" in r.json()["detail"]
        assert r.headers["Retry-After"] == "1"
    for r in answered:
        assert_answer(r.json(), CONTEXT)
    too_big = client.post("/v1/answer/batch", json={"items": [{"question": "¿Qué?", "context": CONTEXT}] * 4})
    assert too_big.status_code == 503  # 4 items can never fit a queue of 3: shed whole, not half answered
    assert client.post("/v1/answer", json={"question": "¿Dónde?", "context": CONTEXT}).status_code == 200


@pytest.mark.slow
def test_serve_command_serves_the_api_and_the_page_then_stops_cleanly(model_dir, tmp_path):
    with ServerProcess(["--model", str(model_dir), "--max-batch", "4"], tmp_path / "serve.log") as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            health = client.get("/health").json()
            assert health["limits"]["max_context_chars"] == 20_000 and health["backend"] == "pytorch"
            response = client.post(
                "/v1/answer", json={"question": "¿Cuándo?", "context": CONTEXT, "top_k": 2}
            )
            assert response.status_code == 200, response.text
            assert_answer(response.json(), CONTEXT, top_k=2)
            assert "Responder" in client.get("/").text
        status = server.stop()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal so the exit status tells why.
    assert status in (0, -signal.SIGTERM), server.log()
    assert "Application shutdown complete" in server.log()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--max-batch", "0"], ["--max-batch 0"]),
        (["--batch-wait-ms", "-1", "--max-body-bytes", "10"], ["--batch-wait-ms -1", "--max-body-bytes 10"]),
        (["--port", "70000"], ["--port 70000"]),
        (["--max-queue", "0"], ["--max-queue 0"]),
        (["--backend", "tensorrt"], ["--backend 'tensorrt' is unknown", "openvino-int8-bf16, auto"]),
        (["--backend", "x", "--port", "-1"], ["--port -1", "--backend 'x'"]),
    ],
)
def test_serve_command_rejects_bad_flags_with_one_line(model_dir, capsys, flags, needle):
    status = main(["serve", "--model", str(model_dir), *flags])
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for word in needle:
        assert word in err
