"""`tinyroberta-es serve` over real HTTP: answers, batching, limits, error shape, metrics, the command itself.

The servers run on 127.0.0.1 with a free port (uvicorn on a thread, or the real command in a child process)
and answer with a tiny random QA model built in a tmp folder: its answers are arbitrary, but always spans of
the context, which is what these tests check.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from serve_helpers import build_tiny_model, until
from tinyroberta_es import __version__
from tinyroberta_es.cli import main
from tinyroberta_es.commands.serve import API_KEY_VARIABLE, _api_key
from tinyroberta_es.data.schema import Example
from tinyroberta_es.errors import UserError
from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer
from tinyroberta_es.serve.app import ServeConfig, create_app
from tinyroberta_es.serve.background import BackgroundServer, ServerProcess
from tinyroberta_es.serve.engines import truncate
from tinyroberta_es.serve.load import sample_value

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
LIMITS = {
    "max_context_chars": 2000,
    "max_question_chars": 300,
    "max_batch_items": 4,
    "max_body_bytes": 20_000,
    "batch_wait_ms": 2,
}


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
    return sample_value(client.get("/metrics").text, name, **labels)


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


def test_top_k_returns_distinct_spans_best_first_with_probabilities_that_do_not_depend_on_top_k(client):
    body = client.post("/v1/answer", json={"question": "¿Cuándo?", "context": CONTEXT, "top_k": 5}).json()
    assert_answer(body, CONTEXT, top_k=5)
    spans = body["answers"]
    assert len(spans) == 5  # a 40-token context has far more than 5 candidate spans
    assert len({(s["start"], s["end"]) for s in spans}) == 5
    assert [s["score"] for s in spans] == sorted((s["score"] for s in spans), reverse=True)
    assert sum(s["probability"] for s in spans) <= 1 + 1e-6
    best = client.post("/v1/answer", json={"question": "¿Cuándo?", "context": CONTEXT}).json()
    assert (best["answers"][0]["start"], best["answers"][0]["end"]) == (spans[0]["start"], spans[0]["end"])
    assert best["answers"][0]["probability"] == pytest.approx(spans[0]["probability"])


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
        cut = truncate(many, 2)
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
        "version": __version__,
        "backend": "pytorch",
        "limits": {
            "max_batch": 16,
            "max_batch_tokens": 1_024,
            "max_context_chars": 2000,
            "max_question_chars": 300,
            "max_batch_items": 4,
            "max_body_bytes": 20_000,
            "max_queue_tokens": 262_144,
        },
        "request_timeout_s": 30.0,
        "api_key_required": False,
    }
    schema = client.get("/openapi.json").json()
    paths = {"/v1/answer", "/v1/answer/batch", "/v1/answer/squad", "/health", "/livez", "/readyz", "/metrics"}
    assert paths <= set(schema["paths"])
    answer = schema["paths"]["/v1/answer"]["post"]
    for status in ("400", "401", "413", "422", "500", "503", "504"):
        assert answer["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    assert set(schema["components"]["schemas"]["BatchRequest"]["properties"]) == {"items"}
    assert "securitySchemes" not in schema.get("components", {})  # no key: no Authorize button


def test_docs_are_served_from_the_package_and_name_no_other_host(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "SwaggerUIBundle" in docs.text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)""", docs.text) + re.findall(r"url: '([^']+)'", docs.text)
    assert urls and all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    assert "http://" not in docs.text and "https://" not in docs.text
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
    assert client.get("/docs/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/docs/no-such-file.js").status_code == 404
    csp = docs.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self' 'sha256-" in csp


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
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


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
    info = {"model": "model", "backend": "pytorch", "version": __version__}
    assert metric(client, "tinyroberta_es_model_info", **info) == 1
    for name in ("queue_questions", "queue_tokens", "batch_tokens_count", "queue_wait_seconds_count"):
        assert f"tinyroberta_es_{name}" in text


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
    ("long-question", "/v1/answer", OK | {"question": "¿" * 301}, {}, 413, "question_too_long", ["300"]),
    (
        "long-questions",
        "/v1/answer/batch",
        {"items": [OK, OK, OK | {"question": "q" * 301}]},
        {},
        413,
        "question_too_long",
        ["items 2", "--max-question-chars"],
    ),
    ("bad-id", "/v1/answer/batch", {"items": [OK | {"id": 7}]}, {}, 422, "invalid_request", ["items.0.id"]),
    ("timeout-word", "/v1/answer", OK, {"x-request-timeout": "soon"}, 422, "invalid_request", ["Timeout"]),
    ("timeout-zero", "/v1/answer", OK, {"x-request-timeout": "0"}, 422, "invalid_request", ["positive"]),
    ("squad-no-data", "/v1/answer/squad", {"version": "v2.0"}, {}, 422, "invalid_request", ["data"]),
    (
        "squad-bad-layout",
        "/v1/answer/squad",
        {"data": [{"title": "t", "paragraphs": [{"context": "x"}]}]},
        {},
        422,
        "invalid_request",
        ["qas"],
    ),
    (
        "squad-many",
        "/v1/answer/squad",
        {
            "data": [
                {
                    "title": "t",
                    "paragraphs": [
                        {
                            "context": "En Madrid.",
                            "qas": [{"id": str(i), "question": "¿Dónde?"} for i in range(5)],
                        }
                    ],
                }
            ]
        },
        {},
        413,
        "too_many_items",
        ["5 questions"],
    ),
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
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert response.headers["x-content-type-options"] == "nosniff"
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


