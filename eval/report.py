"""Eval results files -> a Markdown report and a self-contained HTML report, in the GPT-3 paper's style.

The report tabulates one primary metric per task (task x K x model, value ± stderr), plots each task against
K and, when several model sizes are given, against parameter count (GPT-3 Figures 3.x) plus an aggregate over
tasks, and records where every number came from. This module holds those sections and plots; reading the
results files is eval/results.py's job, choosing and writing each task's metric eval/report_policy.py's, and
the blocks, plot style and number formats are gptjax.reporting's, shared with the sweep report.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import LogFormatter

from eval.report_policy import DEFAULT_PRIMARY_METRICS, MetricFormat, metric_names, primary_metric
from eval.results import ModelRun, ParamsKind, ReportError, load_results, load_runs
from gptjax.reporting import (
    Block,
    Code,
    Figure,
    Heading,
    Table,
    Text,
    human,
    new_axes,
    plot_style,
    save_figure,
    sequential_colours,
    write_report,
)
from gptjax.rundir import as_path, staged_dir

_PARAMS_AXIS = {
    "non_embedding_params": "Non-embedding parameters (log scale)",
    "params": "Parameters, including embeddings (log scale)",
}

# GPT-3's figure palette: zero-shot blue, one-shot green, few-shot orange; further K values after that.
_ZERO_SHOT, _ONE_SHOT = "#1f77b4", "#2ca02c"
_FEW_SHOT = ("#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _ks(runs: Sequence[ModelRun], task: str) -> list[int]:
    """Every K at which any of `runs` evaluated `task`, ascending."""
    return sorted({r.num_fewshot for run in runs for r in run.results if r.task == task})


def _k_label(k: int) -> str:
    return {0: "Zero-shot", 1: "One-shot"}.get(k, f"Few-shot (K={k})")


def _k_colours(ks: Sequence[int]) -> dict[int, str]:
    """One colour per K for the whole report, so a K looks the same in every plot."""
    few = [k for k in ks if k > 1]
    colours = {k: _FEW_SHOT[i % len(_FEW_SHOT)] for i, k in enumerate(few)}
    return {0: _ZERO_SHOT, 1: _ONE_SHOT} | colours


# ---------------------------------------------------------------------------------------------------------
# Plots.


def _finish(ax: Axes, title: str, log_y: bool, legend_title: str | None = None) -> None:
    """Title, log y if asked (perplexities fall as a power law) and a legend beside, never over, the data."""
    ax.set_title(title)
    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter())  # 60 rather than 6 x 10^1
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.8)))
    ax.legend(title=legend_title, loc="upper left", bbox_to_anchor=(1.01, 1.0), alignment="left")


def _errorbar(ax: Axes, xs: Sequence[float], points: Sequence[tuple[float, float]], label: str, colour: Any) -> None:
    ys, errs = zip(*points)
    ax.errorbar(
        xs, ys, yerr=errs, label=label, color=colour, marker="o", markersize=4, linewidth=1.6, capsize=3, elinewidth=1
    )


def _plot_task_vs_k(
    task: str, fmt: MetricFormat, runs: Sequence[ModelRun], colours: Mapping[str, Any], stem: Path
) -> Path:
    fig, ax = new_axes()
    ks = _ks(runs, task)
    for run in runs:
        results = sorted((r for r in run.results if r.task == task), key=lambda r: r.num_fewshot)
        if results:
            _errorbar(
                ax, [r.num_fewshot for r in results], [fmt.point(r) for r in results], run.label, colours[run.label]
            )
    ax.set_xscale("symlog", linthresh=1, linscale=0.6)  # 0 and 1 stay apart, larger K spread in log space
    ax.set_xticks(ks, labels=[str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("Number of examples in context (K)")
    ax.set_ylabel(fmt.axis_label)
    _finish(ax, task, fmt.log_axis, legend_title="Model")
    return save_figure(fig, stem)


def _param_axis(ax: Axes, sizes: Sequence[int], kind: ParamsKind) -> None:
    """Log x axis ticked at the model sizes, as GPT-3's figures are."""
    ax.set_xscale("log")
    ax.set_xticks(sizes, labels=[human(s) for s in sizes], rotation=45 if len(sizes) > 5 else 0)
    ax.minorticks_off()
    ax.set_xlabel(_PARAMS_AXIS[kind])


