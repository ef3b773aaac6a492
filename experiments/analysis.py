"""Which numbers of a sweep each scaling law of `experiments.fits.SCALING_LAWS` is fitted to, and the fits.

- L(N), with and without an irreducible term: final held-out loss against non-embedding parameters (Kaplan
  et al.'s N), over the runs with the largest token count, so that every size had the same data.
- L(C): the compute-efficient frontier of the runs' final held-out losses, C = training FLOPs by
  `gptjax.model.FLOPS_CONVENTION`. Final losses, not Kaplan et al.'s envelope of whole learning curves:
  each run anneals its cosine schedule over its own length, so its intermediate losses are not what a
  run of that length would reach (Hoffmann et al., Figure A1); the curves are still drawn for context.
- L(N, D): every run's final held-out loss, N non-embedding parameters, D tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments import fits
from experiments.registry import read_run
from gptjax.reporting import pm
from gptjax.rundir import PathLike, as_path


@dataclass(frozen=True)
class Curve:
    """One run's learning curves: training loss and held-out loss against tokens seen."""

    record: dict[str, Any]  # the run's registry record
    tokens: np.ndarray
    loss: np.ndarray
    eval_tokens: np.ndarray
    eval_loss: np.ndarray


def load_curves(sweep_dir: PathLike, records: Sequence[dict[str, Any]]) -> list[Curve]:
    curves = []
    for record in records:
        _, metrics = read_run(as_path(sweep_dir) / record["run_dir"])
        per_step = record["tokens_per_step"]
        train = [(r["step"] * per_step, r["loss"]) for r in metrics if "loss" in r]
        held_out = [(r["step"] * per_step, r["eval_loss"]) for r in metrics if "eval_loss" in r]
        curves.append(Curve(record, *map(np.array, zip(*train)), *map(np.array, zip(*held_out))))
    return curves


@dataclass(frozen=True)
class LawFit:
    """A law, the points it was fitted to (indices into the registry records), and the fit or why none."""

    law: fits.ScalingLaw
    data: str  # the points, in words
    points: tuple[int, ...]
    fit: fits.Fit | None
    error: str | None

    def describe(self, params: Sequence[str] | None = None) -> str:
        """The fitted parameters (all, or those named) as "α = 0.34 ± 0.02, E = 1.7 ± 0.1", or why none."""
        if self.fit is None:
            return f"not fitted: {self.error}"
        names = list(self.fit.params) if params is None else params
        return ", ".join(f"{self.law.symbol(p)} = {pm(self.fit.params[p], self.fit.stderr[p])}" for p in names)


def _largest_tokens(records: Sequence[dict[str, Any]]) -> tuple[int, ...]:
    most = max(r["tokens"] for r in records)
    return tuple(i for i, r in enumerate(records) if r["tokens"] == most)


def compute_frontier_points(records: Sequence[dict[str, Any]]) -> tuple[int, ...]:
    """Indices of the runs on the frontier of final held-out loss against training FLOPs."""
    frontier = fits.compute_frontier([r["flops"] for r in records], [r["final_eval_loss"] for r in records])
    return tuple(int(i) for i in frontier)


def fit_laws(records: Sequence[dict[str, Any]], *, n_boot: int = 200, seed: int = 0) -> dict[str, LawFit]:
    """Every law of SCALING_LAWS, by name, on the sweep's registry records (at least one); a law the data
    cannot determine carries the FitError message instead of a fit."""
    if not records:
        raise fits.FitError("no finished runs to fit scaling laws to")
    top = _largest_tokens(records)
    tokens = records[top[0]]["tokens"]
    frontier = compute_frontier_points(records)
    n = np.array([r["non_embedding_params"] for r in records], dtype=float)
    d = np.array([r["tokens"] for r in records], dtype=float)
    loss = np.array([r["final_eval_loss"] for r in records], dtype=float)
    flops = np.array([r["flops"] for r in records], dtype=float)
    top_data = f"final held-out loss of the {len(top)} run(s) trained on {tokens:,} tokens (the most)"
    plans = {
        "L(N)": (top_data, top, lambda i: fits.fit_power_law(n[i], loss[i], n_boot=n_boot, seed=seed)),
        "L(N) with E": (
            top_data,
            top,
            lambda i: fits.fit_saturating_power_law(n[i], loss[i], n_boot=n_boot, seed=seed),
        ),
        "L(C)": (
            f"final held-out loss of the {len(frontier)} run(s) on the compute-efficient frontier",
            frontier,
            lambda i: fits.fit_power_law(flops[i], loss[i], n_boot=n_boot, seed=seed),
        ),
        "L(N, D)": (
            f"final held-out loss of all {len(records)} run(s)",
            tuple(range(len(records))),
            lambda i: fits.fit_chinchilla(n[i], d[i], loss[i], n_boot=n_boot, seed=seed),
        ),
    }
    results = {}
    for name, law in fits.SCALING_LAWS.items():
        data, points, fit = plans[name]
        try:
            results[name] = LawFit(law, data, points, fit(list(points)), None)
        except fits.FitError as err:
            results[name] = LawFit(law, data, points, None, str(err))
    return results


__all__ = ["Curve", "LawFit", "compute_frontier_points", "fit_laws", "load_curves"]
