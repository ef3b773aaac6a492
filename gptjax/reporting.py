"""What every gptjax report is made of: blocks rendered as Markdown and as a self-contained HTML page, plots
in one style, and numbers written one way.

The few-shot report (eval/report.py) and the sweep report (experiments/report.py) are both lists of these
blocks, so the two formats of one report cannot drift apart and the two reports look alike. Plots use
matplotlib's object API on an Agg canvas (no pyplot state, no global backend switch) and are written as PNG
(embedded in the HTML) and SVG, byte for byte the same for the same data. This module is core: it imports
nothing from eval or experiments, which build on it.
"""

from __future__ import annotations

import base64
import contextlib
import html
import math
import re
import typing
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import matplotlib.figure
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg

# ---------------------------------------------------------------------------------------------------------
# Blocks.


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
    png: Path  # written by `save_figure`, with its SVG beside it
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
                parts.append(
                    f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}"/>'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
            case Code(text, _, summary):
                pre = f"<pre>{html.escape(text)}</pre>"
                parts.append(f"<details><summary>{html.escape(summary)}</summary>{pre}</details>" if summary else pre)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8"/>\n<title>{html.escape(title)}'
        f"</title>\n<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n"
    )


def write_report(blocks: Sequence[Block], out_dir: Path, title: str) -> dict[str, Path]:
    """Write out_dir/report.md and out_dir/report.html. Returns them and every figure's PNG and SVG, keyed by
    their path relative to out_dir (e.g. "report.md", "plots/aggregate.svg")."""
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(markdown(blocks, out_dir), encoding="utf-8")
    page.write_text(html_page(blocks, title), encoding="utf-8")
    pngs = [block.png for block in blocks if isinstance(block, Figure)]
    written = [md, page, *pngs, *(png.with_suffix(".svg") for png in pngs)]
    return {path.relative_to(out_dir).as_posix(): path for path in written}


# ---------------------------------------------------------------------------------------------------------
# Plots.

PLOT_STYLE = {
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "legend.fontsize": 9,
    "savefig.dpi": 150,
    "svg.hashsalt": "gptjax-report",  # stable SVG ids: the same data gives byte-identical plots
}


def plot_style() -> contextlib.AbstractContextManager[None]:
    """PLOT_STYLE for the figures drawn and saved inside a `with` block (rc settings apply when used)."""
    return matplotlib.rc_context(typing.cast(Any, PLOT_STYLE))


def new_axes(height: float = 4.2) -> tuple[matplotlib.figure.Figure, Axes]:
    """One report-width figure with a single axes, on its own Agg canvas."""
    fig = matplotlib.figure.Figure(figsize=(7.2, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig: matplotlib.figure.Figure, stem: Path) -> Path:
    """Write stem.png and stem.svg without timestamps or version stamps; returns the PNG (the one HTML embeds)."""
    png = stem.with_name(stem.name + ".png")
    fig.savefig(png, metadata={"Software": None})
    fig.savefig(stem.with_name(stem.name + ".svg"), metadata={"Date": None})
    return png


Key = TypeVar("Key", bound=Hashable)


def sequential_colours(keys: Sequence[Key]) -> dict[Key, Any]:
    """A viridis colour per key, in order (model sizes, smallest first), stopping short of its pale yellow."""
    cmap = matplotlib.colormaps["viridis"]
    return {key: cmap(x) for key, x in zip(keys, np.linspace(0.0, 0.85, len(keys)))}


# ---------------------------------------------------------------------------------------------------------
# Numbers.


def human(n: float) -> str:
    """25472 -> 25.5k, 6.3e11 -> 630G: parameter, token and FLOP counts at a glance."""
    for divisor, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= divisor:
            return f"{n / divisor:.3g}{suffix}"
    return f"{n:.3g}"


def pm(value: float, stderr: float) -> str:
    """value ± stderr with the decimals the error supports; 3 significant digits when there is no error,
    when it exceeds the value, or for very large or small numbers."""
    if not math.isfinite(stderr) or stderr <= 0:
        return f"{value:.3g}"
    if stderr >= abs(value) or not 1e-6 <= stderr < 1e5 or abs(value) >= 1e5:
        return f"{value:.3g} ± {stderr:.2g}"
    digits = max(0, 1 - math.floor(math.log10(stderr)))
    return f"{value:.{digits}f} ± {stderr:.{digits}f}"


__all__ = [
    "PLOT_STYLE",
    "Block",
    "Code",
    "Figure",
    "Heading",
    "Link",
    "Table",
    "Text",
    "html_page",
    "human",
    "markdown",
    "new_axes",
    "plot_style",
    "pm",
    "save_figure",
    "sequential_colours",
    "write_report",
]
