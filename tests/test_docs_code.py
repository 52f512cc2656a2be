"""The code users copy runs: every Python block of a generated model card and of README.md, and the
`tinyroberta-es` lines of the card's bash blocks.

What stands in for the model:
- a card is generated for a tiny local model folder with no Hub id (`card.repo_id` unset), so its blocks name
  that folder and run exactly as written;
- the README's blocks name the student `make demo` writes, `README_MODEL`; each occurrence is replaced by a
  tiny model folder (exported to ONNX, as `make demo` exports its student) and nothing else is changed.

Each card block runs alone in a fresh namespace; the README's blocks run in order in one namespace, as a
reader pasting them into one session would. Python blocks run in this process (torch and transformers are
already imported) under a time limit; bash lines run as subprocesses of the installed console script. Every
answer a block prints, as a line of text or as the dicts `QuestionAnswerer` returns, must be a span of a
context that the code defines (`context = "..."`, `context="..."` or `{"context": "..."}`), and every block
must print at least one.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tinyroberta_es import __version__, summary
from tinyroberta_es.card import model_card
from tinyroberta_es.card_usage import CONTEXT, QUESTION, TRANSFORMERS_SNIPPET
from tinyroberta_es.cli import main
from tinyroberta_es.tiny import TOKENIZER_KINDS, create_tiny_qa_model

README = Path(__file__).resolve().parents[1] / "README.md"
README_MODEL = "runs/sample/student-4l"  # the model the README's Python blocks name
STUDENT = "student"
BLOCK_SECONDS = 120
# bash lines of a card that the test cannot run offline (it runs every `tinyroberta-es` line)
NOT_RUN = ("pip install ", "hf download ")
ANSWER_KEYS = {"answer", "score", "start", "end"}
REAL_TOKENIZERS = ("roberta-large-bne", "multilingual-e5-small")


def code_blocks(markdown: str, language: str) -> list[str]:
    """The fenced code blocks of `language` in `markdown`, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", markdown, flags=re.DOTALL | re.MULTILINE)


def defined_contexts(code: str) -> list[str]:
    """The string literals `code` gives as a context: `context = "..."`, `context="..."` and
    `{"context": "..."}`."""
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Assign):
            found += [node.value] if any(getattr(t, "id", None) == "context" for t in node.targets) else []
        elif isinstance(node, ast.keyword) and node.arg == "context":
            found.append(node.value)
        elif isinstance(node, ast.Dict):
            pairs = zip(node.keys, node.values, strict=True)
            found += [v for k, v in pairs if getattr(k, "value", None) == "context"]
    return [n.value for n in found if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def printed_answers(stdout: str) -> Iterator[str | dict[str, Any]]:
    """What a block printed, line by line: answer dicts (alone or in lists), else the line's text."""
    for line in stdout.splitlines():
        if not line.strip():
            continue
        try:
            value = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, (dict, list)):
            yield from _dicts(value)
        else:
            yield line.strip()


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        for item in value:
            yield from _dicts(item)
    else:
        assert isinstance(value, dict) and set(value) == ANSWER_KEYS, f"not an answer: {value!r}"
        yield value


def check_answers(stdout: str, contexts: list[str], block: str) -> None:
    """At least one answer was printed, and each is a span of one of `contexts`."""
    answers = list(printed_answers(stdout))
    assert answers, f"the block printed no answer:\n{block}"
    for a in answers:
        if isinstance(a, dict):
            assert 0.0 <= a["score"] <= 1.0, f"score {a['score']} is not a probability:\n{block}"
            assert any(c[a["start"] : a["end"]] == a["answer"] for c in contexts), f"{a} is no span:\n{block}"
        else:
            assert any(a in c for c in contexts), f"printed {a!r}, no part of a context:\n{block}"


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """TimeoutError when the body runs longer than `seconds` (SIGALRM: POSIX, main thread)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"the block ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_python(code: str, namespace: dict[str, Any] | None = None) -> str:
    """Execute `code` (in `namespace`, else a fresh one) under the time limit; return what it printed."""
    namespace = {"__name__": "__main__"} if namespace is None else namespace
    out = io.StringIO()
    with time_limit(BLOCK_SECONDS), contextlib.redirect_stdout(out):
        exec(compile(code, "<code block>", "exec"), namespace)  # running the docs is the test
    return out.getvalue()


def run_bash_block(block: str) -> int:
    """Run each `tinyroberta-es` line of `block` with the installed console script; check its answer.
    Returns how many lines ran."""
    bin_dir = Path(sys.executable).parent
    if shutil.which("tinyroberta-es", path=str(bin_dir)) is None:
        pytest.skip(f"the tinyroberta-es console script is not installed in {bin_dir} (pip install -e .)")
    env = os.environ | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "TINYROBERTA_ES_OFFLINE": "1",
    }
    ran = 0
    for line in filter(None, (raw.strip() for raw in block.splitlines())):
        if line.startswith(NOT_RUN):
            continue
        assert line.startswith("tinyroberta-es "), f"a card runs a command this test does not know: {line}"
        done = subprocess.run(
            ["bash", "-c", line], env=env, capture_output=True, text=True, timeout=BLOCK_SECONDS, check=False
        )
        assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"
        argv = shlex.split(line)
        context = argv[argv.index("--context") + 1]
        first = re.search(r"^1\. (.*?)  \[chars (\d+)-(\d+),", done.stdout, flags=re.MULTILINE)
        assert first, f"no answer printed by {line}:\n{done.stdout}"
        text, start, end = first.group(1), int(first.group(2)), int(first.group(3))
        assert text and context[start:end] == text, (text, start, end)
        ran += 1
    return ran


def card_summary(folder: Path, export: dict[str, Any] | None = None) -> dict[str, Any]:
    """The smallest run summary with a student in `folder` (no Hub id, so the card names the folder)."""
    return {
        "name": "docs",
        "versions": {"tinyroberta_es": __version__},
        "recipe": {"card": {"repo_id": None}},
        "teacher": "teacher",
        "models": [
            {"name": "teacher", "role": "teacher", "folder": str(folder), "source": None, "params": None},
            {"name": STUDENT, "role": "student", "folder": str(folder), "params": None, "export": export},
        ],
        "evaluation": {"datasets": [], "normalizations": ["mlqa-es"], "primary": "mlqa-es", "rows": []},
        "bench": None,
    }


def export_entry(folder: Path) -> dict[str, Any]:
    """The summary's `export` of a model folder, as build_summary reads it from the parity report."""
    return summary.export_entry(folder / "onnx" / "parity.json", per_channel=True)