class Wrapped:
    """The real tiny answerer behind a hook called before each model call; records what reached the model."""

    def __init__(self, answerer: QuestionAnswerer, before=None) -> None:
        self.answerer, self.config, self.runner = answerer, answerer.config, answerer.runner
        self.before = before
        self.seen: list[str] = []  # every question that reached the model, warm-up included

    def cost(self, example):
        return self.answerer.cost(example)

    def predict(self, examples, top_k=1):
        self.seen.extend(ex.question for ex in examples)
        if self.before is not None:
            self.before(examples)
        return self.answerer.predict(examples, top_k=top_k)


def fire(url: str, requests: list[tuple[str, dict, dict]], timeout: float = 30) -> list:
    """Send (route, json, headers) requests concurrently; each a response, or the exception it raised."""

    async def go() -> list:
        limits = httpx.Limits(max_keepalive_connections=0)  # one connection per request
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as ac:
            return await asyncio.gather(
                *(ac.post(route, json=body, headers=headers) for route, body, headers in requests),
                return_exceptions=True,
            )

    return asyncio.run(go())


def test_concurrent_requests_are_answered_together(serve):
    client = serve(max_batch=16, batch_wait_ms=50)
    batches = metric(client, "tinyroberta_es_batch_size_count")
    questions = metric(client, "tinyroberta_es_batch_size_sum")
    requests = [
        ("/v1/answer", {"question": f"¿Pregunta {i}?", "context": CONTEXTS[i % 3]}, {}) for i in range(16)
    ]
    responses = fire(str(client.base_url), requests)
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        assert_answer(response.json(), CONTEXTS[i % 3])
    calls = metric(client, "tinyroberta_es_batch_size_count") - batches
    assert metric(client, "tinyroberta_es_batch_size_sum") - questions == 16
    assert calls < 16  # fewer model calls than requests: some were answered together


def test_a_question_the_settings_cannot_answer_fails_only_its_own_request(serve, model_dir):
    # With 96-token windows and doc_stride 32, a long question leaves too little room: predicting it together
    # with others raised for the whole batch. Each request is now checked alone before it is queued.
    narrow = Wrapped(
        QuestionAnswerer.from_pretrained(model_dir, InferenceConfig(max_length=96, doc_stride=32), "cpu")
    )
    client = serve(qa=narrow, batch_wait_ms=200)
    long_question = "¿" + "muy " * 60 + "largo?"  # under --max-question-chars, too many tokens for a window
    requests = [("/v1/answer", {"question": f"¿Dónde {i}?", "context": CONTEXT}, {}) for i in range(6)]
    requests.insert(3, ("/v1/answer", {"question": long_question, "context": CONTEXT}, {}))
    responses = fire(str(client.base_url), requests)
    for i, response in enumerate(responses):
        if i == 3:
            assert response.status_code == 422, response.text
            assert response.json()["error"] == "invalid_request" and "doc_stride" in response.json()["detail"]
        else:
            assert response.status_code == 200, response.text
            assert_answer(response.json(), CONTEXT)
    assert long_question not in narrow.seen
    items = [{"question": "¿Dónde?", "context": CONTEXT}, {"question": long_question, "context": CONTEXT}]
    batch = client.post("/v1/answer/batch", json={"items": items})
    assert batch.status_code == 422 and batch.json()["detail"].startswith("items.1: doc_stride")


