"""Corpora as a stream of documents, and the prepared corpora the `gptjax data` commands write.

A corpus is one or more files, local or `gs://` (etils.epath), read line by line so its size is bounded
only by the disk. A `.jsonl` file holds one JSON object per line with its text in `CorpusFormat.field`
(other keys are carried along); any other file is plain text, one document per non-empty line or, with
`doc_start`, one document from each line matching that regex up to the next match. A document's id is
its record's "id" when there is one, else `<file name>:<line>`; every error names `<file>:<line>`.

Every command decides, then writes: a first pass reads all of its input (so a missing or malformed file
fails before anything is written), a second pass re-reads it and writes the kept documents. Each output
file is written atomically (gptjax.rundir.write_atomic) and the report last, so a directory with a report
is complete and a failed command leaves no file half-written.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

from etils import epath
from tqdm import tqdm

from gptjax.errors import GptjaxError, InputNotFoundError
from gptjax.paths import json_object
from gptjax.rundir import CorpusDir, PathLike, as_path, write_atomic, write_json

T = TypeVar("T")
_TOKEN = re.compile(r"\S+")
_PUNCTUATION = re.compile(r"[^\w]+")
_NOT_WORD_OR_SPACE = re.compile(r"[^\w\s]+")


class CorpusError(GptjaxError, ValueError):
    """A corpus file is malformed or an output would overwrite a prepared corpus; the message names the
    file (and line)."""


@dataclass(frozen=True)
class CorpusFormat:
    """How the files of a corpus hold documents (module docstring)."""

    field: str = "text"  # the text of a JSONL record
    doc_start: str | None = None  # plain text: a regex matching a document's first line; None = one per line

    def __post_init__(self) -> None:
        if self.doc_start is not None:
            try:
                re.compile(self.doc_start)
            except re.error as err:
                raise CorpusError(f"doc_start {self.doc_start!r} is not a valid regex: {err}") from None


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    where: str  # <file>:<line> of its first line
    fields: dict[str, Any] = field(default_factory=dict)  # a JSONL record's other keys

    def record(self, **extra: Any) -> dict[str, Any]:
        """The document as a line of a prepared corpus."""
        return {"id": self.id, "text": self.text, **self.fields, **extra}


def words(text: str) -> list[str]:
    """Normalised words: whitespace-separated, lower-cased, punctuation removed (GPT-3's n-gram words)."""
    return _NOT_WORD_OR_SPACE.sub("", text.lower()).split()


def word_spans(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """`words(text)` and the character span of each in `text` (slower than `words`)."""
    found, spans = [], []
    for match in _TOKEN.finditer(text):
        word = _PUNCTUATION.sub("", match.group().lower())
        if word:
            found.append(word)
            spans.append(match.span())
    return found, spans


def text_key(text: str) -> bytes:
    """The identity of a text for exact deduplication: a hash of its whitespace-normalised form."""
    return hashlib.blake2b(" ".join(text.split()).encode(), digest_size=16).digest()


def input_files(paths: Sequence[PathLike]) -> list[epath.Path]:
    """The input files, each checked to exist (InputNotFoundError names the first that does not)."""
    if not paths:
        raise CorpusError("no input files given")
    files = [as_path(p) for p in paths]
    for path in files:
        if not path.is_file():
            raise InputNotFoundError(f"input file {path} does not exist" + (" (it is a directory)" * path.is_dir()))
    return files


def read_documents(paths: Sequence[epath.Path], fmt: CorpusFormat, desc: str = "reading") -> Iterator[Document]:
    """Every document of the files in order, with a progress bar on a terminal."""
    with tqdm(desc=desc, unit="doc", unit_scale=True, disable=None) as progress:
        for path in paths:
            count = 0
            for doc in _documents(path, fmt):
                count += 1
                progress.update()
                yield doc
            if count == 0:
                raise CorpusError(f"{path}:1: the file holds no documents")


def _lines(path: epath.Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise CorpusError(f"{path}:{lineno}: not UTF-8 ({err.reason} at byte {err.start})") from None


def _documents(path: epath.Path, fmt: CorpusFormat) -> Iterator[Document]:
    if path.name.endswith(".jsonl"):
        for lineno, line in _lines(path):
            if line.strip():
                yield _jsonl_document(path, lineno, line, fmt.field)
        return
    if fmt.doc_start is None:
        for lineno, line in _lines(path):
            if line.strip():
                yield Document(f"{path.name}:{lineno}", line.strip(), f"{path}:{lineno}")
        return
    # first: the line of the current document's first text (0: none yet)
    start, first, buffer = re.compile(fmt.doc_start), 0, list[str]()
    for lineno, line in _lines(path):
        if start.match(line) and first:
            yield Document(f"{path.name}:{first}", "".join(buffer).strip(), f"{path}:{first}")
            first, buffer = 0, []
        if not first and line.strip():
            first = lineno
        if first:
            buffer.append(line)
    if first:
        yield Document(f"{path.name}:{first}", "".join(buffer).strip(), f"{path}:{first}")


def _jsonl_document(path: epath.Path, lineno: int, line: str, text_field: str) -> Document:
    where = f"{path}:{lineno}"
    record = json_object(line, where, CorpusError)
    text = record.get(text_field)
    if not isinstance(text, str):
        raise CorpusError(f"{where}: no string field {text_field!r} (keys: {sorted(record)})")
    doc_id = str(record["id"]) if "id" in record else f"{path.name}:{lineno}"
    return Document(doc_id, text, where, {k: v for k, v in record.items() if k not in ("id", "text", text_field)})


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    """Consecutive lists of n items (the last may be shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def output_dir(path: PathLike) -> CorpusDir:
    """A command's output directory; a complete prepared corpus there is never overwritten."""
    out = CorpusDir(path)
    if out.path.exists() and not out.path.is_dir():
        raise CorpusError(f"output {out.path} is a file, not a directory")
    if out.exists():
        raise CorpusError(f"output {out.path} already holds a prepared corpus ({out.report_file}); choose a new --out")
    return out


def write_jsonl(path: PathLike, records: Iterable[Mapping[str, Any]]) -> int:
    """Write one JSON object per line, atomically; returns the number written."""
    count = 0

    def write(f: IO[bytes]) -> None:
        nonlocal count
        for record in records:
            f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
            count += 1

    write_atomic(path, write)
    return count


def finish(out: CorpusDir, report: dict[str, Any]) -> dict[str, Any]:
    """Write the report, which marks `out` complete; returns it."""
    write_json(out.report_file, report)
    return report


__all__ = [
    "CorpusError",
    "CorpusFormat",
    "Document",
    "batched",
    "finish",
    "input_files",
    "output_dir",
    "read_documents",
    "text_key",
    "word_spans",
    "words",
    "write_jsonl",
]
