"""`QuestionAnswerer` as users call it: the pipeline-like entry point, a request's cost, broken outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run_cli
from tinyroberta_es.data.schema import Example
from tinyroberta_es.errors import ModelOutputError, UserError
from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer
from tinyroberta_es.runtimes import Runner
from tinyroberta_es.tiny import create_tiny_qa_model

CONTEXT = (
    "Gabriel García Márquez nació en Aracataca, Colombia, en 1927. En 1982 recibió el Premio Nobel "
    "de Literatura. «Cien años de soledad» se publicó en Buenos Aires en 1967."
)
QUESTION = "¿Dónde nació García Márquez?"


@pytest.fixture(scope="module")
def model_dir(tokenizer_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny_qa_model(tmp_path_factory.mktemp("tiny-qa"), tokenizer_dirs["unigram"], max_length=128)


@pytest.fixture(scope="module")
def qa(model_dir: Path) -> QuestionAnswerer:
    return QuestionAnswerer.from_pretrained(model_dir, device="cpu", max_length=96, doc_stride=32)


def fake_runner(forward, name: str = "pytorch", dtype: str = "float32") -> Runner:
    return Runner(
        name=name,
        dtype=dtype,
        device="cpu",
        threads=None,
        input_names=("input_ids", "attention_mask"),
        forward=forward,
    )


def cls_wins(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Logits that put the answer at CLS/<s>: a null answer under any sensible threshold."""
    logits = np.zeros(inputs["input_ids"].shape, np.float32)  # (B, T)
    logits[:, 0] = 5.0
    return logits, logits.copy()


# --- from_pretrained ------------------------------------------------------------------------------------


def test_from_pretrained_takes_config_fields_as_keywords_and_names_the_model(model_dir, qa):
    assert (qa.config.max_length, qa.config.doc_stride) == (96, 32)
    assert qa.config.backend == "pytorch" and qa.config.align_to_words
    assert qa.name == str(model_dir)
    base = InferenceConfig(n_best=5, null_threshold=0.0)
    derived = QuestionAnswerer.from_pretrained(model_dir, base, "cpu", n_best=7)
    assert derived.config.n_best == 7 and derived.config.null_threshold == 0.0
    assert base.n_best == 5  # the given config is not changed


def test_from_pretrained_rejects_an_unknown_keyword_naming_it(model_dir):
    with pytest.raises(TypeError, match=r"'top_k'.*given per call"):
        QuestionAnswerer.from_pretrained(model_dir, top_k=3)
    with pytest.raises(TypeError, match=r"'max_lenght'.*max_length"):
        QuestionAnswerer.from_pretrained(model_dir, max_lenght=128)


# --- __call__ -------------------------------------------------------------------------------------------


def test_call_gives_the_pipeline_dict_of_the_best_answer(qa):
    result = qa(question=QUESTION, context=CONTEXT)
    assert set(result) == {"answer", "score", "start", "end"}
    assert CONTEXT[result["start"] : result["end"]] == result["answer"] != ""
    prediction = qa.answer(QUESTION, CONTEXT)
    assert result["answer"] == prediction.text and result["score"] == prediction.answers[0].probability
    assert qa({"question": QUESTION, "context": CONTEXT}) == result  # one dict, positional


def test_the_score_of_an_answer_does_not_depend_on_top_k_and_is_below_one(qa):
    best = qa(question=QUESTION, context=CONTEXT, top_k=1)
    for k in (3, 20):
        answers = qa(question=QUESTION, context=CONTEXT, top_k=k)
        assert isinstance(answers, list) and len(answers) == k
        assert answers[0] == best
        assert [a["score"] for a in answers] == sorted((a["score"] for a in answers), reverse=True)
    assert 0.0 < best["score"] < 1.0  # a random model is not sure of anything


def test_a_batch_of_dicts_is_answered_in_one_predict_call(qa, monkeypatch):
    items = [
        {"question": QUESTION, "context": CONTEXT},
        {"question": "¿Cuándo recibió el Nobel?", "context": CONTEXT},
        {"question": "¿Dónde se publicó?", "context": "Se publicó en Buenos Aires."},
    ]
    calls = []
    predict = qa.predict
    monkeypatch.setattr(
        qa, "predict", lambda examples, top_k=1: calls.append(len(examples)) or predict(examples, top_k)
    )
    results = qa(items, top_k=2)
    assert calls == [3]
    assert len(results) == 3 and all(isinstance(r, list) and len(r) == 2 for r in results)
    for item, result in zip(items, results, strict=True):
        alone = qa(question=item["question"], context=item["context"], top_k=2)
        assert [(a["answer"], a["start"], a["end"]) for a in result] == [
            (a["answer"], a["start"], a["end"]) for a in alone
        ]
        # Padding with longer neighbours changes the float32 logits in their last bits only.
        np.testing.assert_allclose([a["score"] for a in result], [a["score"] for a in alone], rtol=1e-5)
    assert qa([]) == []