def test_a_model_failure_fails_only_the_request_that_caused_it_with_a_generic_500(serve, answerer):
    def explode(examples):
        if any("💥" in ex.question for ex in examples):
            raise RuntimeError("secret internal detail: /srv/weights.bin is corrupt")

    flaky = Wrapped(answerer, explode)
    client = serve(
        qa=flaky, batch_wait_ms=200
    )  # the requests share one batch; it fails, then runs one by one
    requests = [("/v1/answer", {"question": f"¿Dónde {i}?", "context": CONTEXT}, {}) for i in range(5)]
    requests.insert(2, ("/v1/answer", {"question": "💥", "context": CONTEXT}, {"x-request-id": "boom-1"}))
    responses = fire(str(client.base_url), requests)
    for i, response in enumerate(responses):
        if i != 2:
            assert response.status_code == 200, response.text
            assert_answer(response.json(), CONTEXT)
    failed = responses[2]
    assert failed.status_code == 500 and failed.headers["x-request-id"] == "boom-1"
    assert failed.json() == {
        "error": "model_error",
        "detail": "the model failed on this request; see the server log for request id boom-1",
    }
    assert "secret" not in failed.text and "RuntimeError" not in failed.text
    assert sum(q.startswith("¿Dónde") for q in flaky.seen) >= 5
    after = client.post("/v1/answer", json={"question": "¿Dónde?", "context": CONTEXT})
    assert after.status_code == 200
    assert (
        metric(client, "tinyroberta_es_requests_total", route="/v1/answer", method="POST", status="500") == 1
    )


def test_any_other_failure_is_a_generic_500_that_names_the_request_id(serve, answerer):
    class BrokenCost(Wrapped):
        def cost(self, example):
            if "🔥" in example.question:
                raise KeyError("internal table /etc/secret")
            return super().cost(example)

    client = serve(qa=BrokenCost(answerer))
    response = client.post("/v1/answer", json={"question": "🔥", "context": CONTEXT})
    assert response.status_code == 500
    request_id = response.headers["x-request-id"]
    assert response.json() == {
        "error": "internal_error",
        "detail": f"the server failed on this request; see the server log for request id {request_id}",
    }
    assert response.headers["x-content-type-options"] == "nosniff"
    assert client.post("/v1/answer", json={"question": "¿Dónde?", "context": CONTEXT}).status_code == 200


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123_x.y:z", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("has space", False),
        ("ñ".encode(), False),
        ("<script>", False),
    ],
)
def test_every_response_carries_the_request_id_it_was_given_or_a_new_one(client, sent, kept):
    for method, route, body in (
        ("POST", "/v1/answer", OK),
        ("GET", "/no/such", None),
        ("GET", "/livez", None),
    ):
        response = client.request(method, route, json=body, headers={"x-request-id": sent})
        got = response.headers["x-request-id"]
        assert got == sent if kept else re.fullmatch(r"[0-9a-f]{32}", got), (route, got)
    first, second = client.get("/livez"), client.get("/livez")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_security_headers_are_on_every_response(client):
    for response in (
        client.get("/"),
        client.get("/docs"),
        client.get("/livez"),
        client.get("/metrics"),
        client.post("/v1/answer", json=OK),
        client.post("/v1/answer", content=b"x" * 30_000),  # refused by the body limit
        client.get("/no/such"),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_unlabeled_questions_in_batch_items_and_in_squad_layout_are_answered_by_id(client):
    lines = "\n".join(
        json.dumps({"id": f"q{i}", "question": "¿Qué pasó?", "context": c}) for i, c in enumerate(CONTEXTS)
    )
    items = [
        json.loads(line) for line in lines.splitlines()
    ]  # JSON Lines records are batch items as they are
    body = client.post("/v1/answer/batch", json={"items": items}).json()
    assert [r["id"] for r in body["results"]] == ["q0", "q1", "q2"]
    for result, context in zip(body["results"], CONTEXTS, strict=True):
        assert_answer({k: v for k, v in result.items() if k != "id"}, context)
    squad = {
        "version": "v2.0",
        "data": [
            {
                "title": "Colombia",
                "paragraphs": [
                    {"context": CONTEXTS[0], "qas": [{"id": "a", "question": "¿Dónde?"}]},
                    {  # labeled questions are fine too: their answers are ignored
                        "context": CONTEXTS[1],
                        "qas": [
                            {
                                "id": "b",
                                "question": "¿Dónde?",
                                "answers": [{"text": "Tortosa", "answer_start": 56}],
                            },
                            {"id": "c", "question": "¿Qué?", "is_impossible": True, "answers": []},
                        ],
                    },
                ],
            }
        ],
    }
    response = client.post("/v1/answer/squad", params={"top_k": 2}, json=squad)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["id"] for r in body["results"]] == ["a", "b", "c"]
    assert body["predictions"] == {r["id"]: r["answer"] for r in body["results"]}
    for result, context in zip(body["results"], (CONTEXTS[0], CONTEXTS[1], CONTEXTS[1]), strict=True):
        assert_answer({k: v for k, v in result.items() if k != "id"}, context, top_k=2)
    duplicate = json.loads(json.dumps(squad))
    duplicate["data"][0]["paragraphs"][0]["qas"][0]["id"] = "b"
    refused = client.post("/v1/answer/squad", json=duplicate)
    assert refused.status_code == 422 and "duplicate" in refused.json()["detail"]


