"""Benchmark contamination by n-gram overlap (GPT-3 Appendix C) between a training corpus and evaluation
documents given as texts: eval/contamination.py renders an eval task's documents as the model sees them,
and this module, which never reads eval tasks, matches them.

Words are corpus.words (lower-cased, punctuation removed, whitespace-split). An evaluation document is
dirty when one of its n-grams (n = 13 by default; a document shorter than n words is one n-gram of all its
words) occurs in a corpus document, and clean otherwise. An n-gram found in more than `max_doc_freq`
corpus documents is ignored (GPT-3's rule: such n-grams are boilerplate and common phrases, not leaked
test items). The dirty documents of each task are written as dirty/<task>.json (`DirtySet`), which
`gptjax eval --dirty` reads to score the clean subset beside the full one.

The corpus is cleaned the way GPT-3 cleaned its training data: `window` characters on either side of each
matched n-gram are cut out with it, splitting the document into pieces; pieces shorter than `min_piece`
characters are dropped, and a document cut into more than `max_pieces` pieces is dropped whole.

Hashing: a word hashes to 64 bits (BLAKE2b), an m-gram to a polynomial in its words' hashes mod 2^64
seeded with m; the evaluation m-grams form one sorted array that each corpus document is looked up in,
vectorised, once per m-gram length in use. A 64-bit collision between the few million benchmark n-grams
and a corpus n-gram is expected about once per 10^12 corpus n-grams.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from etils import epath

from gptjax.errors import ConfigError, GptjaxError, InputNotFoundError
from gptjax.prep.corpus import CorpusFormat, Document, batched, finish, read_documents, word_spans, words, write_jsonl
from gptjax.rundir import CorpusDir, PathLike, as_path, write_json

_PRIME = np.uint64(0x100000001B3)
MATCH_BATCH = 1024  # corpus documents looked up at once


class ContaminationError(GptjaxError, ValueError):
    """A dirty-id file is malformed or does not fit the task it is applied to; the message names the file."""


@dataclass(frozen=True)
class EvalTexts:
    """One eval task's scored documents as text, in document-id order."""

    task: str
    split: str
    texts: tuple[str, ...]


@dataclass(frozen=True)
class ContaminationConfig:
    ngram: int = 13
    max_doc_freq: int = 10  # an n-gram in more corpus documents than this is ignored
    window: int = 200  # characters cut out on either side of a match in the corpus
    min_piece: int = 200  # shorter pieces of a cut corpus document are dropped
    max_pieces: int = 10  # a corpus document cut into more pieces is dropped whole

    def __post_init__(self) -> None:
        for name in ("ngram", "max_doc_freq", "max_pieces"):
            if getattr(self, name) < 1:
                raise ConfigError(f"contamination {name} must be at least 1, got {getattr(self, name)}")
        for name in ("window", "min_piece"):
            if getattr(self, name) < 0:
                raise ConfigError(f"contamination {name} must be >= 0, got {getattr(self, name)}")


@functools.lru_cache(maxsize=1 << 20)
def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def _word_hashes(ws: Sequence[str]) -> np.ndarray:
    return np.fromiter((_word_hash(w) for w in ws), dtype=np.uint64, count=len(ws))


def gram_hashes(tokens: np.ndarray, m: int) -> np.ndarray:
    """The hash of every m-gram of a word-hash array (empty when it has fewer than m words)."""
    count = len(tokens) - m + 1
    if count < 1:
        return np.zeros(0, np.uint64)
    h = np.full(count, m, np.uint64)
    for j in range(m):
        h = h * _PRIME + tokens[j : j + count]  # wraps mod 2^64
    return h