@pytest.fixture(scope="module", params=TOKENIZER_KINDS + REAL_TOKENIZERS)
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random QA model with each offset convention: the tiny BPE, WordPiece and Unigram tokenizers,
    and the real tokenizers of roberta-large-bne (byte-level BPE) and multilingual-e5-small (XLM-R
    SentencePiece), when those can be had."""
    if request.param in TOKENIZER_KINDS:
        tokenizer = request.getfixturevalue("tokenizer_dirs")[request.param]
    elif request.param == "roberta-large-bne":
        tokenizer = request.getfixturevalue("shared_dir") / "tokenizers" / "roberta-large-bne"
        if not (tokenizer / "tokenizer.json").is_file():
            pytest.skip(f"the teacher tokenizer is missing at {tokenizer}")
    else:
        tokenizer = request.getfixturevalue("me5_dir")
    out = tmp_path_factory.mktemp(f"docs-{request.param}")
    return create_tiny_qa_model(out, tokenizer, layers=1, max_length=128)


@pytest.fixture(scope="module")
def exported_dir(tokenizer_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny XLM-R-like model exported to ONNX fp32 and int8 with its parity report, like `make demo`'s."""
    pytest.importorskip("onnxruntime")
    folder = create_tiny_qa_model(tmp_path_factory.mktemp("docs-exported"), tokenizer_dirs["unigram"])
    argv = ["export", "--model", str(folder), "--quantize", "int8", "--per-channel", "--dev-limit", "10"]
    # random weights: F1 is noise, so no budget here
    assert main([*argv, "--max-f1-drop", "100", "--max-length", "96", "--doc-stride", "32"]) == 0
    return folder


def test_card_python_blocks_run_for_every_offset_convention(model_dir: Path) -> None:
    card = model_card(card_summary(model_dir), STUDENT)
    blocks = code_blocks(card, "python")
    assert len(blocks) == 2, card  # the toolkit's QuestionAnswerer, then plain transformers
    for block in blocks:
        assert str(model_dir) in block
        check_answers(run_python(block), defined_contexts(block), block)


def test_card_python_blocks_of_an_exported_model_run(exported_dir: Path) -> None:
    card = model_card(card_summary(exported_dir, export_entry(exported_dir)), STUDENT)
    python = code_blocks(card, "python")
    assert len(python) == 3, card  # and `backend="auto"` over the exports
    for block in python:
        check_answers(run_python(block), defined_contexts(block), block)


@pytest.mark.slow
def test_card_command_lines_run(exported_dir: Path) -> None:
    card = model_card(card_summary(exported_dir, export_entry(exported_dir)), STUDENT)
    ran = sum(run_bash_block(block) for block in code_blocks(card, "bash"))
    assert ran == 2, card  # `tinyroberta-es answer` as it is, and with `--backend auto`


def test_readme_python_blocks_run_in_order(exported_dir: Path) -> None:
    blocks = code_blocks(README.read_text(encoding="utf-8"), "python")
    assert blocks and any(README_MODEL in b for b in blocks), "README.md has no Python block naming the model"
    namespace: dict[str, Any] = {"__name__": "__main__"}
    contexts: list[str] = []
    for block in blocks:
        code = block.replace(README_MODEL, str(exported_dir))
        contexts += defined_contexts(code)
        check_answers(run_python(code, namespace), contexts, block)


def test_readme_transformers_block_is_the_cards() -> None:
    """The README says its plain-transformers block is the one every model card shows."""
    blocks = code_blocks(README.read_text(encoding="utf-8"), "python")
    literals = {"repo": json.dumps(README_MODEL), "question": json.dumps(QUESTION, ensure_ascii=False)}
    card_block = TRANSFORMERS_SNIPPET.format(**literals, context=json.dumps(CONTEXT, ensure_ascii=False))
    assert card_block in blocks


def test_a_block_that_breaks_fails(tokenizer_dirs: dict[str, Path], tmp_path: Path) -> None:
    """The checks above can fail: the removed pipeline raises, and an answer not in the context is caught."""
    model = create_tiny_qa_model(tmp_path, tokenizer_dirs["bpe"], layers=1, max_length=128)
    context = "Frida Kahlo nació en Coyoacán."
    removed = (
        "from transformers import pipeline\n"
        f'qa = pipeline("question-answering", model="{model}")\n'
        f'print(qa(question="¿Dónde?", context="{context}"))\n'
    )
    with pytest.raises(KeyError, match="question-answering"):
        run_python(removed)
    with pytest.raises(AssertionError, match="no part of a context"):
        check_answers(run_python('print("Madrid")'), [context], "print")
    with pytest.raises(AssertionError, match="is no span"):
        check_answers("{'answer': 'Frida', 'score': 0.5, 'start': 1, 'end': 6}", [context], "shifted")
    with pytest.raises(AssertionError, match="printed no answer"):
        check_answers("", [context], "silent")
