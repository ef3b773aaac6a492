"""Reading evaluation documents: benchmark JSONL splits and plain-text corpora split into documents.

Nothing is downloaded or copied: files are read where they are (by default under `gptjax.paths.data_dir()`),
and a bad file is reported with its path and line number.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gptjax.errors import GptjaxError
from gptjax.paths import data_dir

DOCUMENT_SPLITTERS = ("whole_file", "wikitext_pages")


class DataError(GptjaxError, ValueError):
    """A data file is missing or malformed; the message names the file (and line)."""


def default_benchmark_dir() -> Path:
    return data_dir() / "benchmarks"


def default_corpus_dir() -> Path:
    return data_dir() / "corpora"


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(
            f"{path} does not exist (data root {data_dir()}; set GPTJAX_DATA_DIR or pass the "
            "benchmark/corpus directory to change it)"
        )


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """One JSON object per line; blank lines are skipped."""
    path = Path(path)
    _require_file(path)
    docs = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(doc, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(doc).__name__}")
            docs.append(doc)
    return docs


def wikitext_pages(text: str) -> list[str]:
    """Split WikiText into articles at top-level ` = Title = ` headings, exactly as the
    EleutherAI/wikitext_document_level dataset (which lm-eval's wikitext task reads) does."""
    pages, lines = [], []
    for line in text.split("\n"):
        heading = line.replace("= = =", "===").replace("= =", "==").strip()
        if heading.startswith("= ") and heading.endswith(" ="):
            page = "\n".join(lines)
            if page.strip():
                pages.append(page)
            lines = []
        lines.append(line)
    pages.append("\n".join(lines))
    return pages


def read_corpus(path: str | Path, documents: str) -> list[str]:
    """The documents of a text corpus: the whole file as one, or WikiText articles."""
    path = Path(path)
    _require_file(path)
    with path.open(encoding="utf-8") as f:  # universal newlines, as the HF dataset script reads it
        text = f.read()
    if documents == "wikitext_pages":
        return wikitext_pages(text)
    if documents == "whole_file":
        return [text]
    raise DataError(f"unknown document splitter {documents!r}; valid: {list(DOCUMENT_SPLITTERS)}")


def wikitext_detokenize(string: str) -> str:
    """Undo WikiText's tokenisation; the same replacements, in the same order, as lm-eval's
    `wikitext_detokenizer` (tasks/wikitext/preprocess_wikitext.py)."""
    string = string.replace("s '", "s'")
    string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
    for before, after in (
        (" @-@ ", "-"),
        (" @,@ ", ","),
        (" @.@ ", "."),
        (" : ", ": "),
        (" ; ", "; "),
        (" . ", ". "),
        (" ! ", "! "),
        (" ? ", "? "),
        (" , ", ", "),
    ):
        string = string.replace(before, after)
    string = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", string)
    string = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", string)
    string = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", string)
    string = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', string)
    string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
    for before, after in (
        ("= = = =", "===="),
        ("= = =", "==="),
        ("= =", "=="),
        (" " + chr(176) + " ", chr(176)),
        (" \n", "\n"),
        ("\n ", "\n"),
        (" N ", " 1 "),
        (" 's", "'s"),
    ):
        string = string.replace(before, after)
    return string


DETOKENIZERS = {"wikitext": wikitext_detokenize}