def slow(seconds: float):
    return lambda examples: time.sleep(seconds)


def test_over_the_token_queue_limit_requests_get_503_with_retry_after_and_the_rest_are_answered(
    serve, answerer
):
    qa = Wrapped(answerer, slow(0.25))
    tokens = answerer.cost(Example(id="x", question="¿Dónde?", context=CONTEXT))[1]
    client = serve(qa=qa, max_batch=1, batch_wait_ms=0, max_batch_tokens=tokens, max_queue_tokens=3 * tokens)
    responses = fire(
        str(client.base_url), [("/v1/answer", {"question": "¿Dónde?", "context": CONTEXT}, {})] * 12
    )
    answered = [r for r in responses if r.status_code == 200]
    shed = [r for r in responses if r.status_code == 503]
    assert len(answered) + len(shed) == 12 and answered and shed
    for r in shed:
        assert r.json()["error"] == "overloaded" and "--max-queue-tokens" in r.json()["detail"]
        assert int(r.headers["Retry-After"]) >= 1
    for r in answered:
        assert_answer(r.json(), CONTEXT)
    too_big = client.post(
        "/v1/answer/batch", json={"items": [{"question": "¿Dónde?", "context": CONTEXT}] * 4}
    )
    assert too_big.status_code == 413 and too_big.json()["error"] == "too_many_tokens"
    assert client.post("/v1/answer", json={"question": "¿Dónde?", "context": CONTEXT}).status_code == 200


def test_a_request_past_its_deadline_gets_504_and_its_question_never_reaches_the_model(serve, answerer):
    qa = Wrapped(answerer, slow(1.0))
    client = serve(qa=qa, max_batch=1, batch_wait_ms=0, request_timeout_s=0.5)
    url = str(client.base_url)
    requests = [
        ("/v1/answer", {"question": "¿Primera?", "context": CONTEXT}, {}),  # holds the model for a second
        ("/v1/answer", {"question": "¿Tardía?", "context": CONTEXT}, {"x-request-timeout": "0.2"}),
        (
            "/v1/answer",
            {"question": "¿Tope?", "context": CONTEXT},
            {"x-request-timeout": "100"},
        ),  # cut to 0.5
    ]

    async def go() -> list:
        async with httpx.AsyncClient(base_url=url, timeout=30) as ac:
            first = asyncio.ensure_future(ac.post(*requests[0][:1], json=requests[0][1]))
            await until(lambda: "¿Primera?" in qa.seen, interval=0.02)  # the first is in the model
            rest = [ac.post(route, json=body, headers=headers) for route, body, headers in requests[1:]]
            return [*(await asyncio.gather(*rest)), await first]

    late, capped, first = asyncio.run(go())
    for response in (late, capped):
        assert response.status_code == 504, response.text
        assert response.json()["error"] == "deadline_exceeded"
    assert "¿Tardía?" not in qa.seen and "¿Tope?" not in qa.seen
    assert metric(client, "tinyroberta_es_dropped_questions_total", reason="deadline") >= 2
    assert first.status_code in (200, 504)  # its own deadline is the server's 0.5 s: it may pass in the model


