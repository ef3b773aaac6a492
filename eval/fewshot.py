"""Few-shot example selection and prompt assembly, as lm-evaluation-harness does them.

`LmEvalSampler` reproduces lm-eval's default `ContextSampler` draw for draw (one `random.Random(seed)` per
task run, consumed document by document in order), so with the same seed and documents both pick the same
examples. Any object with the `Sampler` interface can replace it, e.g. to feed fixed examples.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

Doc = dict[str, Any]

DEFAULT_SEED = 1234  # lm-eval's default fewshot_random_seed


class Sampler(Protocol):
    def sample(self, n: int, eval_doc: Doc | None) -> list[int]:
        """Indices of `n` few-shot documents; none of them equal to `eval_doc` when it is given."""
        ...


SamplerFactory = Callable[[Sequence[Doc], int], Sampler]  # (few-shot pool, seed) -> sampler


class LmEvalSampler:
    """lm-eval's `ContextSampler.sample`, returning pool indices instead of documents.

    `random.sample` picks positions without looking at the items, so sampling indices consumes the
    generator exactly as sampling the documents does.
    """

    def __init__(self, docs: Sequence[Doc], seed: int) -> None:
        self.docs = docs
        self.rnd = random.Random(seed)

    def sample(self, n: int, eval_doc: Doc | None) -> list[int]:
        if n < 0:
            raise ValueError(f"number of few-shot examples must be >= 0, got {n}")
        if n == 0:
            return []
        population = range(len(self.docs))
        if not eval_doc:
            if n > len(self.docs):
                raise ValueError(f"{n} few-shot examples requested but the pool has only {len(self.docs)}")
            return self.rnd.sample(population, n)
        if n + 1 > len(self.docs):
            raise ValueError(
                f"{n} few-shot examples requested but the pool has only {len(self.docs)} documents "
                "(one more is needed to exclude the scored document)"
            )
        picked = [i for i in self.rnd.sample(population, n + 1) if self.docs[i] != eval_doc][:n]
        if len(picked) < n:  # the pool holds copies of eval_doc: resample from the rest, as lm-eval does
            pool = [i for i in population if self.docs[i] != eval_doc]
            picked = self.rnd.sample(pool, n)
        return picked


def answer_text(target: int | str | list, choices: list[str] | None) -> str:
    """The text of an example's answer: the indexed choice, the first of several targets, or the target."""
    if choices and isinstance(target, int):
        return choices[target]
    if isinstance(target, list):
        return target[0]
    if not isinstance(target, str):
        raise ValueError(f"a few-shot target must be a string, a choice index or a list, got {target!r}")
    return target


def qa_turn(
    question: str,
    target: int | str | list | None,
    choices: list[str] | None,
    target_delimiter: str,
    fewshot_delimiter: str,
) -> str:
    """One solved example as text, lm-eval's `build_qa_turn`: an empty target adds no delimiters."""
    if target is None or target == "":
        return question
    return question + target_delimiter + answer_text(target, choices) + fewshot_delimiter
