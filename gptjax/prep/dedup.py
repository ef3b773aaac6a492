"""Exact and fuzzy document deduplication (GPT-3 section 2.2: MinHash LSH over documents).

Exact: a document whose whitespace-normalised text has the same BLAKE2b hash as an earlier kept one's is a
duplicate. Fuzzy: a document is the set of its word `shingle`-grams (normalised words, corpus.words; a
document shorter than one shingle is a single shingle of all its words). MinHash with `num_perm`
permutations estimates the Jaccard similarity J of two sets as the fraction of equal signature values; LSH
(datasketch.MinHashLSH) cuts a signature into `bands` bands of `rows` values and makes two documents
candidates when any band is equal, which happens with probability 1 - (1 - J^rows)^bands (by default
datasketch picks bands and rows to balance misses and false candidates at `threshold`). A candidate is a
duplicate when its estimated J with the earlier document is at least `threshold`.

Documents are taken in corpus order: a document matching no kept document is kept and indexed; one
matching a kept document joins that document's cluster (the most similar one) and is dropped, so a cluster
is its first document and the later ones like it, and the output keeps exactly one document per cluster.
Memory per kept document: its signature (num_perm uint32) and its LSH band keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from datasketch import MinHash, MinHashLSH
from etils import epath

from gptjax.errors import ConfigError
from gptjax.prep.corpus import CorpusFormat, batched, finish, read_documents, text_key, words, write_jsonl
from gptjax.rundir import CorpusDir

MINHASH_BATCH = 512  # documents hashed at once (datasketch's MinHash.bulk)


@dataclass(frozen=True)
class DedupConfig:
    shingle: int = 5  # words per shingle
    num_perm: int = 128
    threshold: float = 0.8  # estimated Jaccard similarity at or above which a document is a duplicate
    bands: int | None = None  # LSH bands x rows (<= num_perm); None = datasketch's choice for the threshold
    rows: int | None = None
    seed: int = 1  # of the MinHash permutations

    def __post_init__(self) -> None:
        if self.shingle < 1 or self.num_perm < 2:
            raise ConfigError(f"dedup shingle must be >= 1 and num_perm >= 2, got {self.shingle}, {self.num_perm}")
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"dedup threshold must be in (0, 1], got {self.threshold}")
        if (self.bands is None) != (self.rows is None):
            raise ConfigError(f"give dedup bands and rows together, got bands={self.bands}, rows={self.rows}")
        if self.bands is not None and self.rows is not None:
            if self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm:
                raise ConfigError(
                    f"dedup bands x rows must be positive and at most num_perm={self.num_perm}, "
                    f"got {self.bands} x {self.rows}"
                )


def shingles(text: str, k: int) -> set[bytes]:
    """The word k-grams of a document (its normalised words)."""
    w = words(text)
    if len(w) <= k:
        return {" ".join(w).encode()} if w else set()
    return {" ".join(w[i : i + k]).encode() for i in range(len(w) - k + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass(frozen=True)
class Match:
    """A duplicate: the index of the kept document it matches and their (estimated) similarity."""

    kept: int
    jaccard: float
    exact: bool


class Deduplicator:
    """Documents in order -> for each, None (kept) or the Match that makes it a duplicate."""

    def __init__(self, cfg: DedupConfig) -> None:
        self.cfg = cfg
        params = (cfg.bands, cfg.rows) if cfg.bands is not None and cfg.rows is not None else None
        self.lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, params=params)
        self._exact: dict[bytes, int] = {}
        self._signatures: dict[int, np.ndarray] = {}
        self._next = 0

    def add(self, texts: Sequence[str]) -> list[Match | None]:
        """Deduplicate the next documents against every kept one (and each other, in order)."""
        sets = [shingles(t, self.cfg.shingle) for t in texts]
        signatures = MinHash.bulk(sets, num_perm=self.cfg.num_perm, seed=self.cfg.seed)
        results = []
        for text, shingle_set, signature in zip(texts, sets, signatures):
            index, self._next = self._next, self._next + 1
            results.append(self._match(index, text_key(text), bool(shingle_set), signature))
        return results

    def _match(self, index: int, key: bytes, has_shingles: bool, signature: MinHash) -> Match | None:
        if key in self._exact:
            return Match(self._exact[key], 1.0, True)
        best: Match | None = None
        if has_shingles:  # an empty document is only ever an exact duplicate
            for kept in self.lsh.query(signature):
                similarity = float(np.mean(self._signatures[kept] == signature.hashvalues))
                if similarity >= self.cfg.threshold and (best is None or similarity > best.jaccard):
                    best = Match(kept, similarity, False)
        if best is None:
            self._exact[key] = index
            if has_shingles:
                self.lsh.insert(index, signature, check_duplication=False)
                self._signatures[index] = signature.hashvalues.astype(np.uint32)
        return best


def dedup_corpus(inputs: Sequence[epath.Path], fmt: CorpusFormat, cfg: DedupConfig, out: CorpusDir) -> dict[str, Any]:
    """Write the kept documents and the duplicate clusters of `inputs` to `out`; returns the report."""
    dedup = Deduplicator(cfg)
    ids: list[str] = []
    matches: list[Match | None] = []
    for batch in batched(read_documents(inputs, fmt, "hashing"), MINHASH_BATCH):
        ids += [d.id for d in batch]
        matches += dedup.add([d.text for d in batch])
    clusters: dict[int, list[dict[str, Any]]] = {}
    for index, match in enumerate(matches):
        if match is not None:
            duplicate = {"id": ids[index], "jaccard": round(match.jaccard, 4), "exact": match.exact}
            clusters.setdefault(match.kept, []).append(duplicate)
    write_jsonl(
        out.documents_file, (d.record() for d, m in zip(read_documents(inputs, fmt, "writing"), matches) if m is None)
    )
    write_jsonl(out.clusters_file, ({"kept": ids[k], "duplicates": clusters[k]} for k in sorted(clusters)))
    sizes = Counter(1 + len(dups) for dups in clusters.values())
    report = {
        "command": "dedup",
        "inputs": [str(p) for p in inputs],
        "config": asdict(cfg),
        "lsh": {"bands": dedup.lsh.b, "rows": dedup.lsh.r},
        "documents": len(matches),
        "kept": sum(m is None for m in matches),
        "exact_duplicates": sum(m is not None and m.exact for m in matches),
        "near_duplicates": sum(m is not None and not m.exact for m in matches),
        "clusters": len(clusters),
        "cluster_sizes": {str(size): sizes[size] for size in sorted(sizes)},
    }
    return finish(out, report)


__all__ = ["DedupConfig", "Deduplicator", "Match", "dedup_corpus", "jaccard", "shingles"]