def test_the_question_of_a_client_that_went_away_never_reaches_the_model(serve, answerer):
    release = threading.Event()
    qa = Wrapped(answerer, lambda examples: release.wait(30) if examples[0].question == "¿Bloqueo?" else None)
    client = serve(qa=qa, max_batch=1, batch_wait_ms=0)
    url = str(client.base_url)

    async def go() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as ac:
            holder = asyncio.ensure_future(
                ac.post("/v1/answer", json={"question": "¿Bloqueo?", "context": CONTEXT})
            )
            await until(lambda: "¿Bloqueo?" in qa.seen, interval=0.02)  # the model is busy with it
            with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
                await ac.post(
                    "/v1/answer", json={"question": "¿Abandonada?", "context": CONTEXT}, timeout=1.0
                )
            await asyncio.sleep(0.5)  # the server notices the disconnect
            release.set()
            assert (await holder).status_code == 200

    try:
        asyncio.run(go())
    finally:
        release.set()
    assert client.post("/v1/answer", json={"question": "¿Después?", "context": CONTEXT}).status_code == 200
    assert "¿Abandonada?" not in qa.seen and "¿Después?" in qa.seen
    assert metric(client, "tinyroberta_es_dropped_questions_total", reason="cancelled") >= 1


def test_readyz_is_503_until_the_warm_up_prediction_is_done_and_livez_answers_at_once(answerer):
    release = threading.Event()
    qa = Wrapped(answerer, lambda examples: release.wait(30))
    app = create_app(qa, ServeConfig(**LIMITS))
    try:
        with BackgroundServer(app, wait_ready=False) as server, httpx.Client(base_url=server.url) as client:
            assert client.get("/livez").json() == {"status": "alive"}
            not_ready = client.get("/readyz")
            assert (not_ready.status_code, not_ready.json()) == (503, {"status": "starting"})
            assert (
                client.get("/health").status_code == 503
                and client.get("/health").json()["status"] == "starting"
            )
            release.set()
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "never ready"
                time.sleep(0.05)
            assert client.get("/readyz").json() == {"status": "ready"}
            assert client.get("/health").json()["status"] == "ok"
            assert len(qa.seen) == 1  # the warm-up: one real prediction
    finally:
        release.set()


def test_a_failed_warm_up_leaves_the_server_unready_and_v1_unavailable(answerer):
    def fail(examples):
        raise RuntimeError("no kernels for this machine")

    app = create_app(Wrapped(answerer, fail), ServeConfig(**LIMITS))
    with BackgroundServer(app, wait_ready=False) as server, httpx.Client(base_url=server.url) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").json()["status"] == "starting":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/readyz").json() == {"status": "failed"}
        response = client.post("/v1/answer", json=OK)
        assert response.status_code == 503 and response.json()["error"] == "unavailable"
        assert "kernels" not in response.text


def test_on_shutdown_queued_requests_are_answered_or_get_503_and_readyz_turns_503(answerer):
    qa = Wrapped(answerer, slow(0.4))
    app = create_app(
        qa, ServeConfig(**LIMITS | {"max_batch": 1, "batch_wait_ms": 0, "shutdown_timeout_s": 1.0})
    )
    server = BackgroundServer(app).__enter__()
    results: list = []
    requests = [("/v1/answer", {"question": f"¿Dónde {i}?", "context": CONTEXT}, {}) for i in range(8)]
    sender = threading.Thread(target=lambda: results.extend(fire(server.url, requests)))
    sender.start()
    # one in the model, the rest queued
    asyncio.run(until(lambda: app.state.batcher.queued_questions >= 6, interval=0.02))
    stopper = threading.Thread(target=server.stop)
    t0 = time.monotonic()
    stopper.start()
    time.sleep(0.1)
    assert app.state.lifecycle.state == "draining"
    stopper.join(60)
    sender.join(60)
    assert time.monotonic() - t0 < 1.0 + 2.0 + 10  # the drain timeout, the response grace, slack for 2 cores
    statuses = [r.status_code for r in results]
    assert len(statuses) == 8 and set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses  # 8 x 0.4 s of work do not fit a 1 s drain
    for r in results:
        if r.status_code == 503:
            assert r.json()["error"] == "unavailable"
        else:
            assert_answer(r.json(), CONTEXT)


def test_the_api_key_is_stripped_once_whether_it_comes_from_a_file_or_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(API_KEY_VARIABLE, " k3y\n")
    assert ServeConfig(api_key=_api_key(None)).api_key == "k3y"
    (tmp_path / "key.txt").write_text("k3y\r\n")
    assert ServeConfig(api_key=_api_key(str(tmp_path / "key.txt"))).api_key == "k3y"
    with pytest.raises(UserError, match="the API key is empty"):
        ServeConfig(api_key=" \n")


