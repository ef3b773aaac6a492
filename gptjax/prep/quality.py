"""GPT-3's quality filter (Brown et al. 2020, Appendix A): a logistic-regression classifier on hashed word
n-gram features learns to tell curated "reference" documents from raw ones, scores every raw document,
and keeps a document when `np.random.pareto(alpha) > 1 - score`.

The keep probability in closed form: numpy's `pareto(a)` is the Lomax distribution, P(X > t) = (1 + t)^-a
for t >= 0, so a document of score s is kept with probability (2 - s)^-a. That is 1 at s = 1 and
2^-9 = 0.2% at s = 0 for GPT-3's a = 9: mostly high-scoring text survives, but some low-scoring text does
too, so the result is not only what the classifier already likes. The draws come from one generator
seeded with `seed`, one per document in corpus order, so a run is reproducible.

The classifier trains on a reservoir sample of up to `max_train_docs` documents of each class (the raw
class is the corpus being filtered, as GPT-3 used Common Crawl itself); a `holdout` fraction of each
sample is set aside to measure the ROC AUC the report gives. Filtering reads the raw files three times
(sample, score, write) and holds one score per document in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
from etils import epath
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from gptjax.errors import ConfigError
from gptjax.prep.corpus import CorpusFormat, batched, finish, read_documents, write_jsonl
from gptjax.rundir import CorpusDir

T = TypeVar("T")
SCORE_BATCH = 1024  # documents vectorised and scored at once


@dataclass(frozen=True)
class QualityConfig:
    alpha: float = 9.0  # Pareto shape of the keep rule (GPT-3: 9)
    seed: int = 0
    ngram: int = 2  # features are word 1- to ngram-grams
    features: int = 2**20  # hashed feature dimension
    max_train_docs: int = 50_000  # per class
    holdout: float = 0.1  # fraction of each class's sample kept out of training, for the AUC
    # scikit-learn's C (inverse L2 strength). Features are L2-normalised, so each is ~1/sqrt(n-grams per
    # document) and confident scores need large weights: at C=1 scores bunch near 0.5, where the keep rule
    # keeps ~3% of everything (bench/README.md).
    regularization: float = 100.0
    bins: int = 20  # score histogram bins on [0, 1]

    def __post_init__(self) -> None:
        for name in ("alpha", "regularization"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"quality {name} must be positive, got {getattr(self, name)}")
        for name in ("ngram", "features", "max_train_docs", "bins"):
            if getattr(self, name) < 1:
                raise ConfigError(f"quality {name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.holdout < 1:
            raise ConfigError(f"quality holdout must be in [0, 1), got {self.holdout}")


def keep_probability(scores: np.ndarray, alpha: float) -> np.ndarray:
    """P(pareto(alpha) > 1 - s) = (2 - s)^-alpha (module docstring)."""
    return (2.0 - np.asarray(scores, np.float64)) ** -alpha


def pareto_keep(scores: np.ndarray, alpha: float, seed: int) -> np.ndarray:
    """GPT-3's keep rule, one draw per score in order."""
    scores = np.asarray(scores, np.float64)
    return np.random.default_rng(seed).pareto(alpha, size=scores.shape) > 1.0 - scores


def reservoir_sample(items: Iterable[T], k: int, rng: np.random.Generator) -> list[T]:
    """A uniform sample of min(k, n) items of a stream of unknown length n (Algorithm R)."""
    sample: list[T] = []
    for i, item in enumerate(items):
        if i < k:
            sample.append(item)
        elif (j := int(rng.integers(i + 1))) < k:
            sample[j] = item
    return sample


def histogram(scores: np.ndarray, bins: int) -> dict[str, list]:
    counts, edges = np.histogram(scores, bins=bins, range=(0.0, 1.0))
    return {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]}


class QualityClassifier:
    """Hashed word n-gram counts (L2-normalised) -> logistic regression; the score is P(reference)."""

    def __init__(self, cfg: QualityConfig) -> None:
        self.cfg = cfg
        self.vectorizer = HashingVectorizer(
            n_features=cfg.features, ngram_range=(1, cfg.ngram), alternate_sign=False, dtype=np.float32
        )
        self.model = LogisticRegression(C=cfg.regularization, class_weight="balanced", max_iter=1000)

    def fit(self, reference: Sequence[str], raw: Sequence[str], rng: np.random.Generator) -> dict[str, Any]:
        """Train on all but a held-out fraction of each class; returns sizes and the held-out ROC AUC."""
        train: list[tuple[str, int]] = []
        held: list[tuple[str, int]] = []
        for label, texts in ((1, reference), (0, raw)):
            order = rng.permutation(len(texts))
            n_held = int(len(texts) * self.cfg.holdout)
            held += [(texts[i], label) for i in order[:n_held]]
            train += [(texts[i], label) for i in order[n_held:]]
        texts, labels = zip(*train)
        self.model.fit(self.vectorizer.transform(texts), labels)
        report: dict[str, Any] = {
            "train_reference": sum(label for _, label in train),
            "train_raw": sum(1 - label for _, label in train),
            "holdout_reference": sum(label for _, label in held),
            "holdout_raw": sum(1 - label for _, label in held),
            "holdout_auc": None,
        }
        if report["holdout_reference"] and report["holdout_raw"]:
            held_texts, held_labels = zip(*held)
            report["holdout_auc"] = float(roc_auc_score(held_labels, self.score(held_texts)))
        return report

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.predict_proba(self.vectorizer.transform(texts))[:, 1]


def filter_corpus(
    inputs: Sequence[epath.Path], reference: Sequence[epath.Path], fmt: CorpusFormat, cfg: QualityConfig, out: CorpusDir
) -> dict[str, Any]:
    """Train the classifier on `reference` vs `inputs`, score `inputs`, write the kept documents (each with
    its "quality" score) to `out`; returns the report."""
    rng = np.random.default_rng(cfg.seed)
    reference_sample = reservoir_sample(
        (d.text for d in read_documents(reference, fmt, "reading reference")), cfg.max_train_docs, rng
    )
    raw_sample = reservoir_sample(
        (d.text for d in read_documents(inputs, fmt, "sampling raw")), cfg.max_train_docs, rng
    )
    classifier = QualityClassifier(cfg)
    training = classifier.fit(reference_sample, raw_sample, rng)
    texts = (d.text for d in read_documents(inputs, fmt, "scoring"))
    scores = np.concatenate([classifier.score(batch) for batch in batched(texts, SCORE_BATCH)])
    keep = pareto_keep(scores, cfg.alpha, cfg.seed)
    documents = read_documents(inputs, fmt, "writing")
    write_jsonl(
        out.documents_file, (d.record(quality=round(float(s), 6)) for d, s, k in zip(documents, scores, keep) if k)
    )
    report = {
        "command": "filter",
        "inputs": [str(p) for p in inputs],
        "reference": [str(p) for p in reference],
        "config": asdict(cfg),
        "classifier": training,
        "documents": len(scores),
        "kept": int(keep.sum()),
        "keep_rate": float(keep.mean()),
        "expected_keep_rate": float(keep_probability(scores, cfg.alpha).mean()),
        "score_histogram": histogram(scores, cfg.bins),
        "kept_score_histogram": histogram(scores[keep], cfg.bins),
    }
    return finish(out, report)


__all__ = ["QualityClassifier", "QualityConfig", "filter_corpus", "keep_probability", "pareto_keep"]
