"""Eval tasks' scored documents as text, for the contamination check of `gptjax data decontaminate`
(gptjax.prep.contamination matches texts and knows nothing of tasks).

A document's text is what the model sees for it at zero shots, with its correct answer where the request
holds one (Task.shown_text): the gold choice of a multiple-choice question, LAMBADA's passage with its last
word, a whole WikiText page. The task's description is left out because every prompt shares it. Document
ids are the runner's (the index in Task.eval_docs()), so `gptjax eval --dirty` finds the same documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from eval.registry import get_spec
from eval.task import Task
from gptjax.prep.contamination import EvalTexts


def task_texts(
    tasks: Sequence[str | Path], benchmark_dir: str | Path | None = None, corpus_dir: str | Path | None = None
) -> list[EvalTexts]:
    """Each task's scored documents as text, in document-id order; every task is checked before any is read."""
    specs = [get_spec(t) for t in tasks]
    rendered = []
    for spec in specs:
        task = Task(spec, benchmark_dir, corpus_dir, description="")
        texts = tuple(task.shown_text(task.instance(i, doc)) for i, doc in enumerate(task.eval_docs()))
        rendered.append(EvalTexts(task.name, task.eval_split, texts))
    return rendered


__all__ = ["task_texts"]
