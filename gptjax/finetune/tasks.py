"""Fine-tuning tasks: which real benchmark files feed them, how a row becomes an `Example`, and which head
reads it. Each task declares its kind (`classify`: a linear layer to `num_classes` logits; `similarity`: the
same on the sum of both orders' states; `choice`: a linear layer to one score per sequence, softmax over
them) and the most sequences an example has. Rows are read from ../shared/data/benchmarks/<task>/<split>.jsonl
(the Hugging Face field names); nothing is downloaded.

Similarity (GPT-1 used MRPC, QQP, STS-B) has no real data among the shared benchmarks, so no similarity
task is registered; the kind is implemented and tested on its defining property (order invariance).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from gptjax.errors import GptjaxError, InputNotFoundError
from gptjax.finetune.transforms import Example
from gptjax.rundir import PathLike, as_path

Kind = Literal["classify", "similarity", "choice"]


class TaskError(GptjaxError, ValueError):
    """An unknown task name or a malformed benchmark row."""


@dataclass(frozen=True)
class Task:
    name: str
    kind: Kind
    num_sequences: int  # the most sequences one example has (choices, or 2 orders for similarity)
    num_classes: int  # logits of the head: classes (classify, similarity) or 1 score per sequence (choice)
    parse: Callable[[dict[str, Any]], Example]
    benchmark: str = ""  # the directory under benchmarks/ ("" = the task's name)

    @property
    def head_outputs(self) -> int:
        return 1 if self.kind == "choice" else self.num_classes


def _boolq(row: dict[str, Any]) -> Example:
    return Example(((row["passage"], row["question"]),), int(bool(row["answer"])))


def _piqa(row: dict[str, Any]) -> Example:
    return Example(((row["goal"], row["sol1"]), (row["goal"], row["sol2"])), int(row["label"]))


def _lettered(question: str, row: dict[str, Any]) -> Example:
    choices = row["choices"]
    return Example(tuple((question, text) for text in choices["text"]), choices["label"].index(row["answerKey"]))


def _winogrande(row: dict[str, Any]) -> Example:
    # The sentence up to the blank, with each option filled in, is the context; the rest is the answer.
    before, _, after = row["sentence"].partition("_")
    return Example(
        tuple((before + option, after.strip()) for option in (row["option1"], row["option2"])), int(row["answer"]) - 1
    )


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("boolq", "classify", 1, 2, _boolq),
        Task("piqa", "choice", 2, 2, _piqa),
        Task("arc_easy", "choice", 5, 5, lambda r: _lettered(r["question"], r)),
        Task("arc_challenge", "choice", 5, 5, lambda r: _lettered(r["question"], r)),
        Task("openbookqa", "choice", 4, 4, lambda r: _lettered(r["question_stem"], r)),
        Task("winogrande", "choice", 2, 2, _winogrande),
    )
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise TaskError(f"unknown fine-tuning task {name!r}; known: {', '.join(sorted(TASKS))}") from None


def load_examples(task: Task, split: str, data_dir: PathLike, limit: int = 0) -> list[Example]:
    """The task's examples of `split` from <data_dir>/<benchmark>/<split>.jsonl (the first `limit`; 0 = all)."""
    path = as_path(data_dir) / (task.benchmark or task.name) / f"{split}.jsonl"
    if not path.exists():
        raise InputNotFoundError(f"no {split} split for fine-tuning task {task.name!r}: {path} does not exist")
    examples: list[Example] = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if limit and len(examples) == limit:
            break
        try:
            examples.append(task.parse(json.loads(line)))
        except (KeyError, ValueError, TypeError) as err:
            raise TaskError(f"{path}:{line_no}: not a {task.name} row ({type(err).__name__}: {err})") from None
    return examples


__all__ = ["TASKS", "Task", "TaskError", "get_task", "load_examples"]
