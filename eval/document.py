"""Reports as a list of blocks, rendered once as Markdown and once as a self-contained HTML page.

Shared by the few-shot report (eval/report.py) and the sweep report (experiments/report.py): both are
built from the same block types, so the two formats of one report cannot drift apart.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Link:
    text: str
    target: str  # for Markdown, relative to the report directory
    html_target: str


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    right: frozenset[int]  # indices of numeric columns, right-aligned


@dataclass(frozen=True)
class Figure:
    png: Path
    caption: str


@dataclass(frozen=True)
class Code:
    """A verbatim text (an example prompt, a sweep file); collapsed in HTML when it has a summary."""

    text: str
    language: str = "text"
    summary: str | None = None


Block = Heading | Text | Link | Table | Figure | Code


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(blocks: Sequence[Block], out_dir: Path) -> str:
    parts = []
    for block in blocks:
        match block:
            case Heading(level, text):
                parts.append(f"{'#' * level} {text}")
            case Text(text):
                parts.append(text)
            case Link(text, target, _):
                parts.append(f"[{text}]({target})")
            case Table(header, rows, right):
                align = ["---:" if i in right else "---" for i in range(len(header))]
                lines = [header, align, *rows]
                parts.append("\n".join("| " + " | ".join(_md_cell(c) for c in line) + " |" for line in lines))
            case Figure(png, caption):
                parts.append(f"![{caption}]({png.relative_to(out_dir).as_posix()})\n\n*{caption}*")
            case Code(text, language, summary):
                longest_run = max((len(m) for m in re.findall(r"`+", text)), default=0)
                fence = "`" * max(3, longest_run + 1)  # a fence the text itself cannot close
                code = f"{fence}{language}\n{text.rstrip()}\n{fence}"
                parts.append(f"**{summary}**\n\n{code}" if summary else code)
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; white-space: nowrap; }
thead th { border-bottom: 2px solid #444; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.wrap { white-space: normal; min-width: 16em; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figure img { width: 540px; max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; max-width: 540px; }
details { margin: 0.4em 0; }
summary { cursor: pointer; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; white-space: pre-wrap; font-size: 0.85em; }
"""


def _html_table(table: Table) -> str:
    def cell(i: int, text: str, tag: str) -> str:
        # Numbers align right; long text (fit parameters, errors) wraps instead of widening the table.
        kind = "num" if i in table.right else "wrap" if len(text) > 60 else ""
        attrs = f' class="{kind}"' if kind else ""
        return f"<{tag}{attrs}>{html.escape(text)}</{tag}>"

    def row(cells: Sequence[str], tag: str) -> str:
        return "<tr>" + "".join(cell(i, text, tag) for i, text in enumerate(cells)) + "</tr>"

    body = "\n".join(row(r, "td") for r in table.rows)
    return f"<table>\n<thead>{row(table.header, 'th')}</thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def html_page(blocks: Sequence[Block], title: str) -> str:
    """One well-formed page with the plots embedded as base64 PNG, so it can be mailed or archived alone."""
    parts = []
    for block in blocks:
        match block:
            case Heading(level, text):
                parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
            case Text(text):
                parts.append(f"<p>{html.escape(text)}</p>")
            case Link(text, _, target):
                parts.append(f'<p><a href="{html.escape(target)}">{html.escape(text)}</a></p>')
            case Table():
                parts.append(_html_table(block))
            case Figure(png, caption):
                data = base64.b64encode(png.read_bytes()).decode("ascii")
                parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}"/>'
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")
            case Code(text, _, summary):
                pre = f"<pre>{html.escape(text)}</pre>"
                parts.append(f"<details><summary>{html.escape(summary)}</summary>{pre}</details>" if summary else pre)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8"/>\n<title>{html.escape(title)}'
            f"</title>\n<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")
