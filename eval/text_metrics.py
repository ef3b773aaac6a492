"""ROUGE and BLEU for generation tasks, from the maintained reference implementations.

ROUGE-1/2/L are Google's `rouge-score` F-measures (its default tokenizer: lower case, non-alphanumerics
dropped, no stemming), per document, the best over the document's references (`score_multi`), averaged
over documents. BLEU is corpus-level sacreBLEU (13a tokenizer, exp smoothing, 0-100) over (references,
prediction) items, exactly lm-eval's `bleu` aggregation; a corpus statistic has no per-document mean, so its
standard error is the bootstrap. Importing this module registers the four metrics in eval.metrics; both
libraries come with the `hf` extra (lm-eval depends on them). The metrics are declared even without them,
so task definitions naming them load everywhere; `require(metric)` (which the task registry calls for the
tasks a run uses) is the clear error when a library is missing, raised before any model loads. The
libraries are imported on first use: rouge-score imports nltk, seconds of start-up that every `gptjax eval`
would otherwise pay.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from typing import Any

from eval.metrics import Metric, mean, register_metric
from gptjax.errors import GptjaxError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
TEXT_METRICS = (*ROUGE_TYPES, "bleu")


class MissingMetricPackage(GptjaxError, ImportError):
    """A metric's library is not installed; the message names the metric and how to install it."""


def require(metric: str) -> None:
    """Raise MissingMetricPackage if `metric` (one of TEXT_METRICS) cannot be computed here."""
    package, module = ("sacrebleu", "sacrebleu") if metric == "bleu" else ("rouge-score", "rouge_score")
    if importlib.util.find_spec(module) is None:
        raise MissingMetricPackage(f"metric {metric} needs the {package} package: pip install 'gptjax[hf]'")


@functools.cache
def _scorer() -> Any:
    require("rouge1")
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES))


BleuItem = tuple[Sequence[str], str]  # (references, prediction) of one document


def rouge(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """{rouge1, rouge2, rougeL}: F-measures against the best-matching reference, each in [0, 1]."""
    if not references:
        raise ValueError("rouge needs at least one reference")
    scores = _scorer().score_multi(list(references), prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


def corpus_bleu(items: Sequence[BleuItem]) -> float:
    """sacreBLEU over documents that may have different numbers of references (missing ones are None)."""
    require("bleu")
    import sacrebleu

    n_refs = max(len(refs) for refs, _ in items)
    streams = [[refs[i] if i < len(refs) else None for refs, _ in items] for i in range(n_refs)]
    return sacrebleu.corpus_bleu([pred for _, pred in items], streams).score


for _name in ROUGE_TYPES:
    register_metric(Metric(_name, mean, bootstrap=False, higher_is_better=True, percentage=True))
register_metric(Metric("bleu", corpus_bleu, bootstrap=True, higher_is_better=True, percentage=False))