def _plot_scaling(
    task: str, fmt: MetricFormat, runs: Sequence[ModelRun], kind: ParamsKind, colours: Mapping[int, str], stem: Path
) -> Path:
    fig, ax = new_axes()
    for k in _ks(runs, task):
        have = [(run.size(kind), result) for run in runs if (result := run.result(task, k)) is not None]
        _errorbar(ax, [size for size, _ in have], [fmt.point(r) for _, r in have], _k_label(k), colours[k])
    _param_axis(ax, [run.size(kind) for run in runs], kind)
    ax.set_ylabel(fmt.axis_label)
    _finish(ax, task, fmt.log_axis)
    return save_figure(fig, stem)


@dataclass(frozen=True)
class _Aggregate:
    """Mean primary accuracy at one K over the tasks every scaling run has at that K."""

    k: int
    tasks: tuple[str, ...]
    points: tuple[tuple[float, float], ...]  # per run: (mean %, stderr of the mean %)


def _has(run: ModelRun, task: str, k: int, metric: str) -> bool:
    result = run.result(task, k)
    return result is not None and metric in result.metrics


def _aggregates(runs: Sequence[ModelRun], formats: Mapping[str, MetricFormat]) -> list[_Aggregate]:
    """GPT-3 Figure 1.3's average over accuracy-denominated tasks (perplexities would not average)."""
    accuracy_tasks = [task for task, fmt in formats.items() if fmt.info.percentage]
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


def _draw_plots(
    runs: Sequence[ModelRun],
    scaling: Sequence[ModelRun],
    formats: Mapping[str, MetricFormat],
    kind: ParamsKind,
    plots_dir: Path,
) -> _Plots:
    """Against K for tasks with several K; against size (per task, and aggregated) for several sizes."""
    slugs = _slugs(list(formats))
    colours = sequential_colours([run.label for run in runs])
    k_colours = _k_colours(sorted({r.num_fewshot for run in runs for r in run.results}))
    with plot_style():
        by_k = {
            task: _plot_task_vs_k(task, fmt, runs, colours, plots_dir / f"task_{slugs[task]}")
            for task, fmt in formats.items()
            if len(_ks(runs, task)) >= 2
        }
        if len(scaling) < 2:
            return _Plots(by_k, {}, [], None)
        by_size = {
            task: _plot_scaling(task, fmt, scaling, kind, k_colours, plots_dir / f"scaling_{slugs[task]}")
            for task, fmt in formats.items()
            if sum(any(r.task == task for r in run.results) for run in scaling) >= 2
        }
        aggregates = _aggregates(scaling, formats)
        aggregate = (
            _plot_aggregate(aggregates, scaling, kind, k_colours, plots_dir / "aggregate") if aggregates else None
        )
    return _Plots(by_k, by_size, aggregates, aggregate)


def _plot_aggregate(
    aggregates: Sequence[_Aggregate], runs: Sequence[ModelRun], kind: ParamsKind, colours: Mapping[int, str], stem: Path
) -> Path:
    fig, ax = new_axes()
    for agg in aggregates:
        label = f"{_k_label(agg.k)}, {_plural(len(agg.tasks), 'task')}"
        _errorbar(ax, [run.size(kind) for run in runs], agg.points, label, colours[agg.k])
    _param_axis(ax, [run.size(kind) for run in runs], kind)
    ax.set_ylabel("Mean primary accuracy (%)")
    _finish(ax, "Aggregate over accuracy tasks", log_y=False)
    return save_figure(fig, stem)


# ---------------------------------------------------------------------------------------------------------
# Report sections.

_TITLE = "Few-shot evaluation report"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _summary(runs: Sequence[ModelRun], formats: Mapping[str, MetricFormat]) -> list[Block]:
    rows = tuple(
        (task, fmt.header, str(k), *(fmt.cell(run.result(task, k)) for run in runs))
        for task, fmt in formats.items()
        for k in _ks(runs, task)
    )
    return [
        Heading(2, "Results"),
        Text(
            f"{_plural(len(runs), 'results file')} (one model checkpoint each), one primary metric per task "
            "(↑ higher is better, ↓ lower is better). Accuracy-style metrics are percentages; values are ± one "
            "standard error; — marks a task and K a model was not evaluated on."
        ),
        Table(("Task", "Metric", "K", *(run.label for run in runs)), rows, frozenset(range(2, 3 + len(runs)))),
    ]