def test_a_null_answer_is_an_empty_answer_at_zero_with_the_null_probability(qa):
    null_qa = QuestionAnswerer(fake_runner(cls_wins), qa.tokenizer, InferenceConfig(null_threshold=0.0))
    prediction = null_qa.answer(QUESTION, CONTEXT)
    assert prediction.is_null and 0.0 < prediction.null_probability < 1.0
    result = null_qa(question=QUESTION, context=CONTEXT)
    assert result == {"answer": "", "score": prediction.null_probability, "start": 0, "end": 0}
    answers = null_qa(question=QUESTION, context=CONTEXT, top_k=3)
    assert answers[0] == result and [a["answer"] != "" for a in answers[1:]] == [True, True]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {"question": "  ", "context": CONTEXT}, "the question is empty; ask a question"),
        ((), {"question": QUESTION}, "missing 'context'"),
        ((), {"question": QUESTION, "context": 3}, "the context is a int, not a string"),
        (
            ([{"question": QUESTION, "context": CONTEXT}, {"question": QUESTION}],),
            {},
            r"inputs\[1\]: missing",
        ),
        (
            ([{"question": QUESTION, "context": ""}, "text"],),
            {},
            r"inputs\[0\]: the context is empty.*inputs\[1\]",
        ),
        (([{"question": QUESTION, "context": CONTEXT, "contexto": "x"}],), {}, "unknown key.*'contexto'"),
        (("¿Qué?",), {}, "inputs is a str"),
        (({"question": QUESTION, "context": CONTEXT},), {"question": QUESTION}, "not both"),
        ((), {"question": QUESTION, "context": CONTEXT, "top_k": 0}, "top_k must be a positive integer"),
    ],
)
def test_bad_input_is_one_user_error_naming_the_item_and_the_fix(qa, args, kwargs, message):
    with pytest.raises(UserError, match=message):
        qa(*args, **kwargs)


# --- cost -----------------------------------------------------------------------------------------------


def test_cost_counts_the_windows_and_tokens_of_one_request(qa):
    short = Example(id="a", question=QUESTION, context="Nació en Aracataca.")
    long = Example(id="b", question=QUESTION, context=" ".join([CONTEXT] * 6))
    for example in (short, long):
        features = qa.features([example])
        assert qa.cost(example) == (len(features), int(features.lengths.sum()))
    assert qa.cost(short)[0] == 1 and qa.cost(long)[0] > 1


def test_cost_refuses_a_request_that_cannot_be_answered(qa):
    with pytest.raises(UserError, match="the question is empty"):
        qa.cost(Example(id="a", question=" ", context=CONTEXT))
    with pytest.raises(UserError, match="the context is empty"):
        qa.cost(Example(id="a", question=QUESTION, context="\n"))
    long_question = " ".join(["¿Dónde nació el autor de la novela más leída de Colombia?"] * 4)
    assert qa.cost(Example(id="a", question=QUESTION, context=CONTEXT))  # the short one fits these settings
    with pytest.raises(UserError, match="doc_stride 32"):
        qa.cost(Example(id="a", question=long_question, context=CONTEXT))


# --- broken outputs -------------------------------------------------------------------------------------


def test_nan_logits_raise_a_model_output_error_naming_the_model_and_backend(qa):
    def half_nan(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        start, end = np.zeros((2, *inputs["input_ids"].shape), np.float32)
        start[::2, 1] = np.nan  # every other window
        return start, end

    broken = QuestionAnswerer(
        fake_runner(half_nan, "pytorch-bf16", "bfloat16"),
        qa.tokenizer,
        InferenceConfig(batch_size=4),
        name="m1",
    )
    examples = [Example(id=str(i), question=QUESTION, context=CONTEXT) for i in range(4)]
    with pytest.raises(ModelOutputError) as caught:
        broken.predict(examples)
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    for needle in ("model m1", "backend pytorch-bf16", "2 of the 4 windows", "re-export", "fp32"):
        assert needle in message, message


def test_non_finite_logits_past_a_window_end_are_ignored(qa):
    def padded_inf(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        start = np.where(inputs["attention_mask"] == 1, 0.0, np.nan).astype(np.float32)  # (B, T)
        return start, start.copy()

    runner = fake_runner(padded_inf)
    runner.pad_to_multiple_of = 64
    ok = QuestionAnswerer(runner, qa.tokenizer)
    assert ok.answer(QUESTION, CONTEXT).text
    assert ok.name == "pytorch"  # no name given: the runner's


def test_the_cli_reports_a_model_with_nan_weights_in_one_line(model_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for path in model_dir.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    weights = load_file(broken / "model.safetensors")
    bias = next(name for name in weights if name.endswith("qa_outputs.bias"))
    weights[bias] = weights[bias].fill_(float("nan"))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    status, _, err = run_cli(
        capsys, "answer", "--model", str(broken), "--question", QUESTION, "--context", CONTEXT
    )
    assert_one_line_error(status, err, str(broken), "backend pytorch", "NaN")
