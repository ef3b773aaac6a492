"""The ICL probes over training and over size: curves against training tokens with the phase change
marked, per-head score maps, and a report section made of gptjax.reporting's blocks.

Curves come from the metrics the training hook logged (icl/<task>/<K>shot/<metric> in metrics.jsonl), so
they need no checkpoint; the probes' results files (<run_dir>/icl/<step>.json) go to eval/report.py like any
benchmark's, which plots accuracy against K per size and every metric against size. A sweep report adds
`icl_section` for its runs (experiments/report.py); bench/icl_evidence.py draws the same plots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eval.icl.scores import phase_change
from eval.report_policy import MetricFormat
from gptjax import model
from gptjax.metrics import read_metrics
from gptjax.reporting import (
    Block,
    Figure,
    Heading,
    Table,
    Text,
    human,
    new_axes,
    plot_style,
    save_figure,
    sequential_colours,
)
from gptjax.rundir import PathLike, RunDir, read_json

INDUCTION = "icl/induction/0shot/induction_score"
ICL_SCORE = "icl/icl_score/0shot/icl_score"
# The smallest move that counts as a phase change: a tenth of the attention mass, a tenth of a nat.
MIN_CHANGE = {INDUCTION: 0.1, ICL_SCORE: 0.1}


@dataclass(frozen=True)
class ProbeCurves:
    """One run's probe metrics against training tokens."""

    label: str
    non_embedding_params: int
    tokens: np.ndarray  # [evaluations]
    values: Mapping[str, np.ndarray]  # metric key -> [evaluations] (NaN where that evaluation lacks it)

    def phase_change(self, key: str) -> float | None:
        """Tokens at the phase change of `key` (scores.phase_change), None if it does not move."""
        if key not in self.values:
            return None
        ok = np.isfinite(self.values[key])
        return phase_change(self.tokens[ok], self.values[key][ok], MIN_CHANGE.get(key, 0.0))


def load_curves(run_dir: PathLike, label: str | None = None) -> ProbeCurves:
    """The icl/ metrics of a run directory, by training tokens (steps x batch_size x seq_len)."""
    run_dir = RunDir(run_dir)
    run = run_dir.read_config()
    by_step: dict[int, dict[str, float]] = {}
    for record in read_metrics(run_dir.metrics_file):
        probes = {k: v for k, v in record.items() if k.startswith("icl/")}
        if probes:
            by_step.setdefault(record["step"], {}).update(probes)
    steps = sorted(by_step)
    keys = sorted({k for values in by_step.values() for k in values})
    values = {k: np.array([by_step[s].get(k, math.nan) for s in steps], np.float64) for k in keys}
    tokens = np.array(steps, np.float64) * run.batch_size * run.sequence_length
    params = model.param_count(run.model).non_embedding
    return ProbeCurves(label or run.model.name, params, tokens, values)


