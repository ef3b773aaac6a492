"""Free-form generation tasks: decoding options, GPT-2's zero-shot transfer prompts, and their scoring.

A `GenerationTask` is a prompt and references per document, a `Decoding` (eval.decoding: greedy, sampling with
temperature / top-k / top-p / seed, or beam search with width and length penalty; stop strings, max tokens,
N samples per prompt), an answer filter (eval.cot) and metrics (eval.metrics, eval.text_metrics). All
decoding goes through `gptjax.decode.generate_text`, the one jitted KV-cache decoder, in fixed-size batches
(the last one padded) so a task compiles one program per prompt-length bucket.

Invariants: the same `Decoding` (seed included) and batch size give the same generations; with N samples
each document's N paths are N independent draws (rows of one categorical call); one sample is scored on its
filtered answer, N samples on the majority vote of their filtered answers (eval.cot.majority_vote). Every
result records the decoding options and, per document, the prompt, all generations and extracted answers.

The prompt formats are GPT-2's (Radford et al. 2019, section 3): summarisation appends "\\nTL;DR:" to the
article and samples 100 tokens with top-k 2, keeping the first 3 sentences; translation conditions on
"english sentence = french sentence" lines and greedily continues "english sentence =", keeping the first
sentence; question answering uses "Q: ... A:" pairs. GSM8K-format tasks use lm-eval's gsm8k strings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax

from eval import cot, text_metrics
from eval import metrics as M
from eval.decoding import Decoding, GenerationError
from gptjax import decode
from gptjax.config import ModelConfig

Doc = dict[str, Any]


def generate(
    params: Any,
    cfg: ModelConfig,
    vocab: decode.Vocabulary,
    contexts: Sequence[str],
    decoding: Decoding,
    *,
    batch_size: int = 32,
) -> list[list[str]]:
    """`decoding.num_samples` continuations of each context, cut at the first stop string.

    Rows are the contexts repeated num_samples times, in batches of `batch_size`; batch i samples with
    fold_in(key(seed), i). Long contexts keep their last tokens (lm-eval's left truncation).
    """
    if not contexts:
        raise GenerationError("no contexts to generate from")
    n = decoding.num_samples
    rows = [c for c in contexts for _ in range(n)]
    key = jax.random.key(decoding.seed)
    texts: list[str] = []
    for i, start in enumerate(range(0, len(rows), batch_size)):
        batch = rows[start : start + batch_size]
        padded = batch + [batch[-1]] * (batch_size - len(batch))
        out = decode.generate_text(
            params,
            cfg,
            vocab,
            padded,
            max_new_tokens=decoding.max_tokens,
            until=decoding.until,
            eos_id=getattr(vocab, "eos_id", None),
            rng=jax.random.fold_in(key, i) if decoding.method == "sample" else None,
            left_truncate=True,
            **decoding.generate_kwargs(),
        )
        texts.extend(out[: len(batch)])
    return [texts[j * n : (j + 1) * n] for j in range(len(contexts))]


# ---------------------------------------------------------------------------------------------------------
# Tasks.


def _identity(text: str) -> str:
    return text


@dataclass(frozen=True)
class GenerationTask:
    """Documents, how to prompt and decode them, how to read an answer, and what to score it with."""

    name: str
    docs: Sequence[Doc]
    prompt: Callable[[Doc], str]
    references: Callable[[Doc], list[str]]
    decoding: Decoding
    metrics: tuple[str, ...]
    extract: cot.Filter = _identity
    ignore_fallback: bool = True  # unparsable paths abstain from the majority vote (eval.cot)
    normalize: Callable[[str], str] = field(default=_identity)  # applied to answers and references for exact_match

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in M.METRICS_BY_NAME]
        if unknown:
            raise GenerationError(f"task {self.name}: unknown metrics {unknown}; registered: {list(M.METRICS_BY_NAME)}")
        if not self.docs:
            raise GenerationError(f"task {self.name} has no documents")

    def with_decoding(self, **changes: Any) -> GenerationTask:
        return dataclasses.replace(self, decoding=dataclasses.replace(self.decoding, **changes))


def score(metric: str, answer: str, refs: list[str], **exact_match_options: Any) -> Any:
    """One document's item for `metric` (a number, or for corpus BLEU the (references, answer) pair);
    `exact_match_options` are eval.metrics.exact_match's (ignore_case, ...)."""
    if metric == "exact_match":
        return M.exact_match(answer, refs, **exact_match_options)
    if metric == "f1":
        return M.max_f1(answer, refs)
    if metric in text_metrics.ROUGE_TYPES:
        return text_metrics.rouge(answer, refs)[metric]
    if metric == "bleu":
        return (refs, answer)
    raise GenerationError(f"metric {metric!r} does not score generations")


def evaluate(
    params: Any,
    cfg: ModelConfig,
    vocab: decode.Vocabulary,
    task: GenerationTask,
    *,
    limit: int | None = None,
    bootstrap_iters: int = 1000,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Generate, filter, vote and score the task's first `limit` documents: a results dict with samples."""
    docs = list(task.docs[:limit])
    prompts = [task.prompt(d) for d in docs]
    generations = generate(params, cfg, vocab, prompts, task.decoding, batch_size=batch_size)
    samples: list[dict[str, Any]] = []
    items: dict[str, list[Any]] = {m: [] for m in task.metrics}
    for doc_id, (doc, prompt, gens) in enumerate(zip(docs, prompts, generations)):
        answers = [task.extract(g) for g in gens]
        answer, votes = cot.majority_vote(answers, task.ignore_fallback)
        refs = task.references(doc)
        sample = {"doc_id": doc_id, "prompt": prompt, "generations": gens, "answers": answers, "answer": answer}
        sample |= {"votes": votes, "references": refs}
        for metric in task.metrics:
            normalize = task.normalize if metric == "exact_match" else _identity
            items[metric].append(score(metric, normalize(answer), [normalize(r) for r in refs]))
            if metric != "bleu":
                sample[metric] = items[metric][-1]
        samples.append(sample)
    values: dict[str, float | None] = {}
    for metric in task.metrics:
        values[metric], values[f"{metric}_stderr"] = M.aggregate(metric, items[metric], bootstrap_iters)
    return {
        "task": task.name,
        "decoding": dataclasses.asdict(task.decoding),
        "num_docs": len(docs),
        "metrics": values,
        "samples": samples,
    }


# GPT-2's formats.


def tldr_summarization(docs: Sequence[Doc], article: str = "article", summary: str = "highlights") -> GenerationTask:
    """CNN/DailyMail-style docs (`article`, `summary` fields): "<article>\\nTL;DR:", top-k 2, 100 tokens,
    the first 3 sentences scored by ROUGE-1/2/L."""
    return GenerationTask(
        "tldr_summarization",
        docs,
        prompt=lambda d: f"{d[article]}\nTL;DR:",
        references=lambda d: [d[summary]],
        decoding=Decoding("sample", max_tokens=100, top_k=2),
        metrics=text_metrics.ROUGE_TYPES,
        extract=cot.first_sentences(3),
    )


def translation(docs: Sequence[Doc], examples: Sequence[Doc], source: str = "en", target: str = "fr") -> GenerationTask:
    """WMT-style docs with `source` and `target` fields: "english sentence = french sentence" example lines,
    then "english sentence =", greedy, the first sentence scored by corpus BLEU."""
    shots = "".join(f"{e[source]} = {e[target]}\n" for e in examples)
    return GenerationTask(
        f"translation_{source}_{target}",
        docs,
        prompt=lambda d: f"{shots}{d[source]} =",
        references=lambda d: [d[target]],
        decoding=Decoding(max_tokens=64, until=("\n",)),
        metrics=("bleu",),
        extract=cot.first_sentence,
    )


def question_answering(
    docs: Sequence[Doc], examples: Sequence[Doc], question: str = "question", answers: str = "aliases"
) -> GenerationTask:
    """ "Q: question\\nA: answer" pairs, then "Q: question\\nA:", greedy to the line's end; exact match
    (TriviaQA normalisation) and F1 against any of the `answers` (a list field, or one string)."""
    shots = "".join(f"Q: {e[question]}\nA: {_as_list(e[answers])[0]}\n\n" for e in examples)
    return GenerationTask(
        "question_answering",
        docs,
        prompt=lambda d: f"{shots}Q: {d[question]}\nA:",
        references=lambda d: _as_list(d[answers]),
        decoding=Decoding(max_tokens=32, until=("\n",)),
        metrics=("exact_match", "f1"),
        extract=str.strip,
        normalize=M.normalize_answer,
    )


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def gsm8k(docs: Sequence[Doc], examples: Sequence[Doc], decoding: Decoding | None = None) -> GenerationTask:
    """GSM8K-format docs (`question`, `answer` ending in "#### N"), in lm-eval's `gsm8k` strings: k-shot
    "Question: q\\nAnswer: a" blocks joined by blank lines, stop at "Question:", the "#### N" answer
    (strict-match) scored by exact match. A sampling `decoding` with num_samples > 1 is self-consistency."""
    shots = "".join(f"Question: {e['question']}\nAnswer: {e['answer']}\n\n" for e in examples)
    return GenerationTask(
        "gsm8k",
        docs,
        prompt=lambda d: f"{shots}Question: {d['question']}\nAnswer:",
        references=lambda d: [cot.gsm8k_answer(d["answer"])],
        decoding=decoding or Decoding(max_tokens=256, until=("Question:", "</s>", "<|im_end|>")),
        metrics=("exact_match",),
        extract=cot.gsm8k_answer,
    )
