"""Per-document scores and their aggregation with standard errors.

Formulas are lm-evaluation-harness's (api/metrics.py, api/task.py `process_results`) unless noted:
acc_norm divides each choice's log-likelihood by its length in characters; exact match compares after the
task's case/punctuation options and is 1 if any reference matches; perplexities are exp of the (weighted)
mean negative log-likelihood. Means get the standard error sample_std / sqrt(n); perplexities and bits per
byte get lm-eval's bootstrap (resampling documents, `random.Random(i)` for chunk i), which lm-eval only
applies to `perplexity` but which we also apply to the corpus metrics.

Every metric is declared once, as a `Metric` (how it aggregates, and how a report reads it: its direction
and whether it is a fraction), like lm-eval's per-metric `aggregation` and `higher_is_better`. Other modules
add theirs with `register_metric`; `metric_info` is the one lookup, and answers for names it does not know
too (results files from elsewhere), with the fallback documented there.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------------------
# Aggregations.


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def sample_stddev(xs: Sequence[float]) -> float:
    mu = mean(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1))


def mean_stderr(xs: Sequence[float]) -> float | None:
    """Standard error of the mean; None when it is undefined (fewer than two documents)."""
    return sample_stddev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None


def perplexity(logprobs: Sequence[float]) -> float:
    return math.exp(-mean(logprobs))


def weighted_perplexity(items: Sequence[tuple[float, int]]) -> float:
    """exp(-sum(log-likelihood) / sum(units)): word or byte perplexity over (log-likelihood, units) pairs."""
    return math.exp(-sum(ll for ll, _ in items) / sum(n for _, n in items))


def bits_per_byte(items: Sequence[tuple[float, int]]) -> float:
    return -sum(ll for ll, _ in items) / sum(n for _, n in items) / math.log(2)


def bootstrap_stderr(f: Callable[[list[Any]], float], xs: Sequence[Any], iters: int) -> float | None:
    """lm-eval's bootstrap: chunks of min(1000, iters) resamples, chunk i drawn with random.Random(i)."""
    if iters <= 0 or len(xs) < 2:
        return None
    chunk = min(1000, iters)
    stats = []
    for i in range(iters // chunk):
        rnd = random.Random(i)
        stats.extend(f(rnd.choices(xs, k=len(xs))) for _ in range(chunk))
    return sample_stddev(stats)


@dataclass(frozen=True)
class Metric:
    """How a metric's per-document items aggregate, and how reports read its value."""

    name: str
    aggregate: Callable[[list[Any]], float]
    bootstrap: bool  # stderr by lm-eval's bootstrap of `aggregate`; else the standard error of the mean
    higher_is_better: bool
    percentage: bool  # a fraction in [0, 1], shown as a percentage


# The built-in metrics, in the order reports list them; `register_metric` adds more.
_REGISTERED: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("acc", mean, bootstrap=False, higher_is_better=True, percentage=True),
        Metric("acc_norm", mean, bootstrap=False, higher_is_better=True, percentage=True),
        Metric("acc_calibrated", mean, bootstrap=False, higher_is_better=True, percentage=True),
        Metric("exact_match", mean, bootstrap=False, higher_is_better=True, percentage=True),
        Metric("f1", mean, bootstrap=False, higher_is_better=True, percentage=True),
        Metric("word_perplexity", weighted_perplexity, bootstrap=True, higher_is_better=False, percentage=False),
        Metric("perplexity", perplexity, bootstrap=True, higher_is_better=False, percentage=False),
        Metric("byte_perplexity", weighted_perplexity, bootstrap=True, higher_is_better=False, percentage=False),
        Metric("bits_per_byte", bits_per_byte, bootstrap=True, higher_is_better=False, percentage=False),
    )
}
METRICS_BY_NAME: Mapping[str, Metric] = MappingProxyType(_REGISTERED)  # a read-only view of the registry
# lm-eval's names of these aggregations (a task YAML's `metric_list[].aggregation`).
AGGREGATIONS: Mapping[str, Callable[[list[Any]], float]] = MappingProxyType(
    {"mean": mean, "perplexity": perplexity, "weighted_perplexity": weighted_perplexity, "bits_per_byte": bits_per_byte}
)


