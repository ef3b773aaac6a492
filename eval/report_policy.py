"""Which metric leads each task in a few-shot report, and how a metric's numbers are written there.

The primary metric of a task is the one GPT-3 reports for its family (DEFAULT_PRIMARY_METRICS, overridable per
report). Whether higher is better and whether a value is a fraction shown as a percentage are not decided
here but read from eval.metrics' table (`metric_info`), so a metric another module registers is reported the
right way round without a change here; metrics no module registered get that table's documented fallback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from eval.metrics import METRICS_BY_NAME, Metric, metric_info, perplexity, weighted_perplexity
from eval.results import ReportError, TaskResult

# The metric GPT-3 reports for each task family. A key matches the task of that name, or a task that starts
# with it followed by a separator (`arc` matches `arc_easy`); the longest matching key wins.
DEFAULT_PRIMARY_METRICS: Mapping[str, str] = MappingProxyType(
    {
        "hellaswag": "acc_norm",
        "arc": "acc_norm",
        "openbookqa": "acc_norm",
        "piqa": "acc_norm",
        "lambada": "acc",
        "winogrande": "acc",
        "boolq": "acc",
        "copa": "acc",
        "triviaqa": "exact_match",
        "perplexity": "word_perplexity",
        # The ICL probes (eval/icl): induction heads, the ICL score, in-context regression.
        "induction": "induction_score",
        "icl_score": "icl_score",
        "linear_regression": "normalized_mse",
    }
)
# Tasks no preference names (e.g. perplexity tasks named after their corpus) take the first of these present.
_FALLBACK_METRICS = (
    "acc_norm",
    "acc",
    "exact_match",
    "f1",
    "word_perplexity",
    "perplexity",
    "byte_perplexity",
    "bits_per_byte",
)
# Metrics aggregated as exp(mean negative log-likelihood) fall as a power law of model size: log axes.
_LOG_AXIS_AGGREGATIONS = (perplexity, weighted_perplexity)


def _preference_key(task: str, preference: Mapping[str, str]) -> str | None:
    if task in preference:
        return task
    families = [key for key in preference if task.startswith(key) and not task[len(key)].isalnum()]
    return max(families, key=len, default=None)


def metric_names(results: Sequence[TaskResult]) -> list[str]:
    """The metrics of `results`: registered ones in the metric table's order, then any others alphabetically."""
    names = {name for r in results for name in r.metrics if not name.endswith("_stderr")}
    known = [m for m in METRICS_BY_NAME if m in names]
    return known + sorted(names - set(known))


def primary_metric(task: str, results: Sequence[TaskResult], preference: Mapping[str, str]) -> str:
    """The metric that leads `task`'s rows: its preference (which must be present), else the first fallback."""
    names = metric_names(results)
    key = _preference_key(task, preference)
    if key is None:
        return next((m for m in _FALLBACK_METRICS if m in names), names[0])
    if preference[key] not in names:
        raise ReportError(
            f"metric preference {key}={preference[key]} applies to task {task!r}, but its results "
            f"have no {preference[key]!r}; choose one of: {', '.join(names)}"
        )
    return preference[key]


@dataclass(frozen=True)
class MetricFormat:
    """How one metric of one task is written: fractions as percentages, others with fitting decimals."""

    info: Metric
    digits: int

    @classmethod
    def of(cls, metric: str, results: Sequence[TaskResult]) -> MetricFormat:
        info = metric_info(metric)
        if info.percentage:
            return cls(info, 1)
        values = [r.metrics[metric] for r in results if metric in r.metrics]
        finite = [v for v in values if math.isfinite(v)]
        largest = max((abs(v) for v in finite), default=0.0)
        return cls(info, next((d for d, bound in ((3, 10), (2, 100), (1, 1000)) if largest < bound), 0))

    @property
    def metric(self) -> str:
        return self.info.name

    @property
    def scale(self) -> float:
        return 100.0 if self.info.percentage else 1.0

    @property
    def header(self) -> str:
        return f"{self.metric} {'↑' if self.info.higher_is_better else '↓'}"

    @property
    def axis_label(self) -> str:
        unit = " (%)" if self.info.percentage else ""
        return f"{self.metric}{unit}" + ("" if self.info.higher_is_better else ", lower is better")

    @property
    def log_axis(self) -> bool:
        return self.info.aggregate in _LOG_AXIS_AGGREGATIONS

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


__all__ = ["DEFAULT_PRIMARY_METRICS", "MetricFormat", "metric_names", "primary_metric"]
