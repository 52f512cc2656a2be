"""The web page of `tinyroberta-es serve` in a real browser: Debian's headless Chromium driven by Playwright.

Playwright's own browser download does not work on these machines, so the tests launch the system Chromium
(`/usr/bin/chromium`, from Debian's `chromium` package, which `.ci/run` installs) through `executable_path`,
with the flags that keep it off the network, and are skipped with the reason when it is absent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_helpers import build_tiny_model
from tinyroberta_es.inference import QuestionAnswerer
from tinyroberta_es.serve.app import ServeConfig, create_app
from tinyroberta_es.serve.background import BackgroundServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",  # root in a container: Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",  # the network is closed: no update checks or pings
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# An emoji before the answer shifts UTF-16 indices (JavaScript) away from code points (the API); the
# markup must show as text.
CONTEXT = (
    "😀 Gabriel García Márquez nació en Aracataca, Colombia, el 6 de marzo de 1927. "
    '<img src=x onerror="window.__xss = 1"> En 1982 recibió el Premio Nobel de Literatura & <b>más</b>.'
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)",
    ),
]


@pytest.fixture(scope="module")
def answerer(tmp_path_factory: pytest.TempPathFactory) -> QuestionAnswerer:
    model = build_tiny_model(tmp_path_factory.mktemp("serve-browser"))
    return QuestionAnswerer.from_pretrained(model, device="cpu")


@pytest.fixture(scope="module")
def server_url(answerer: QuestionAnswerer) -> Iterator[str]:
    with BackgroundServer(create_app(answerer, ServeConfig(max_context_chars=2000))) as server:
        yield server.url


@pytest.fixture(scope="module")
def keyed_url(answerer: QuestionAnswerer) -> Iterator[str]:
    """A server whose API needs the key "clave-secreta"."""
    with BackgroundServer(create_app(answerer, ServeConfig(api_key="clave-secreta"))) as server:
        yield server.url


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser) -> Iterator:
    """`open_page(url)`: a fresh page that records console errors, uncaught exceptions (CSP violations
    included) and every request that leaves the server's host."""
    contexts = []

    def open_at(url: str):
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.problems, page.foreign = [], []
        host = url.split("/")[2]
        page.on("console", lambda msg: page.problems.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda err: page.problems.append(str(err)))
        page.on("request", lambda r: page.foreign.append(r.url) if r.url.split("/")[2] != host else None)
        page.goto(url)
        return page

    yield open_at
    for context in contexts:
        context.close()


@pytest.fixture
def page(open_page, server_url: str):
    """The page at `/`, loaded."""
    page = open_page(server_url + "/")
    # a locator wait, not wait_for_function: the page's CSP forbids eval, which that needs
    page.locator("#about", has_text="modelo").wait_for()
    return page


def ask(page, question: str, context: str | None = None, top_k: int = 1) -> None:
    if context is not None:
        page.fill("#context", context)
    page.fill("#question", question)
    page.fill("#top-k", str(top_k))
    page.click("#ask")


def test_the_answer_is_highlighted_in_the_text_with_its_score_and_latency(page):
    assert page.text_content("label[for=context]") == "Texto"
    assert page.text_content("label[for=question]") == "Pregunta"
    assert page.text_content("#ask") == "Responder"
    assert "García Márquez" in page.input_value("#context")  # the example paragraph
    ask(page, "¿Dónde nació García Márquez?", CONTEXT)
    page.wait_for_selector("#result:not(.hidden)")
    answer = page.text_content("#answer")
    mark = page.text_content("#highlighted mark")
    assert answer and mark == answer
    assert mark in CONTEXT
    assert page.text_content("#highlighted") == CONTEXT  # the whole text, the mark in its place
    assert re.fullmatch(r"[\d.]+ ms en el servidor, [\d.]+ ms ida y vuelta", page.text_content("#latency"))
    assert re.fullmatch(r"-?[\d.]+", page.text_content("#score"))
    assert re.fullmatch(r"[\d.]+ %", page.text_content("#probability"))
    assert page.is_hidden("#alternatives-box")
    assert page.is_hidden("#error")
    assert page.problems == []


def test_user_text_is_shown_as_text_never_run_as_html(page):
    ask(page, '<img src=x onerror="window.__xss = 2">¿Qué recibió?', CONTEXT)
    page.wait_for_selector("#result:not(.hidden)")
    assert page.locator("#highlighted img, #highlighted b, #answer img, #alternatives img").count() == 0
    assert page.evaluate("window.__xss") is None
    assert page.text_content("#highlighted") == CONTEXT


def test_alternatives_are_listed_when_top_k_is_more_than_one(page):
    ask(page, "¿Cuándo?", top_k=3)
    page.wait_for_selector("#alternatives-box:not(.hidden)")
    alternatives = page.locator("#alternatives li").all_text_contents()
    assert len(alternatives) == 2
    context = page.input_value("#context")
    for text in alternatives:
        assert text.split(" (")[0] in context
    assert page.problems == []


def test_errors_are_shown_in_the_page(page):
    ask(page, "   ")
    page.wait_for_selector("#error:not(.hidden)")
    assert "invalid_request" in page.text_content("#error")
    assert "question" in page.text_content("#error")
    assert page.is_hidden("#result")
    assert page.is_hidden("#key-box")  # this server needs no key


def test_the_page_sends_the_api_key_the_user_types(open_page, keyed_url):
    page = open_page(keyed_url + "/")
    page.locator("#about", has_text="modelo").wait_for()
    assert page.is_visible("#key-box")
    ask(page, "¿Dónde nació García Márquez?")
    page.wait_for_selector("#error:not(.hidden)")
    assert "unauthorized" in page.text_content("#error")
    page.fill("#api-key", "clave-secreta")
    page.click("#ask")
    page.wait_for_selector("#result:not(.hidden)")
    assert page.is_hidden("#error") and page.text_content("#answer")


def test_the_api_docs_render_offline_from_the_package(open_page, server_url):
    page = open_page(server_url + "/docs")
    page.locator(".opblock-summary-path", has_text="/v1/answer/batch").wait_for(timeout=30_000)
    assert page.locator(".opblock").count() >= 3
    assert page.foreign == []  # no CDN, no font service: nothing leaves the server
    blocked = [p for p in page.problems if "Content Security Policy" in p]
    assert blocked == [], blocked