class NgramIndex:
    """The n-grams of evaluation documents (a shorter document: all its words), looked up by hash."""

    def __init__(self, tasks: Sequence[EvalTexts], n: int) -> None:
        self.tasks, self.n = list(tasks), n
        self.offsets = np.cumsum([0] + [len(t.texts) for t in self.tasks])  # global doc index = offset + id
        hashes, owners, positions, lengths = [], [], [], set()
        for t, task in enumerate(self.tasks):
            for i, text in enumerate(task.texts):
                tokens = _word_hashes(words(text))
                m = min(n, len(tokens))
                if m == 0:
                    continue
                grams = gram_hashes(tokens, m)
                hashes.append(grams)
                owners.append(np.full(len(grams), self.offsets[t] + i, np.int64))
                positions.append(np.arange(len(grams), dtype=np.int64))
                lengths.add(m)
        flat = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        order = np.argsort(flat, kind="stable")
        self.hashes = flat[order]
        self.owners = np.concatenate(owners)[order] if owners else np.zeros(0, np.int64)
        self.positions = np.concatenate(positions)[order] if positions else np.zeros(0, np.int64)
        self.lengths = sorted(lengths)

    def _found(self, grams: np.ndarray) -> np.ndarray:
        where = np.minimum(np.searchsorted(self.hashes, grams), max(len(self.hashes) - 1, 0))
        return self.hashes[where] == grams if len(self.hashes) else np.zeros(len(grams), bool)

    def matches(self, texts: Sequence[str]) -> list[list[tuple[int, int, int]]]:
        """For each text, (hash, m, word position) of each of its m-grams that is an evaluation n-gram.
        The texts' words are hashed as one array, so numpy's per-call cost is paid once per batch."""
        per_text = [_word_hashes(words(t)) for t in texts]
        starts = np.cumsum([0] + [len(t) for t in per_text])
        tokens = np.concatenate(per_text) if per_text else np.zeros(0, np.uint64)
        owner = np.repeat(np.arange(len(texts)), np.diff(starts))
        found: list[list[tuple[int, int, int]]] = [[] for _ in texts]
        for m in self.lengths:
            grams = gram_hashes(tokens, m)
            hits = np.flatnonzero(self._found(grams))
            hits = hits[owner[hits] == owner[hits + m - 1]]  # m-grams that do not cross texts
            for p in hits:
                t = int(owner[p])
                found[t].append((int(grams[p]), m, int(p - starts[t])))
        return found

    def owners_of(self, h: int) -> list[tuple[int, int]]:
        """(global document index, word position) of every evaluation n-gram with hash h."""
        lo, hi = np.searchsorted(self.hashes, np.uint64(h), "left"), np.searchsorted(self.hashes, np.uint64(h), "right")
        return [(int(self.owners[k]), int(self.positions[k])) for k in range(lo, hi)]

    def locate(self, global_doc: int) -> tuple[int, int]:
        """(task index, document id) of a global document index."""
        t = int(np.searchsorted(self.offsets, global_doc, "right")) - 1
        return t, global_doc - int(self.offsets[t])


def clean_pieces(text: str, matches: Sequence[tuple[int, int]], cfg: ContaminationConfig) -> list[str]:
    """GPT-3's cut (module docstring) of a corpus document at its matched (m, word position) n-grams."""
    _, spans = word_spans(text)
    cuts = sorted((spans[p][0] - cfg.window, spans[p + m - 1][1] + cfg.window) for m, p in matches)
    pieces, start = [], 0
    for lo, hi in cuts:
        if lo > start:
            pieces.append(text[start:lo].strip())
        start = max(start, hi)
    pieces.append(text[start:].strip())
    pieces = [p for p in pieces if p]
    return [] if len(pieces) > cfg.max_pieces else [p for p in pieces if len(p) >= cfg.min_piece]