def _contamination(runs: Sequence[ModelRun], formats: Mapping[str, MetricFormat]) -> list[Block]:
    """GPT-3's contamination check (Appendix C): each task's primary metric on all documents and on the
    clean subset that no training document overlaps (results of `gptjax eval --dirty`), side by side."""
    rows = []
    for task, fmt in formats.items():
        for k in _ks(runs, task):
            for run in runs:
                result = run.result(task, k)
                if result is None or result.clean is None:
                    continue
                clean = replace(result, metrics=result.clean.metrics, num_docs=result.clean.num_docs)
                delta = "—"
                if fmt.metric in clean.metrics and fmt.metric in result.metrics:
                    delta = f"{(clean.metrics[fmt.metric] - result.metrics[fmt.metric]) * fmt.scale:+.{fmt.digits}f}"
                cells = (fmt.cell(result), str(result.num_docs), fmt.cell(clean), str(clean.num_docs), delta)
                rows.append((task, fmt.header, str(k), run.label, *cells))
    if not rows:
        return []
    return [
        Heading(2, "Contamination: clean subset vs all"),
        Text(
            "Each task scored on all its documents and on its clean subset: the documents sharing no n-gram "
            "(13 words by default; a shorter document: all of it) with the training corpus, as `gptjax data "
            "decontaminate` found them. A clean score well below the full one suggests the model memorised "
            "contaminated documents."
        ),
        Table(
            ("Task", "Metric", "K", "Model", "All", "Docs", "Clean", "Clean docs", "Clean − all"),
            tuple(rows),
            frozenset({2, 4, 5, 6, 7, 8}),
        ),
    ]


def _scaling_section(
    runs: Sequence[ModelRun],
    scaling: Sequence[ModelRun],
    kind: ParamsKind,
    plots: _Plots,
    formats: Mapping[str, MetricFormat],
) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Scaling with model size")]
    if len(scaling) < 2:
        return blocks + [Text("All results come from one model size, so there are no plots against parameter count.")]
    axis = "non-embedding parameters" if kind == "non_embedding_params" else "parameters including embeddings"
    blocks.append(Text(f"Model size is counted in {axis}."))
    plotted = {run.label for run in scaling}
    left_out = [run.label for run in runs if run.label not in plotted]
    if left_out:
        blocks.append(
            Text(
                "One run per model size is plotted (where several share a size, the one with the most "
                f"results, then the latest step); left out of these plots: {', '.join(left_out)}."
            )
        )
    if plots.aggregate is not None:
        aggregates = plots.aggregates
        if len({agg.tasks for agg in aggregates}) == 1:
            averaged = f"averaged over {', '.join(aggregates[0].tasks)}"
        else:
            averaged = "averaged over " + "; ".join(f"K={a.k}: {', '.join(a.tasks)}" for a in aggregates)
        blocks.append(
            Figure(
                plots.aggregate,
                f"Mean primary accuracy against model size, one line per K, "
                f"{averaged} (tasks every plotted model has at that K).",
            )
        )
    for task, png in plots.scaling.items():
        ks = ", ".join(str(k) for k in _ks(scaling, task))
        blocks.append(Figure(png, f"{task}: {formats[task].metric} against model size for K = {ks}."))
    return blocks


def _k_section(runs: Sequence[ModelRun], plots: _Plots, formats: Mapping[str, MetricFormat]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Performance against the number of examples in context")]
    blocks += [
        Figure(png, f"{task}: {formats[task].metric} against K, one line per model.")
        for task, png in plots.by_k.items()
    ]
    single = [f"{task} (K={_ks(runs, task)[0]})" for task in formats if task not in plots.by_k]
    if single:
        blocks.append(Text(f"Evaluated at a single K, so not plotted against K: {', '.join(single)}."))
    return blocks


def _all_metrics(runs: Sequence[ModelRun], tasks: Sequence[str]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "All metrics")]
    for task in tasks:
        results = [r for run in runs for r in run.results if r.task == task]
        formats = [MetricFormat.of(metric, results) for metric in metric_names(results)]
        rows = tuple(
            (
                run.label,
                str(r.num_fewshot),
                r.split,
                r.fewshot_split or "—",
                str(r.seed),
                str(r.num_docs),
                *(fmt.cell(r) for fmt in formats),
            )
            for run in runs
            for r in sorted(run.results, key=lambda r: r.num_fewshot)
            if r.task == task
        )
        header = ("Model", "K", "Split", "Few-shot split", "Seed", "Docs", *(fmt.header for fmt in formats))
        blocks += [Heading(3, task), Table(header, rows, frozenset({1, 4, 5} | set(range(6, len(header)))))]
    return blocks