def test_with_an_api_key_v1_needs_it_and_everything_else_stays_open(serve):
    client = serve(api_key="s3cret-key\n")  # as read from a file or variable: the newline is not the key
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret-key"}):
        refused = client.post("/v1/answer", json=OK, headers=headers)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer" and "s3cret" not in refused.text
    answered = client.post("/v1/answer", json=OK, headers={"authorization": "Bearer s3cret-key"})
    assert answered.status_code == 200
    for route in ("/", "/docs", "/livez", "/readyz", "/health", "/metrics", "/openapi.json"):
        assert client.get(route).status_code == 200, route
    assert client.get("/health").json()["api_key_required"] is True
    assert "HTTPBearer" in client.get("/openapi.json").json()["components"]["securitySchemes"]


@pytest.mark.slow
def test_serve_command_serves_the_api_and_the_page_with_json_logs(model_dir, tmp_path):
    key = tmp_path / "key.txt"
    key.write_text("k3y\n")
    args = ["--model", str(model_dir), "--max-batch", "4", "--log-format", "json", "--api-key-file", str(key)]
    with ServerProcess(args, tmp_path / "serve.log") as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            health = client.get("/health").json()
            assert health["limits"]["max_context_chars"] == 20_000 and health["backend"] == "pytorch"
            assert client.post("/v1/answer", json=OK).status_code == 401
            response = client.post(
                "/v1/answer",
                json={"question": "¿Cuándo?", "context": CONTEXT, "top_k": 2},
                headers={"authorization": "Bearer k3y", "x-request-id": "trace-42"},
            )
            assert response.status_code == 200, response.text
            assert_answer(response.json(), CONTEXT, top_k=2)
            assert "Responder" in client.get("/").text
        status = server.stop()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal so the exit status tells why.
    assert status in (0, -signal.SIGTERM), server.log()
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    access = [line for line in lines if line.get("request_id") == "trace-42" and "status" in line]
    assert access == [access[0]] and access[0]["method"] == "POST" and access[0]["path"] == "/v1/answer"
    assert access[0]["status"] == 200 and access[0]["latency_ms"] > 0
    assert any(line["message"] == "Application shutdown complete." for line in lines)


@pytest.mark.slow
def test_sigterm_under_load_answers_or_refuses_every_accepted_request_and_exits_in_time(model_dir, tmp_path):
    long_context = " ".join([CONTEXT] * 100)[:20_000]  # tens of windows each: the queue fills
    # A queue that takes all 24, so every 503 here is the shutdown's (a full queue would say "overloaded").
    args = ["--model", str(model_dir), "--max-batch", "2", "--shutdown-timeout-s", "3", "--threads", "1"]
    args += ["--max-queue-tokens", "10000000"]
    with ServerProcess(args, tmp_path / "serve.log") as server:
        results: list = []
        body = {"question": "¿Cuándo?", "context": long_context}
        sender = threading.Thread(
            target=lambda: results.extend(fire(server.url, [("/v1/answer", body, {})] * 24))
        )
        sender.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        status = server.process.wait(60)
        took = time.monotonic() - t0
        sender.join(60)
    assert status in (0, -signal.SIGTERM), server.log()
    assert took < 3 + 2 + 15, server.log()  # the drain timeout, the response grace, slack for 2 busy cores
    answered = [r for r in results if isinstance(r, httpx.Response)]
    assert answered and {r.status_code for r in answered} <= {200, 503}, [r.status_code for r in answered]
    assert any(r.status_code == 200 for r in answered)  # what was queued at SIGTERM is still answered
    for r in answered:
        if r.status_code == 200:
            assert_answer(r.json(), long_context)
        else:
            assert r.json()["error"] == "unavailable"
    refused = [r for r in results if not isinstance(r, httpx.Response)]
    assert all(isinstance(r, httpx.ConnectError) for r in refused), refused  # never accepted, then dropped
    assert "Application shutdown complete" in server.log()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--max-batch", "0"], ["--max-batch 0"]),
        (["--batch-wait-ms", "-1", "--max-body-bytes", "10"], ["--batch-wait-ms -1", "--max-body-bytes 10"]),
        (["--port", "70000"], ["--port 70000"]),
        (["--max-queue-tokens", "10", "--max-batch-tokens", "20"], ["--max-queue-tokens 10", "at least"]),
        (["--request-timeout-s", "0"], ["--request-timeout-s 0"]),
        (["--api-key-file", "/no/such/key"], ["--api-key-file /no/such/key", "cannot read"]),
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
