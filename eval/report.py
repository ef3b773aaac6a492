"""Eval results files -> a Markdown report and a self-contained HTML report, in the GPT-3 paper's style.

One results file holds one model (at one checkpoint) evaluated on several tasks at several K. The report
tabulates one primary metric per task (task x K x model, value ± stderr), plots each task against K and,
when several model sizes are given, against parameter count (GPT-3 Figures 3.x) plus an aggregate over
tasks, and records where every number came from. Markdown and HTML are rendered from one list of blocks so
the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from eval import document

# The metric GPT-3 reports for each task family. A key matches the task of that name, or a task that starts
# with it followed by a separator (`arc` matches `arc_easy`); the longest matching key wins.
DEFAULT_PRIMARY_METRICS: Mapping[str, str] = MappingProxyType({
    "hellaswag": "acc_norm", "arc": "acc_norm", "openbookqa": "acc_norm", "piqa": "acc_norm",
    "lambada": "acc", "winogrande": "acc", "boolq": "acc", "copa": "acc",
    "triviaqa": "exact_match", "perplexity": "word_perplexity",
})
# Tasks no preference names (e.g. perplexity tasks named after their corpus) take the first of these present.
_FALLBACK_METRICS = ("acc_norm", "acc", "exact_match", "f1", "word_perplexity", "perplexity", "byte_perplexity",
                     "bits_per_byte")
_LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "loss")  # substrings of metric names

ParamsKind = Literal["non_embedding_params", "params"]
_PARAMS_AXIS = {"non_embedding_params": "Non-embedding parameters (log scale)",
                "params": "Parameters, including embeddings (log scale)"}

# GPT-3's figure palette: zero-shot blue, one-shot green, few-shot orange; further K values after that.
_ZERO_SHOT, _ONE_SHOT = "#1f77b4", "#2ca02c"
_FEW_SHOT = ("#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_PLOT_STYLE = {
    "font.size": 10, "axes.titlesize": 12, "axes.titleweight": "bold", "axes.labelsize": 10,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "legend.frameon": False, "legend.fontsize": 9, "savefig.dpi": 150,
    "svg.hashsalt": "gptjax-report",  # stable SVG ids: the same results give byte-identical reports
}


class ReportError(ValueError):
    """A results file or report option is unusable; the message names the file, key or value."""


# ---------------------------------------------------------------------------------------------------------
# Results files.


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


def _ks(runs: Sequence[ModelRun], task: str) -> list[int]:
    """Every K at which any of `runs` evaluated `task`, ascending."""
    return sorted({r.num_fewshot for run in runs for r in run.results if r.task == task})


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


def _task_result(raw: Any, where: str, path: Path) -> TaskResult:
    if not isinstance(raw, dict):
        raise ReportError(f"{path}: {where} must be an object, got {_short(raw)}")
    result = TaskResult(
        task=_get(raw, "task", str, where, path), split=_get(raw, "split", str, where, path),
        num_fewshot=_get(raw, "num_fewshot", int, where, path),
        fewshot_split=_get(raw, "fewshot_split", str, where, path), seed=_get(raw, "seed", int, where, path),
        num_docs=_get(raw, "num_docs", int, where, path),
        metrics=_metrics(_get(raw, "metrics", dict, where, path), where, path),
        example_prompt=_get(raw, "example_prompt", str, where, path))
    if result.num_fewshot < 0:
        raise ReportError(f"{path}: {where}.num_fewshot must be >= 0, got {result.num_fewshot}")
    return result


def load_results(path: Path | str) -> ModelRun:
    """Read and validate one results file written by the eval harness."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist" if not path.exists()
                                else f"results file {path} is not a file")
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
            raise ReportError(f"{path}: results[{first}] and results[{i}] are both task {result.task!r} at "
                              f"num_fewshot={result.num_fewshot}; a report takes one result per task and K")
    run = ModelRun(
        path=path.resolve(), name=_get(model, "name", str, "model", path),
        params=_get(model, "params", int, "model", path),
        non_embedding_params=_get(model, "non_embedding_params", int, "model", path),
        checkpoint=_get(model, "checkpoint", str, "model", path, nullable=True),
        step=_get(model, "step", int, "model", path, nullable=True),
        tokenizer=_get(data, "tokenizer", str, "", path), created=_get(data, "created", str, "", path),
        gptjax_version=_get(data, "gptjax_version", str, "", path), results=results)
    for key in ("params", "non_embedding_params"):
        if getattr(run, key) <= 0:
            raise ReportError(f"{path}: model.{key} must be positive, got {getattr(run, key)}")
    return run