def register_metric(metric: Metric) -> Metric:
    """Declare a metric (once: a second, different declaration of a name is an error). Returns it."""
    known = _REGISTERED.setdefault(metric.name, metric)
    if known != metric:
        raise ValueError(f"metric {metric.name!r} is already registered as {known}; not redeclaring it as {metric}")
    return metric


def metric_info(name: str) -> Metric:
    """The registered metric `name`. A name nobody registered (a results file from another harness) is read
    as a mean whose higher values are better, shown as is (not as a percentage)."""
    return _REGISTERED.get(name) or Metric(name, mean, bootstrap=False, higher_is_better=True, percentage=False)


def aggregate(metric: str, items: Sequence[Any], bootstrap_iters: int) -> tuple[float, float | None]:
    """(value, standard error) of a registered metric over its per-document items."""
    if metric not in _REGISTERED:
        raise ValueError(f"unknown metric {metric!r}; registered: {', '.join(_REGISTERED)}")
    if not items:
        raise ValueError(f"no documents to aggregate {metric} over")
    declared, xs = _REGISTERED[metric], list(items)
    stderr = bootstrap_stderr(declared.aggregate, xs, bootstrap_iters) if declared.bootstrap else mean_stderr(xs)
    return declared.aggregate(xs), stderr


# ---------------------------------------------------------------------------------------------------------
# Per-document scores.


def multiple_choice(
    logprobs: Sequence[float], choices: Sequence[str], gold: int, calibration: Sequence[float] | None = None
) -> dict[str, Any]:
    """Predictions and 0/1 scores of one multiple-choice document.

    acc_calibrated is GPT-3's score for ARC and OpenBookQA (Brown et al. 2020, section 2.4):
    log P(choice | context) - log P(choice | calibration context such as "Answer:").
    """
    lls = np.asarray(logprobs, np.float64)
    lengths = np.array([float(len(c)) for c in choices])
    pred, pred_norm = int(np.argmax(lls)), int(np.argmax(lls / lengths))
    out: dict[str, Any] = {
        "pred": pred,
        "pred_norm": pred_norm,
        "acc": float(pred == gold),
        "acc_norm": float(pred_norm == gold),
    }
    if calibration is not None:
        pred_calibrated = int(np.argmax(lls - np.asarray(calibration, np.float64)))
        out |= {"pred_calibrated": pred_calibrated, "acc_calibrated": float(pred_calibrated == gold)}
    return out


def exact_match(
    prediction: str,
    references: Sequence[str],
    *,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    ignore_numbers: bool = False,
    regexes_to_ignore: Sequence[str] = (),
) -> float:
    """1.0 if the prediction equals any reference after lm-eval's `exact_match` normalisation."""

    def normalise(s: str) -> str:
        for pattern in regexes_to_ignore:
            s = re.sub(pattern, "", s)
        if ignore_case:
            s = s.lower()
        if ignore_punctuation:
            s = s.translate(str.maketrans("", "", string.punctuation))
        if ignore_numbers:
            s = s.translate(str.maketrans("", "", string.digits))
        return s

    return float(any(normalise(prediction) == normalise(r) for r in references))


_TRIVIAQA_PUNCTUATION = set(string.punctuation + "‘’´`")


def normalize_answer(s: str) -> str:
    """TriviaQA's official answer normalisation (triviaqa_evaluation.py): underscores and punctuation to
    spaces, lower case, articles removed, whitespace collapsed."""
    s = s.replace("_", " ").lower()
    s = "".join(" " if ch in _TRIVIAQA_PUNCTUATION else ch for ch in s)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD/TriviaQA token-overlap F1 of normalised answers."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def max_f1(prediction: str, references: Sequence[str]) -> float:
    return max((token_f1(prediction, r) for r in references), default=0.0)


def count_words(text: str) -> int:
    """lm-eval's word count for word perplexity (whitespace-separated pieces, empty ends included)."""
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    return len(text.encode("utf-8"))