def plot_over_tokens(
    curves: Sequence[ProbeCurves], key: str, stem: Path, reference: tuple[float, str] | None = None
) -> Path:
    """`key` against training tokens, one line per run (viridis by size), its phase change marked with a
    dotted vertical line; `reference` = (value, label) draws a horizontal line (e.g. the uniform baseline)."""
    fmt = MetricFormat.of(key.rsplit("/", 1)[-1], [])
    colours = sequential_colours([c.label for c in curves])
    with plot_style():
        fig, ax = new_axes()
        for c in curves:
            if key not in c.values:
                continue
            ax.plot(
                c.tokens, c.values[key] * fmt.scale, color=colours[c.label], marker="o", markersize=3, label=c.label
            )
            at = c.phase_change(key)
            if at is not None:
                ax.axvline(at, color=colours[c.label], linestyle=":", linewidth=1.2)
        if reference is not None:
            ax.axhline(reference[0] * fmt.scale, color="0.5", linestyle="--", linewidth=1, label=reference[1])
        ax.set_xlabel("Training tokens")
        ax.set_ylabel(fmt.axis_label)
        ax.set_title(f"{key.removeprefix('icl/')} (dotted: phase change)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return save_figure(fig, stem)


def plot_head_scores(per_head: Sequence[Sequence[float]], title: str, stem: Path) -> Path:
    """A [layers, heads] score map with the values written in."""
    scores = np.asarray(per_head, np.float64)
    with plot_style():
        fig, ax = new_axes(height=1.2 + 0.6 * scores.shape[0])
        image = ax.imshow(
            scores, cmap="viridis", vmin=min(0.0, scores.min()), vmax=max(1.0, scores.max()), aspect="auto"
        )
        for (layer, head), value in np.ndenumerate(scores):
            ax.text(head, layer, f"{value:.2f}", ha="center", va="center", color="w" if value < 0.6 else "k")
        ax.set_xticks(range(scores.shape[1]))
        ax.set_yticks(range(scores.shape[0]))
        ax.set_xlabel("Head")
        ax.set_ylabel("Layer")
        ax.set_title(title)
        fig.colorbar(image, ax=ax)
        return save_figure(fig, stem)


def _tokens(value: float | None) -> str:
    return "—" if value is None else human(value)


def icl_section(run_dirs: Sequence[PathLike], out_dir: Path, labels: Sequence[str] | None = None) -> list[Block]:
    """A report section for runs trained with ICL probes: induction and ICL score against training tokens
    (phase changes marked), a table of final scores and phase changes, and the best run's per-head
    induction map. Empty when no run logged probes."""
    curves = [load_curves(d, labels[i] if labels else None) for i, d in enumerate(run_dirs)]
    curves = sorted((c for c in curves if c.values), key=lambda c: c.non_embedding_params)
    if not curves:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks: list[Block] = [
        Heading(2, "In-context learning probes"),
        Text(
            "Probes run during training (eval/icl): the induction score is the best head's attention from each "
            "token of a repeated random segment to the token after its earlier occurrence; the ICL score is "
            "the loss on a late token minus the loss on an early one (Olsson et al. 2022)."
        ),
    ]
    for key, name in ((INDUCTION, "induction_vs_tokens"), (ICL_SCORE, "icl_score_vs_tokens")):
        if any(key in c.values for c in curves):
            blocks.append(Figure(plot_over_tokens(curves, key, out_dir / name), f"{key} against training tokens."))
    keys = [k for k in (INDUCTION, ICL_SCORE) if any(k in c.values for c in curves)]
    rows = []
    for c in curves:
        finals = [f"{c.values[k][np.isfinite(c.values[k])][-1]:.3f}" if k in c.values else "—" for k in keys]
        rows.append((c.label, human(c.non_embedding_params), *finals, *(_tokens(c.phase_change(k)) for k in keys)))
    header = ("Run", "Non-embedding params", *(f"final {k.rsplit('/', 1)[-1]}" for k in keys))
    header += tuple(f"phase change of {k.rsplit('/', 1)[-1]} (tokens)" for k in keys)
    blocks.append(Table(header, tuple(rows), frozenset(range(1, len(header)))))
    finals = [files[-1] for d in run_dirs if (files := RunDir(d).icl_results_files())]
    heads = [
        (r["metrics"]["induction_score"], path, r["details"]["induction"])
        for path in finals
        for r in read_json(path)["results"]
        if r["task"] == "induction"
    ]
    if heads:
        score, path, per_head = max(heads, key=lambda h: h[0])
        png = plot_head_scores(per_head, "Induction score per layer and head", out_dir / "induction_heads")
        blocks.append(Figure(png, f"Per-head induction scores at the last probe of {path} (best head {score:.3f})."))
    return blocks


__all__ = [
    "ICL_SCORE",
    "INDUCTION",
    "ProbeCurves",
    "icl_section",
    "load_curves",
    "plot_head_scores",
    "plot_over_tokens",
]