def decontaminate(
    inputs: Sequence[epath.Path],
    fmt: CorpusFormat,
    tasks: Sequence[EvalTexts],
    cfg: ContaminationConfig,
    out: CorpusDir,
) -> dict[str, Any]:
    """Find each task's dirty documents in the corpus, write dirty/<task>.json and the cleaned corpus to
    `out`; returns the report."""
    index = NgramIndex(tasks, cfg.ngram)
    found: dict[int, list[tuple[int, int, int]]] = {}  # corpus document -> its matches
    doc_freq: Counter[int] = Counter()
    ids: list[str] = []
    for batch in batched(read_documents(inputs, fmt, "matching"), MATCH_BATCH):
        for doc, hits in zip(batch, index.matches([d.text for d in batch])):
            if hits:
                found[len(ids)] = hits
                doc_freq.update({h for h, _, _ in hits})
            ids.append(doc.id)
    frequent = {h for h, count in doc_freq.items() if count > cfg.max_doc_freq}
    kept = {i: [hit for hit in hits if hit[0] not in frequent] for i, hits in found.items()}
    kept = {i: hits for i, hits in kept.items() if hits}
    dirty: list[dict[int, dict[str, Any]]] = [{} for _ in tasks]  # per task: document id -> first match
    for i, hits in kept.items():
        for h, m, _ in hits:
            for owner, position in index.owners_of(h):
                t, doc_id = index.locate(owner)
                if doc_id not in dirty[t]:
                    ngram = " ".join(words(tasks[t].texts[doc_id])[position : position + m])
                    dirty[t][doc_id] = {"doc_id": doc_id, "ngram": ngram, "corpus_doc": ids[i]}

    pieces = Counter[str]()

    def cleaned(docs: Iterator[Document]) -> Iterator[dict[str, Any]]:
        for i, doc in enumerate(docs):
            if i not in kept:
                pieces["untouched"] += 1
                yield doc.record()
                continue
            parts = clean_pieces(doc.text, [(m, p) for _, m, p in kept[i]], cfg)
            pieces["cut" if parts else "dropped"] += 1
            pieces["pieces"] += len(parts)
            for k, part in enumerate(parts):
                yield {**doc.record(), "id": f"{doc.id}#{k}", "text": part}

    written = write_jsonl(out.documents_file, cleaned(read_documents(inputs, fmt, "writing")))
    for t, task in enumerate(tasks):
        write_json(
            out.dirty_file(task.task),
            {
                "task": task.task,
                "split": task.split,
                "num_docs": len(task.texts),
                "ngram": cfg.ngram,
                "corpus": [str(p) for p in inputs],
                "dirty": [dirty[t][d] for d in sorted(dirty[t])],
            },
        )
    report = {
        "command": "decontaminate",
        "inputs": [str(p) for p in inputs],
        "config": asdict(cfg),
        "tasks": {
            task.task: {
                "split": task.split,
                "num_docs": len(task.texts),
                "dirty": len(dirty[t]),
                "clean": len(task.texts) - len(dirty[t]),
            }
            for t, task in enumerate(tasks)
        },
        "corpus": {
            "documents": len(ids),
            "with_matches": len(found),
            "frequent_ngrams_ignored": len(frequent),
            "contaminated": len(kept),
            "cut": pieces["cut"],
            "dropped": pieces["dropped"],
            "written": written,
        },
    }
    return finish(out, report)


@dataclass(frozen=True)
class DirtySet:
    """The dirty document ids of one eval task's split, as a dirty-id file holds them."""

    task: str
    split: str
    num_docs: int
    ids: frozenset[int]
    path: str


def read_dirty(path: PathLike) -> DirtySet:
    """Read and check one dirty/<task>.json."""
    path = as_path(path)
    if not path.is_file():
        raise InputNotFoundError(f"dirty-id file {path} does not exist")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ContaminationError(f"{path} is not valid JSON: {err}") from None
    kinds = {"task": str, "split": str, "num_docs": int, "dirty": list}
    if not isinstance(raw, dict) or any(not isinstance(raw.get(k), kind) for k, kind in kinds.items()):
        expected = ", ".join(f"{k} ({kind.__name__})" for k, kind in kinds.items())
        raise ContaminationError(f"{path} is not a dirty-id file: expected an object with {expected}")
    ids: list[int] = []
    for i, entry in enumerate(raw["dirty"]):
        doc_id = entry.get("doc_id") if isinstance(entry, dict) else None
        if not isinstance(doc_id, int) or isinstance(doc_id, bool) or not 0 <= doc_id < raw["num_docs"]:
            raise ContaminationError(f"{path}: dirty[{i}].doc_id must be an id below num_docs={raw['num_docs']}")
        ids.append(doc_id)
    return DirtySet(raw["task"], raw["split"], raw["num_docs"], frozenset(ids), str(path))


def read_dirty_sets(paths: Sequence[PathLike]) -> dict[str, DirtySet]:
    """The dirty sets of dirty-id files and of `gptjax data decontaminate` output directories, by task."""
    files = [f for p in paths for f in (CorpusDir(p).dirty_files() if as_path(p).is_dir() else [as_path(p)])]
    sets: dict[str, DirtySet] = {}
    for f in files:
        dirty = read_dirty(f)
        if dirty.task in sets:
            raise ContaminationError(f"task {dirty.task!r} has two dirty-id files: {sets[dirty.task].path} and {f}")
        sets[dirty.task] = dirty
    return sets


__all__ = [
    "ContaminationConfig",
    "ContaminationError",
    "DirtySet",
    "EvalTexts",
    "NgramIndex",
    "clean_pieces",
    "decontaminate",
    "read_dirty",
    "read_dirty_sets",
]