def _provenance(runs: Sequence[ModelRun], tasks: Sequence[str]) -> list[Block]:
    rows = tuple(
        (
            run.label,
            run.name,
            f"{run.params:,}",
            f"{run.non_embedding_params:,}",
            run.checkpoint or "—",
            "—" if run.step is None else str(run.step),
            run.tokenizer,
            run.created,
            run.gptjax_version,
            str(run.path),
        )
        for run in runs
    )
    header = (
        "Model",
        "Name",
        "Parameters",
        "Non-embedding",
        "Checkpoint",
        "Step",
        "Tokenizer",
        "Created",
        "gptjax",
        "File",
    )
    blocks: list[Block] = [
        Heading(2, "Provenance"),
        Heading(3, "Results files"),
        Table(header, rows, frozenset({2, 3, 5})),
        Heading(3, "Example prompts"),
    ]
    for task in tasks:
        for k in _ks(runs, task):
            prompts: dict[str, list[str]] = {}
            for run in runs:
                if (result := run.result(task, k)) is not None:
                    prompts.setdefault(result.example_prompt, []).append(run.label)
            for prompt, labels in prompts.items():
                whose = f" ({', '.join(labels)})" if len(prompts) > 1 else ""
                blocks.append(Code(prompt, summary=f"{task}, {_k_label(k)}{whose}"))
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


def build_report(
    results_paths: Sequence[Path | str],
    out_dir: Path | str,
    metric_preference: Mapping[str, str] = DEFAULT_PRIMARY_METRICS,
    *,
    params_kind: ParamsKind = "non_embedding_params",
) -> dict[str, Path]:
    """Write out_dir/report.md, out_dir/report.html and out_dir/plots/*.png|svg from results files.

    `metric_preference` maps a task or task family to its primary metric (see DEFAULT_PRIMARY_METRICS);
    `params_kind` is the parameter count plotted on scaling axes. Returns every written file keyed by its
    path relative to out_dir (e.g. "report.md", "plots/aggregate.png").
    """
    if params_kind not in _PARAMS_AXIS:
        raise ReportError(f"params_kind must be one of {list(_PARAMS_AXIS)}, got {params_kind!r}")
    runs = load_runs(results_paths)
    tasks = list(dict.fromkeys(r.task for run in runs for r in run.results))
    by_task = {task: [r for run in runs for r in run.results if r.task == task] for task in tasks}
    formats = {
        task: MetricFormat.of(primary_metric(task, by_task[task], metric_preference), by_task[task]) for task in tasks
    }
    scaling = _scaling_runs(runs, params_kind)
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    plots = _draw_plots(runs, scaling, formats, params_kind, out_dir / "plots")
    blocks = [
        Heading(1, _TITLE),
        *_summary(runs, formats),
        *_contamination(runs, formats),
        *_scaling_section(runs, scaling, params_kind, plots, formats),
        *_k_section(runs, plots, formats),
        *_all_metrics(runs, tasks),
        *_provenance(runs, tasks),
    ]
    return write_report(blocks, out_dir, _TITLE)


def report_command(argv: list[str]) -> int:
    """`gptjax report RESULTS.json [...] --out DIR`. An unusable input raises ReportError or InputNotFoundError,
    which gptjax's CLI prints as a one-line error (its convention for errors that name their values)."""
    parser = argparse.ArgumentParser(
        prog="gptjax report",
        description="Markdown + self-contained HTML report with GPT-3-style tables and "
        "plots from eval results files (one file per model/checkpoint).",
    )
    parser.add_argument("results", nargs="+", metavar="RESULTS.json", help="local or gs:// files")
    parser.add_argument("--out", required=True, metavar="DIR", help="report directory, local or gs:// (created)")
    parser.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="TASK=METRIC",
        help="primary metric for a task or task family, e.g. lambada=perplexity (repeatable; "
        "defaults: " + ", ".join(f"{t}={m}" for t, m in DEFAULT_PRIMARY_METRICS.items()) + ")",
    )
    parser.add_argument(
        "--params",
        choices=("non-embedding", "total"),
        default="non-embedding",
        help="parameter count on the scaling plots' x axis (default: non-embedding)",
    )
    args = parser.parse_args(argv)
    preference = dict(DEFAULT_PRIMARY_METRICS)
    for item in args.metric:
        task, _, metric = item.partition("=")
        if not task.strip() or not metric.strip():
            parser.error(f"--metric {item!r} is not of the form TASK=METRIC")
        preference[task.strip()] = metric.strip()
    kind: ParamsKind = "non_embedding_params" if args.params == "non-embedding" else "params"
    with staged_dir(args.out) as out_dir:  # written locally, then uploaded when on gs://
        written = build_report(args.results, out_dir, preference, params_kind=kind)
    out = as_path(args.out)
    plots = sum(key.endswith(".png") for key in written)
    print(f"wrote {out / 'report.md'} and {out / 'report.html'} ({_plural(plots, 'plot')} in {out / 'plots'})")
    return 0


# load_results is the report's input reader (eval/results.py); callers read results files from here too.
__all__ = ["DEFAULT_PRIMARY_METRICS", "ReportError", "build_report", "load_results", "report_command"]
