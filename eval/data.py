"""Reading evaluation documents: benchmark JSONL splits and plain-text corpora split into documents, and
the named document processors a task's `process_docs` may use.

Nothing is downloaded or copied: files are read where they are (by default under `gptjax.paths.data_dir()`),
and a bad file is reported with its path and line number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gptjax.errors import GptjaxError
from gptjax.paths import data_dir, json_object

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
            docs.append(json_object(line, f"{path}:{lineno}", DataError))
    return docs


def read_tfds(name: str, split: str, data_dir: str | None = None) -> list[dict[str, Any]]:
    """A prepared TFDS dataset's split as documents (bytes features decoded as UTF-8). `download=False`:
    nothing is downloaded, and a dataset not prepared under `data_dir` is a DataError naming it."""
    import tensorflow_datasets as tfds  # TensorFlow's import takes seconds: only TFDS-backed tasks pay it

    try:
        examples = tfds.load(name, split=split, data_dir=data_dir, download=False, shuffle_files=False)
    except (AssertionError, ValueError, OSError, tfds.core.registered.DatasetNotFoundError) as err:
        raise DataError(
            f"TFDS dataset {name!r} split {split!r} cannot be read (prepare it with `tfds build`): {err}"
        ) from None
    return [
        {k: v.decode("utf-8") if isinstance(v, bytes) else v.tolist() for k, v in ex.items()}
        for ex in tfds.as_numpy(examples)
    ]


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


# ---------------------------------------------------------------------------------------------------------
# Document processors (a task's `process_docs`).


class Documents(list):
    """A split's documents as a list, with the row-wise part of `datasets.Dataset`'s API that lm-eval's
    `process_docs` functions use (`map`, `filter`, `select`, `column_names`), so such a function runs
    unchanged without the datasets package. As `Dataset.map`, `map` merges the fields the function returns
    into each document (after dropping `remove_columns`)."""

    def map(self, function: Callable[[dict[str, Any]], dict[str, Any] | None], remove_columns: Any = None) -> Documents:
        drop = {remove_columns} if isinstance(remove_columns, str) else set(remove_columns or ())
        return Documents({k: v for k, v in doc.items() if k not in drop} | (function(doc) or {}) for doc in self)

    def filter(self, function: Callable[[dict[str, Any]], bool]) -> Documents:
        return Documents(doc for doc in self if function(doc))

    def select(self, indices: Iterable[int]) -> Documents:
        return Documents(self[i] for i in indices)

    @property
    def column_names(self) -> list[str]:
        return list(self[0]) if self else []


def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def hellaswag_docs(docs: Documents) -> Documents:
    """lm-eval's hellaswag `process_docs` (tasks/hellaswag/utils.py), for the Hugging Face rows (ctx_a,
    ctx_b, activity_label, endings, label): adds `query`, `choices` and `gold`."""

    def process(doc: dict[str, Any]) -> dict[str, Any]:
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {
            "query": _hellaswag_text(doc["activity_label"] + ": " + ctx),
            "choices": [_hellaswag_text(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return docs.map(process)


# The document processors a task YAML may name as `process_docs: NAME` (lm-eval's, for its raw datasets).
DOC_PROCESSORS: dict[str, Callable[[Documents], Any]] = {"hellaswag": hellaswag_docs}