def _load_runs(results_paths: Sequence[Path | str]) -> list[ModelRun]:
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


# ---------------------------------------------------------------------------------------------------------
# Metrics: which one leads each task, and how its numbers are written.


def _preference_key(task: str, preference: Mapping[str, str]) -> str | None:
    if task in preference:
        return task
    families = [key for key in preference if task.startswith(key) and not task[len(key)].isalnum()]
    return max(families, key=len, default=None)


def _metric_names(results: Sequence[TaskResult]) -> list[str]:
    """Metric names in the order GPT-3-style tables list them, then any others alphabetically."""
    names = {name for r in results for name in r.metrics if not name.endswith("_stderr")}
    known = [m for m in ("acc", "acc_norm", "acc_calibrated", "exact_match", "f1") + _FALLBACK_METRICS
             if m in names]
    return list(dict.fromkeys(known)) + sorted(names - set(known))


def _primary_metric(task: str, results: Sequence[TaskResult], preference: Mapping[str, str]) -> str:
    names = _metric_names(results)
    key = _preference_key(task, preference)
    if key is None:
        return next((m for m in _FALLBACK_METRICS if m in names), names[0])
    if preference[key] not in names:
        raise ReportError(f"metric preference {key}={preference[key]} applies to task {task!r}, but its results "
                          f"have no {preference[key]!r}; choose one of: {', '.join(names)}")
    return preference[key]


def _lower_is_better(metric: str) -> bool:
    return any(marker in metric for marker in _LOWER_IS_BETTER)


@dataclass(frozen=True)
class _Format:
    """How one metric of one task is written: fractions as percentages, others with fitting decimals."""

    metric: str
    percent: bool
    digits: int

    @classmethod
    def of(cls, metric: str, results: Sequence[TaskResult]) -> _Format:
        values = [r.metrics[metric] for r in results if metric in r.metrics]
        finite = [v for v in values if math.isfinite(v)]
        if not _lower_is_better(metric) and all(0.0 <= v <= 1.0 for v in finite):
            return cls(metric, True, 1)
        largest = max((abs(v) for v in finite), default=0.0)
        return cls(metric, False, next((d for d, bound in ((3, 10), (2, 100), (1, 1000)) if largest < bound), 0))

    @property
    def scale(self) -> float:
        return 100.0 if self.percent else 1.0

    @property
    def header(self) -> str:
        return f"{self.metric} {'↓' if _lower_is_better(self.metric) else '↑'}"

    @property
    def axis_label(self) -> str:
        unit = " (%)" if self.percent else ""
        return f"{self.metric}{unit}" + (", lower is better" if _lower_is_better(self.metric) else "")

    def cell(self, result: TaskResult | None) -> str:
        if result is None or self.metric not in result.metrics:
            return "—"
        text = f"{result.metrics[self.metric] * self.scale:.{self.digits}f}"
        stderr = result.stderr(self.metric)
        return text if stderr is None else f"{text} ± {stderr * self.scale:.{self.digits}f}"

    def point(self, result: TaskResult | None) -> tuple[float, float]:
        """(value, stderr) scaled for plotting; NaN value when absent, zero error bar when unknown."""
        if result is None or self.metric not in result.metrics:
            return math.nan, 0.0
        return result.metrics[self.metric] * self.scale, (result.stderr(self.metric) or 0.0) * self.scale


def _k_label(k: int) -> str:
    return {0: "Zero-shot", 1: "One-shot"}.get(k, f"Few-shot (K={k})")


def _k_colours(ks: Sequence[int]) -> dict[int, str]:
    """One colour per K for the whole report, so a K looks the same in every plot."""
    few = [k for k in ks if k > 1]
    colours = {k: _FEW_SHOT[i % len(_FEW_SHOT)] for i, k in enumerate(few)}
    return {0: _ZERO_SHOT, 1: _ONE_SHOT} | colours


def _human(n: float) -> str:
    for divisor, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= divisor:
            return f"{n / divisor:.3g}{suffix}"
    return f"{n:.0f}"


