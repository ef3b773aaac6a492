"""Eval results files (what eval.runner.write_results wrote) read back and validated for a report.

One results file holds one model at one checkpoint, evaluated on several tasks at several K. A report takes
several of them, so loading also sorts them (smallest model first) and gives each a label unique among them.
Every error names the file and the key path of the offending value (e.g. `results[2].metrics.acc`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from gptjax.errors import GptjaxError, InputNotFoundError
from gptjax.rundir import as_path, is_local

ParamsKind = Literal["non_embedding_params", "params"]


class ReportError(GptjaxError, ValueError):
    """A results file or report option is unusable; the message names the file, key or value."""


@dataclass(frozen=True)
class CleanSubset:
    """A result's scores on the documents its dirty-id file does not list (GPT-3's clean subset)."""

    num_docs: int
    num_dirty: int
    metrics: dict[str, float]  # empty when every document is dirty
    dirty_file: str


@dataclass(frozen=True)
class TaskResult:
    """One (task, K) evaluation of one model, as the eval harness wrote it."""

    task: str
    split: str
    num_fewshot: int
    fewshot_split: str
    seed: int
    num_docs: int
    metrics: dict[str, float]  # metric values and their `<name>_stderr` entries
    example_prompt: str
    clean: CleanSubset | None = None  # with `gptjax eval --dirty`

    def stderr(self, metric: str) -> float | None:
        """The standard error, or None when the harness wrote none (or NaN, e.g. for perplexities)."""
        se = self.metrics.get(f"{metric}_stderr")
        return se if se is not None and math.isfinite(se) else None


@dataclass(frozen=True)
class ModelRun:
    """One results file: a model at one checkpoint and its task results."""

    path: Path
    name: str
    params: int
    non_embedding_params: int
    checkpoint: str | None
    step: int | None
    tokenizer: str
    created: str
    gptjax_version: str
    results: tuple[TaskResult, ...]
    label: str = ""  # unique display name among the runs of one report

    def size(self, kind: ParamsKind) -> int:
        return getattr(self, kind)

    def result(self, task: str, k: int) -> TaskResult | None:
        return next((r for r in self.results if r.task == task and r.num_fewshot == k), None)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _get(obj: dict[str, Any], key: str, kind: type, where: str, path: Path, nullable: bool = False) -> Any:
    """obj[key] checked against `kind`; errors name the file and the key path (e.g. `results[2].metrics`)."""
    name = f"{where}.{key}" if where else key
    if key not in obj:
        raise ReportError(f"{path} is not a gptjax results file: missing key {name!r}")
    value = obj[key]
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):  # bool is an int, but no field is boolean
        raise ReportError(f"{path}: {name} must be {kind.__name__}, got {_short(value)}")
    return value


def _metrics(raw: dict[str, Any], where: str, path: Path) -> dict[str, float]:
    metrics = {}
    for name, value in raw.items():
        if value is None and name.endswith("_stderr"):
            continue  # a harness may write null for a stderr it cannot estimate
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReportError(f"{path}: {where}.metrics.{name} must be a number, got {_short(value)}")
        metrics[name] = float(value)
    if not any(not name.endswith("_stderr") for name in metrics):
        raise ReportError(f"{path}: {where}.metrics holds no metric, only {sorted(raw)}")
    return metrics


def _clean_subset(raw: dict[str, Any], where: str, path: Path) -> CleanSubset | None:
    if "clean" not in raw:
        return None
    clean, where = _get(raw, "clean", dict, where, path), f"{where}.clean"
    num_docs = _get(clean, "num_docs", int, where, path)
    metrics = _get(clean, "metrics", dict, where, path)
    return CleanSubset(
        num_docs=num_docs,
        num_dirty=_get(clean, "num_dirty", int, where, path),
        metrics=_metrics(metrics, where, path) if num_docs else {},
        dirty_file=_get(clean, "dirty_file", str, where, path),
    )


def _task_result(raw: Any, where: str, path: Path) -> TaskResult:
    if not isinstance(raw, dict):
        raise ReportError(f"{path}: {where} must be an object, got {_short(raw)}")
    result = TaskResult(
        task=_get(raw, "task", str, where, path),
        split=_get(raw, "split", str, where, path),
        num_fewshot=_get(raw, "num_fewshot", int, where, path),
        fewshot_split=_get(raw, "fewshot_split", str, where, path),
        seed=_get(raw, "seed", int, where, path),
        num_docs=_get(raw, "num_docs", int, where, path),
        metrics=_metrics(_get(raw, "metrics", dict, where, path), where, path),
        example_prompt=_get(raw, "example_prompt", str, where, path),
        clean=_clean_subset(raw, where, path),
    )
    if result.num_fewshot < 0:
        raise ReportError(f"{path}: {where}.num_fewshot must be >= 0, got {result.num_fewshot}")
    return result


def load_results(path: Path | str) -> ModelRun:
    """Read and validate one results file written by the eval harness (local or gs://)."""
    path = as_path(path)
    if not path.is_file():
        raise InputNotFoundError(
            f"results file {path} does not exist" if not path.exists() else f"results file {path} is not a file"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} is not a gptjax results file: expected a JSON object, got {_short(data)}")
    model = _get(data, "model", dict, "", path)
    raw_results = _get(data, "results", list, "", path)
    if not raw_results:
        raise ReportError(f"{path} has no results: its 'results' list is empty")
    results = tuple(_task_result(raw, f"results[{i}]", path) for i, raw in enumerate(raw_results))
    seen: dict[tuple[str, int], int] = {}
    for i, result in enumerate(results):
        first = seen.setdefault((result.task, result.num_fewshot), i)
        if first != i:
            raise ReportError(
                f"{path}: results[{first}] and results[{i}] are both task {result.task!r} at "
                f"num_fewshot={result.num_fewshot}; a report takes one result per task and K"
            )
    run = ModelRun(
        path=path.resolve() if is_local(path) else path,
        name=_get(model, "name", str, "model", path),
        params=_get(model, "params", int, "model", path),
        non_embedding_params=_get(model, "non_embedding_params", int, "model", path),
        checkpoint=_get(model, "checkpoint", str, "model", path, nullable=True),
        step=_get(model, "step", int, "model", path, nullable=True),
        tokenizer=_get(data, "tokenizer", str, "", path),
        created=_get(data, "created", str, "", path),
        gptjax_version=_get(data, "gptjax_version", str, "", path),
        results=results,
    )
    for key in ("params", "non_embedding_params"):
        if getattr(run, key) <= 0:
            raise ReportError(f"{path}: model.{key} must be positive, got {getattr(run, key)}")
    return run


def load_runs(results_paths: Sequence[Path | str]) -> list[ModelRun]:
    """All runs, smallest model first (then earliest step), each labelled uniquely."""
    if not results_paths:
        raise ReportError("no results files given")
    runs = [load_results(p) for p in results_paths]
    by_path: dict[Path, int] = {}
    for i, run in enumerate(runs):
        if by_path.setdefault(run.path, i) != i:
            raise ReportError(f"results file {run.path} was given twice")
    runs.sort(key=lambda r: (r.params, -1 if r.step is None else r.step, r.name, str(r.path)))
    return _label_runs(runs)


def _label_runs(runs: list[ModelRun]) -> list[ModelRun]:
    """Label by model name; where a name repeats (checkpoints of one model) add the step, else the file."""
    styles = (
        lambda r: r.name,
        lambda r: f"{r.name} @ step {r.step}" if r.step is not None else f"{r.name} ({r.path.name})",
        lambda r: f"{r.name} ({r.path})",  # unique: paths were checked to differ
    )
    labelled = []
    for run in runs:
        namesakes = [r for r in runs if r.name == run.name]
        style = next(s for s in styles if len({s(r) for r in namesakes}) == len(namesakes))
        labelled.append(replace(run, label=style(run)))
    return labelled


__all__ = ["CleanSubset", "ModelRun", "ParamsKind", "ReportError", "TaskResult", "load_results", "load_runs"]
