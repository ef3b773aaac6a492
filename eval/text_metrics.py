"""ROUGE and BLEU for generation tasks, from the maintained reference implementations.

ROUGE-1/2/L are Google's `rouge-score` F-measures (its default tokenizer: lower case, non-alphanumerics
dropped, no stemming), per document, the best over the document's references (`score_multi`), averaged
over documents. BLEU is corpus-level sacreBLEU (13a tokenizer, exp smoothing, 0-100) over (references,
prediction) items, exactly lm-eval's `bleu` aggregation; a corpus statistic has no per-document mean, so its
standard error is the bootstrap. Importing this module registers the four metrics in eval.metrics; both
libraries come with the `hf` extra (lm-eval depends on them).
"""

from __future__ import annotations

from collections.abc import Sequence

import sacrebleu
from rouge_score import rouge_scorer

from eval.metrics import Metric, mean, register_metric

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_SCORER = rouge_scorer.RougeScorer(list(ROUGE_TYPES))

BleuItem = tuple[Sequence[str], str]  # (references, prediction) of one document


def rouge(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """{rouge1, rouge2, rougeL}: F-measures against the best-matching reference, each in [0, 1]."""
    if not references:
        raise ValueError("rouge needs at least one reference")
    scores = _SCORER.score_multi(list(references), prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


def corpus_bleu(items: Sequence[BleuItem]) -> float:
    """sacreBLEU over documents that may have different numbers of references (missing ones are None)."""
    n_refs = max(len(refs) for refs, _ in items)
    streams = [[refs[i] if i < len(refs) else None for refs, _ in items] for i in range(n_refs)]
    return sacrebleu.corpus_bleu([pred for _, pred in items], streams).score


for _name in ROUGE_TYPES:
    register_metric(Metric(_name, mean, bootstrap=False, higher_is_better=True, percentage=True))
register_metric(Metric("bleu", corpus_bleu, bootstrap=True, higher_is_better=True, percentage=False))