# ---------------------------------------------------------------------------------------------------------
# Plots (matplotlib's object API on an Agg canvas: no pyplot state, no global backend switch).


def _axes() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(7.2, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, stem: Path) -> Path:
    """Write stem.png and stem.svg; returns the PNG (the one the HTML embeds)."""
    png = stem.with_name(stem.name + ".png")
    fig.savefig(png, metadata={"Software": None})
    fig.savefig(stem.with_name(stem.name + ".svg"), metadata={"Date": None})
    return png


def _finish(ax: Axes, title: str, metric: str, legend_title: str | None = None) -> None:
    """Title, log y for perplexities (they fall as a power law) and a legend beside, never over, the data."""
    ax.set_title(title)
    if "perplexity" in metric:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter())  # 60 rather than 6 x 10^1
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.8)))
    ax.legend(title=legend_title, loc="upper left", bbox_to_anchor=(1.01, 1.0), alignment="left")


def _errorbar(ax: Axes, xs: Sequence[float], points: Sequence[tuple[float, float]], label: str,
              colour: Any) -> None:
    ys, errs = zip(*points)
    ax.errorbar(xs, ys, yerr=errs, label=label, color=colour, marker="o", markersize=4, linewidth=1.6,
                capsize=3, elinewidth=1)


def _plot_task_vs_k(task: str, fmt: _Format, runs: Sequence[ModelRun], colours: Mapping[str, Any],
                    stem: Path) -> Path:
    fig, ax = _axes()
    ks = _ks(runs, task)
    for run in runs:
        results = sorted((r for r in run.results if r.task == task), key=lambda r: r.num_fewshot)
        if results:
            _errorbar(ax, [r.num_fewshot for r in results], [fmt.point(r) for r in results], run.label,
                      colours[run.label])
    ax.set_xscale("symlog", linthresh=1, linscale=0.6)  # 0 and 1 stay apart, larger K spread in log space
    ax.set_xticks(ks, labels=[str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("Number of examples in context (K)")
    ax.set_ylabel(fmt.axis_label)
    _finish(ax, task, fmt.metric, legend_title="Model")
    return _save(fig, stem)


def _param_axis(ax: Axes, sizes: Sequence[int], kind: ParamsKind) -> None:
    """Log x axis ticked at the model sizes, as GPT-3's figures are."""
    ax.set_xscale("log")
    ax.set_xticks(sizes, labels=[_human(s) for s in sizes], rotation=45 if len(sizes) > 5 else 0)
    ax.minorticks_off()
    ax.set_xlabel(_PARAMS_AXIS[kind])


def _plot_scaling(task: str, fmt: _Format, runs: Sequence[ModelRun], kind: ParamsKind,
                  colours: Mapping[int, str], stem: Path) -> Path:
    fig, ax = _axes()
    for k in _ks(runs, task):
        have = [(run.size(kind), result) for run in runs if (result := run.result(task, k)) is not None]
        _errorbar(ax, [size for size, _ in have], [fmt.point(r) for _, r in have], _k_label(k), colours[k])
    _param_axis(ax, [run.size(kind) for run in runs], kind)
    ax.set_ylabel(fmt.axis_label)
    _finish(ax, task, fmt.metric)
    return _save(fig, stem)


@dataclass(frozen=True)
class _Aggregate:
    """Mean primary accuracy at one K over the tasks every scaling run has at that K."""

    k: int
    tasks: tuple[str, ...]
    points: tuple[tuple[float, float], ...]  # per run: (mean %, stderr of the mean %)


def _has(run: ModelRun, task: str, k: int, metric: str) -> bool:
    result = run.result(task, k)
    return result is not None and metric in result.metrics


def _aggregates(runs: Sequence[ModelRun], formats: Mapping[str, _Format]) -> list[_Aggregate]:
    """GPT-3 Figure 1.3's average over accuracy-denominated tasks (perplexities would not average)."""
    accuracy_tasks = [task for task, fmt in formats.items() if fmt.percent]
    ks = sorted({r.num_fewshot for run in runs for r in run.results if r.task in accuracy_tasks})
    aggregates = []
    for k in ks:
        tasks = tuple(t for t in accuracy_tasks if all(_has(run, t, k, formats[t].metric) for run in runs))
        if not tasks:
            continue
        points = []
        for run in runs:
            values, errors = zip(*(formats[t].point(run.result(t, k)) for t in tasks))
            # Tasks are independent samples, so the mean's stderr is the root-sum-square over n.
            points.append((float(np.mean(values)), float(np.sqrt(np.sum(np.square(errors)))) / len(tasks)))
        aggregates.append(_Aggregate(k, tasks, tuple(points)))
    return aggregates


@dataclass(frozen=True)
class _Plots:
    """Every plot of one report, by task, as the PNGs the documents embed (SVGs lie beside them)."""

    by_k: dict[str, Path]
    scaling: dict[str, Path]
    aggregates: list[_Aggregate]
    aggregate: Path | None

    def pngs(self) -> list[Path]:
        return [*self.by_k.values(), *self.scaling.values(), *([self.aggregate] if self.aggregate else [])]


def _draw_plots(runs: Sequence[ModelRun], scaling: Sequence[ModelRun], formats: Mapping[str, _Format],
                kind: ParamsKind, plots_dir: Path) -> _Plots:
    """Against K for tasks with several K; against size (per task, and aggregated) for several sizes."""
    slugs = _slugs(list(formats))
    cmap = matplotlib.colormaps["viridis"]
    colours = {run.label: cmap(x) for run, x in zip(runs, np.linspace(0.0, 0.85, len(runs)))}
    k_colours = _k_colours(sorted({r.num_fewshot for run in runs for r in run.results}))
    with matplotlib.rc_context(_PLOT_STYLE):
        by_k = {task: _plot_task_vs_k(task, fmt, runs, colours, plots_dir / f"task_{slugs[task]}")
                for task, fmt in formats.items() if len(_ks(runs, task)) >= 2}
        if len(scaling) < 2:
            return _Plots(by_k, {}, [], None)
        by_size = {task: _plot_scaling(task, fmt, scaling, kind, k_colours, plots_dir / f"scaling_{slugs[task]}")
                   for task, fmt in formats.items()
                   if sum(any(r.task == task for r in run.results) for run in scaling) >= 2}
        aggregates = _aggregates(scaling, formats)
        aggregate = (_plot_aggregate(aggregates, scaling, kind, k_colours, plots_dir / "aggregate")
                     if aggregates else None)
    return _Plots(by_k, by_size, aggregates, aggregate)


def _plot_aggregate(aggregates: Sequence[_Aggregate], runs: Sequence[ModelRun], kind: ParamsKind,
                    colours: Mapping[int, str], stem: Path) -> Path:
    fig, ax = _axes()
    for agg in aggregates:
        label = f"{_k_label(agg.k)}, {len(agg.tasks)} task{'s' if len(agg.tasks) > 1 else ''}"
        _errorbar(ax, [run.size(kind) for run in runs], agg.points, label, colours[agg.k])
    _param_axis(ax, [run.size(kind) for run in runs], kind)
    ax.set_ylabel("Mean primary accuracy (%)")
    _finish(ax, "Aggregate over accuracy tasks", "")
    return _save(fig, stem)


# ---------------------------------------------------------------------------------------------------------
# Report sections.

_TITLE = "Few-shot evaluation report"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _summary(runs: Sequence[ModelRun], formats: Mapping[str, _Format]) -> list[document.Block]:
    rows = tuple((task, fmt.header, str(k), *(fmt.cell(run.result(task, k)) for run in runs))
                 for task, fmt in formats.items() for k in _ks(runs, task))
    return [
        document.Heading(2, "Results"),
        document.Text(f"{_plural(len(runs), 'results file')} (one model checkpoint each), one primary metric per "
              "task (↑ higher is better, ↓ lower is better). Accuracy-style metrics are percentages; values are "
              "± one standard error; — marks a task and K a model was not evaluated on."),
        document.Table(("Task", "Metric", "K", *(run.label for run in runs)), rows,
               frozenset(range(2, 3 + len(runs)))),
    ]


def _scaling_section(runs: Sequence[ModelRun], scaling: Sequence[ModelRun], kind: ParamsKind, plots: _Plots,
                     formats: Mapping[str, _Format]) -> list[document.Block]:
    blocks: list[document.Block] = [document.Heading(2, "Scaling with model size")]
    if len(scaling) < 2:
        return blocks + [document.Text("All results come from one model size, so there are no plots against "
                               "parameter count.")]
    axis = "non-embedding parameters" if kind == "non_embedding_params" else "parameters including embeddings"
    blocks.append(document.Text(f"Model size is counted in {axis}."))
    plotted = {run.label for run in scaling}
    left_out = [run.label for run in runs if run.label not in plotted]
    if left_out:
        blocks.append(document.Text("One run per model size is plotted (where several share a size, the one with the "
                            f"most results, then the latest step); left out of these plots: {', '.join(left_out)}."))
    if plots.aggregate is not None:
        aggregates = plots.aggregates
        if len({agg.tasks for agg in aggregates}) == 1:
            averaged = f"averaged over {', '.join(aggregates[0].tasks)}"
        else:
            averaged = "averaged over " + "; ".join(f"K={a.k}: {', '.join(a.tasks)}" for a in aggregates)
        blocks.append(document.Figure(plots.aggregate, f"Mean primary accuracy against model size, one line per K, "
                                              f"{averaged} (tasks every plotted model has at that K)."))
    for task, png in plots.scaling.items():
        ks = ", ".join(str(k) for k in _ks(scaling, task))
        blocks.append(document.Figure(png, f"{task}: {formats[task].metric} against model size for K = {ks}."))
    return blocks


def _k_section(runs: Sequence[ModelRun], plots: _Plots, formats: Mapping[str, _Format]) -> list[document.Block]:
    blocks: list[document.Block] = [document.Heading(2, "Performance against the number of examples in context")]
    blocks += [document.Figure(png, f"{task}: {formats[task].metric} against K, one line per model.")
               for task, png in plots.by_k.items()]
    single = [f"{task} (K={_ks(runs, task)[0]})" for task in formats if task not in plots.by_k]
    if single:
        blocks.append(document.Text(f"Evaluated at a single K, so not plotted against K: {', '.join(single)}."))
    return blocks


def _all_metrics(runs: Sequence[ModelRun], tasks: Sequence[str]) -> list[document.Block]:
    blocks: list[document.Block] = [document.Heading(2, "All metrics")]
    for task in tasks:
        results = [r for run in runs for r in run.results if r.task == task]
        formats = [_Format.of(metric, results) for metric in _metric_names(results)]
        rows = tuple((run.label, str(r.num_fewshot), r.split, r.fewshot_split or "—", str(r.seed), str(r.num_docs),
                      *(fmt.cell(r) for fmt in formats))
                     for run in runs for r in sorted(run.results, key=lambda r: r.num_fewshot) if r.task == task)
        header = ("Model", "K", "Split", "Few-shot split", "Seed", "Docs", *(fmt.header for fmt in formats))
        blocks += [document.Heading(3, task), document.Table(header, rows, frozenset({1, 4, 5} | set(range(6, len(header)))))]
    return blocks


def _provenance(runs: Sequence[ModelRun], tasks: Sequence[str]) -> list[document.Block]:
    rows = tuple((run.label, run.name, f"{run.params:,}", f"{run.non_embedding_params:,}", run.checkpoint or "—",
                  "—" if run.step is None else str(run.step), run.tokenizer, run.created, run.gptjax_version,
                  str(run.path)) for run in runs)
    header = ("Model", "Name", "Parameters", "Non-embedding", "Checkpoint", "Step", "Tokenizer", "Created",
              "gptjax", "File")
    blocks: list[document.Block] = [document.Heading(2, "Provenance"), document.Heading(3, "Results files"),
                            document.Table(header, rows, frozenset({2, 3, 5})), document.Heading(3, "Example prompts")]
    for task in tasks:
        for k in _ks(runs, task):
            prompts: dict[str, list[str]] = {}
            for run in runs:
                if (result := run.result(task, k)) is not None:
                    prompts.setdefault(result.example_prompt, []).append(run.label)
            for prompt, labels in prompts.items():
                whose = f" ({', '.join(labels)})" if len(prompts) > 1 else ""
                blocks.append(document.Code(prompt, summary=f"{task}, {_k_label(k)}{whose}"))
    return blocks


def _scaling_runs(runs: Sequence[ModelRun], kind: ParamsKind) -> list[ModelRun]:
    """One run per model size, smallest first; where runs share a size, the one with the most results
    (a partial eval of a later checkpoint must not hide a full one), then the latest step."""
    by_size: dict[int, ModelRun] = {}
    for run in sorted(runs, key=lambda r: (len(r.results), -1 if r.step is None else r.step)):
        by_size[run.size(kind)] = run
    return sorted(by_size.values(), key=lambda r: r.size(kind))


def _slugs(tasks: Sequence[str]) -> dict[str, str]:
    """File-name-safe, distinct names for the tasks' plots."""
    slugs: dict[str, str] = {}
    for task in tasks:
        slug = re.sub(r"[^A-Za-z0-9_-]+", "-", task).strip("-") or "task"
        slugs[task] = slug if slug not in slugs.values() else f"{slug}-{len(slugs)}"
    return slugs


def build_report(results_paths: Sequence[Path | str], out_dir: Path | str,
                 metric_preference: Mapping[str, str] = DEFAULT_PRIMARY_METRICS, *,
                 params_kind: ParamsKind = "non_embedding_params") -> dict[str, Path]:
    """Write out_dir/report.md, out_dir/report.html and out_dir/plots/*.png|svg from results files.

    `metric_preference` maps a task or task family to its primary metric (see DEFAULT_PRIMARY_METRICS);
    `params_kind` is the parameter count plotted on scaling axes. Returns every written file keyed by its
    path relative to out_dir (e.g. "report.md", "plots/aggregate.png").
    """
    if params_kind not in _PARAMS_AXIS:
        raise ReportError(f"params_kind must be one of {list(_PARAMS_AXIS)}, got {params_kind!r}")
    runs = _load_runs(results_paths)
    tasks = list(dict.fromkeys(r.task for run in runs for r in run.results))
    by_task = {task: [r for run in runs for r in run.results if r.task == task] for task in tasks}
    formats = {task: _Format.of(_primary_metric(task, by_task[task], metric_preference), by_task[task])
               for task in tasks}
    scaling = _scaling_runs(runs, params_kind)
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    plots = _draw_plots(runs, scaling, formats, params_kind, out_dir / "plots")
    blocks = [document.Heading(1, _TITLE), *_summary(runs, formats),
              *_scaling_section(runs, scaling, params_kind, plots, formats), *_k_section(runs, plots, formats),
              *_all_metrics(runs, tasks), *_provenance(runs, tasks)]
    markdown, page = out_dir / "report.md", out_dir / "report.html"
    markdown.write_text(document.markdown(blocks, out_dir), encoding="utf-8")
    page.write_text(document.html_page(blocks, _TITLE), encoding="utf-8")
    pngs = plots.pngs()
    written = [markdown, page, *pngs, *(png.with_suffix(".svg") for png in pngs)]
    return {path.relative_to(out_dir).as_posix(): path for path in written}


def report_command(argv: list[str]) -> int:
    """`gptjax report RESULTS.json [...] --out DIR`. An unusable input raises ReportError or FileNotFoundError,
    which gptjax's CLI prints as a one-line error (its convention for errors that name their values)."""
    parser = argparse.ArgumentParser(
        prog="gptjax report", description="Markdown + self-contained HTML report with GPT-3-style tables and "
                                          "plots from eval results files (one file per model/checkpoint).")
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS.json")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="report directory (created)")
    parser.add_argument("--metric", action="append", default=[], metavar="TASK=METRIC",
                        help="primary metric for a task or task family, e.g. lambada=perplexity (repeatable; "
                             "defaults: " + ", ".join(f"{t}={m}" for t, m in DEFAULT_PRIMARY_METRICS.items()) + ")")
    parser.add_argument("--params", choices=("non-embedding", "total"), default="non-embedding",
                        help="parameter count on the scaling plots' x axis (default: non-embedding)")
    args = parser.parse_args(argv)
    preference = dict(DEFAULT_PRIMARY_METRICS)
    for item in args.metric:
        task, _, metric = item.partition("=")
        if not task.strip() or not metric.strip():
            parser.error(f"--metric {item!r} is not of the form TASK=METRIC")
        preference[task.strip()] = metric.strip()
    kind: ParamsKind = "non_embedding_params" if args.params == "non-embedding" else "params"
    written = build_report(args.results, args.out, preference, params_kind=kind)
    plots = sum(key.endswith(".png") for key in written)
    print(f"wrote {written['report.md']} and {written['report.html']} ({_plural(plots, 'plot')} in "
          f"{args.out / 'plots'})")
    return 0
