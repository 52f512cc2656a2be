"""The report as a document: its blocks (`Heading`, `Para`, `Table`, `Image`, `Code`) and two renderings.

Markdown shows plots by relative path; HTML is one self-contained page (inline CSS, plots as base64 data URIs,
every string escaped). Both render the same list of blocks, so `report.md` and `report.html` always say the
same thing.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

CSS = (
    "body{font-family:system-ui,sans-serif;max-width:80rem;margin:2rem auto;padding:0 1rem;color:#222}"
    "table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}"
    "th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}"
    "th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}"
    "pre{background:#f6f6f6;padding:1rem;overflow:auto}img{max-width:100%}.t{text-align:left}"
)
_NUMBER = re.compile(r"^[-+]?[\d.,]*\d[\d.,e+-]*\s*(x|%|[/\d. ]*)$|^$|^-$")


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str
    code: str = ""  # shown after `text` as inline code (a command)


@dataclass(frozen=True)
class Table:
    rows: list[dict[str, str]]  # one dict per row, column name -> formatted cell


@dataclass(frozen=True)
class Image:
    path: Path
    alt: str


@dataclass(frozen=True)
class Code:
    text: str


Block = Heading | Para | Table | Image | Code


def render_markdown(doc: list[Block]) -> str:
    """The blocks as markdown; images by their file name, next to report.md."""
    out = []
    for b in doc:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(f"{b.text} `{b.code}`" if b.code else b.text)
        elif isinstance(b, Table):
            out.append(_markdown_table(list(b.rows[0]), b.rows))
        elif isinstance(b, Image):
            out.append(f"![{b.alt}]({b.path.name})")
        else:
            fence = "````" if "```" in b.text else "```"
            out.append(f"{fence}yaml\n{b.text.rstrip()}\n{fence}")
    return "\n\n".join(out) + "\n"


def render_html(doc: list[Block], title: str) -> str:
    """The blocks as one self-contained HTML page: inline CSS, images as data URIs, all text escaped."""
    e = html.escape
    out = []
    for b in doc:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{e(b.text)}" + (f" <code>{e(b.code)}</code>" if b.code else "") + "</p>")
        elif isinstance(b, Table):
            out.append(_html_table(list(b.rows[0]), b.rows))
        elif isinstance(b, Image):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(f'<p><img alt="{e(b.alt)}" src="data:image/png;base64,{data}"></p>')
        else:
            out.append(f"<pre>{e(b.text)}</pre>")
    head, body = f'<meta charset="utf-8"><title>{e(title)}</title><style>{CSS}</style>', "\n".join(out)
    return f'<!doctype html>\n<html lang="en"><head>{head}</head>\n<body>\n{body}\n</body></html>\n'


def _markdown_table(header: list[str], rows: list[dict[str, str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", r"\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(r.get(h, "")) for h in header) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[dict[str, str]]) -> str:
    def tr(tag: str, cells: list[str]) -> str:
        return "<tr>" + "".join(f"<{tag}{_align(c)}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"

    body = "".join(tr("td", [r.get(h, "") for h in header]) for r in rows)
    return f"<table><thead>{tr('th', header)}</thead><tbody>{body}</tbody></table>"


def _align(cell: str) -> str:
    """Numbers right-aligned (the stylesheet's default), text left-aligned."""
    return "" if _NUMBER.match(str(cell)) else ' class="t"'
