"""The "How to use" of a model card: the toolkit's `QuestionAnswerer`, plain transformers, and the CLI.

transformers 5 has no question-answering pipeline, hence the toolkit's pipeline-like API and a
self-contained transformers snippet. tests/test_docs_code.py runs every code block `usage` writes.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from tinyroberta_es.parity_rows import failure_reason

QUESTION, CONTEXT = "¿Dónde nació Frida Kahlo?", "Frida Kahlo nació en Coyoacán, Ciudad de México, en 1907."
# "How to use" in Python ({repo}, {question}, {context}: Python string literals).
TOOLKIT_SNIPPET = """from tinyroberta_es import QuestionAnswerer

qa = QuestionAnswerer.from_pretrained({repo})
result = qa(question={question}, context={context})
print(result)  # {{"answer": ..., "score": its probability, "start": ..., "end": ...}}
"""
TRANSFORMERS_SNIPPET = """import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained({repo})
model = AutoModelForQuestionAnswering.from_pretrained({repo}).eval()

question = {question}
context = {context}
inputs = tokenizer(
    question, context, truncation="only_second", max_length=384,  # one window: the context is cut
    return_offsets_mapping=True, return_tensors="pt",
)
offsets = inputs.pop("offset_mapping")[0].tolist()  # the (start, end) characters of each token
in_context = torch.tensor([s == 1 for s in inputs.sequence_ids(0)])  # answers come from the context only
with torch.no_grad():
    out = model(**inputs)
start = out.start_logits[0].masked_fill(~in_context, -torch.inf)  # (T,)
end = out.end_logits[0].masked_fill(~in_context, -torch.inf)  # (T,)
n = len(offsets)
allowed = torch.ones(n, n, dtype=torch.bool).triu().tril(29)  # end >= start, at most 30 tokens
best = (start[:, None] + end[None, :]).masked_fill(~allowed, -torch.inf).argmax().item()  # over (T, T)
i, j = divmod(best, n)  # start and end token
# strip: SentencePiece (XLM-R) offsets include the space before a word, byte-level BPE (RoBERTa) ones do not
print(context[offsets[i][0] : offsets[j][1]].strip())
"""


def exported_backends(model: dict[str, Any]) -> list[str]:
    """The ONNX and OpenVINO backends the model was exported to that passed the parity check (neither
    rejected nor over the F1 budget), in the parity report's order."""
    from tinyroberta_es.runtimes import engine_of

    export = model.get("export") or {}
    rejected, budget = set(export.get("rejected", [])), export.get("max_f1_drop")
    return [
        b
        for b, row in export.get("variants", {}).items()
        if engine_of(b) != "torch" and failure_reason(row, budget, b in rejected) is None
    ]


def usage(summary: dict[str, Any], model: dict[str, Any]) -> str:
    """Python with the toolkit's `QuestionAnswerer`, plain transformers, and the CLI; with exports,
    `--backend auto` and the backends that passed the parity check (ONNX Runtime and OpenVINO).

    transformers 5 has no question-answering pipeline, hence the toolkit's pipeline-like API and a
    self-contained transformers snippet. Every code block here is run by tests/test_docs_code.py.
    """
    repo_id = (summary["recipe"].get("card") or {}).get("repo_id")
    repo = repo_id or model["folder"]
    values = {"repo": _py(repo), "question": _py(QUESTION), "context": _py(CONTEXT)}
    cli = f'--question "{QUESTION}" --context "{CONTEXT}"'  # neither holds a character bash expands
    text = (
        "With this toolkit, which splits long contexts into overlapping windows, widens answers to whole "
        "words and gives each answer its probability (`score`):\n\n"
        f"```bash\npip install tinyroberta-es\n```\n\n"
        f"```python\n{TOOLKIT_SNIPPET.format(**values)}```\n\n"
        "With transformers alone (it has no question-answering pipeline since version 5): the best span of "
        "one window of up to 384 tokens, whatever the tokenizer's offset convention:\n\n"
        f"```python\n{TRANSFORMERS_SNIPPET.format(**values)}```\n\n"
        f"From the command line:\n\n```bash\ntinyroberta-es answer --model {shlex.quote(repo)} {cli}\n```"
    )
    if not repo_id:
        text += f"\n\n`{repo}` is the run's local folder; once pushed to the Hub, use its Hub id instead."
    backends = exported_backends(model)
    if backends:
        # auto and the exported backends read the files of a local folder's `onnx/`
        local = f"./{model['name']}" if repo_id else model["folder"]
        folder = shlex.quote(local)
        extra = "openvino" if any(b.startswith("openvino") for b in backends) else "onnx"
        download = f"pip install 'tinyroberta-es[{extra}]'\n"
        download += f"hf download {repo_id} --local-dir {folder}\n" if repo_id else ""
        text += (
            f"\n\nThe export in `onnx/` passed the parity check on {', '.join(backends)} (F1 within the "
            "export's budget of PyTorch fp32). `--backend auto` measures those (and PyTorch) on your machine "
            "and keeps the fastest:\n\n"
            f"```bash\n{download}tinyroberta-es answer --model {folder} --backend auto {cli}\n```\n\n"
            f"Or name one: {', '.join(f'`--backend {b}`' for b in backends)}. In Python:\n\n"
            f"```python\nfrom tinyroberta_es import QuestionAnswerer\n\n"
            f'qa = QuestionAnswerer.from_pretrained({_py(local)}, backend="auto")\n'
            f"print(qa(question={_py(QUESTION)}, context={_py(CONTEXT)}))\n```"
        )
    return text


def _py(text: str) -> str:
    """`text` as a double-quoted Python string literal."""
    return json.dumps(text, ensure_ascii=False)
