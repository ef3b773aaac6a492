"""Which numbers of a sweep each scaling law of `experiments.fits.SCALING_LAWS` is fitted to, and the fits.

- L(N), with and without an irreducible term: final held-out loss against non-embedding parameters (Kaplan
  et al.'s N), over the runs with the largest token count, so that every size had the same data.
- L(C): the compute-efficient frontier of the runs' final held-out losses, C = training FLOPs by
  `gptjax.model.FLOPS_CONVENTION`. Final losses, not Kaplan et al.'s envelope of whole learning curves:
  each run anneals its cosine schedule over its own length, so its intermediate losses are not what a
  run of that length would reach (Hoffmann et al., Figure A1); the curves are still drawn for context.
- L(N, D): every run's final held-out loss, N non-embedding parameters, D tokens.
- IsoFLOP profiles (Hoffmann et al.'s Approach 2): the runs of a sweep's compute budgets ([axes].flops),
  grouped by the budget they were planned at (their actual FLOPs differ by the rounding to whole steps),
  beside Approach 3 (L(N, D)) fitted to the same runs.
- The prediction check (the GPT-4 report's predictable scaling): every law refitted without the runs of the
  largest model, and what those fits predict for it against the loss it reached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    """The runs L(N) is fitted to: those trained on the token count the most sizes share, the largest such
    count on a tie (a sweep with IsoFLOP budgets gives each size its own token count at each budget)."""
    sizes: dict[int, set[int]] = {}
    for r in records:
        sizes.setdefault(r["tokens"], set()).add(r["non_embedding_params"])
    tokens = max(sizes, key=lambda t: (len(sizes[t]), t))
    return tuple(i for i, r in enumerate(records) if r["tokens"] == tokens)


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
    top_data = f"final held-out loss of the {len(top)} run(s) trained on {tokens:,} tokens"
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


@dataclass(frozen=True)
class IsoFlop:
    """Approach 2 on the runs planned at a compute budget, and Approach 3 (L(N, D)) on the same runs."""

    points: tuple[int, ...]
    profiles: tuple[fits.IsoFlopProfile, ...]  # also when N_opt ∝ C^a cannot be fitted to them
    fit: fits.IsoFlopFit | None
    error: str | None
    approach3: LawFit | None  # None when there are no budgeted runs
    approach3_n_opt: tuple[float, ...]  # L(N, D)'s N_opt along each profile, when L(N, D) is fitted

    def approach3_allocation(self) -> dict[str, tuple[float, float]]:
        """a and b that L(N, D) implies, with their bootstrap standard deviations (NaN with no refits)."""
        assert self.approach3 is not None and self.approach3.fit is not None
        fit = self.approach3.fit
        samples = [fits.chinchilla_allocation(fits.Fit(fit.law, r, {}, 0, 0, 0.0)) for r in fit.refits]
        return {
            name: (value, float(np.std([s[name] for s in samples], ddof=1)) if len(samples) > 1 else float("nan"))
            for name, value in fits.chinchilla_allocation(fit).items()
        }


def fit_isoflop(
    records: Sequence[dict[str, Any]], budgets: Mapping[str, float], laws: Mapping[str, LawFit], *, n_boot: int = 200
) -> IsoFlop:
    """Approach 2 on the records whose run name has a planned budget in `budgets`; Approach 3 is `laws`'
    L(N, D) when those are all the records, else refitted to them."""
    points = tuple(i for i, r in enumerate(records) if r["name"] in budgets)
    if not points:
        return IsoFlop(points, (), None, "the sweep plans no compute budgets ([axes].flops)", None, ())
    rs = [records[i] for i in points]
    columns = [[r[k] for r in rs] for k in ("non_embedding_params", "tokens", "final_eval_loss")]
    profiles: tuple[fits.IsoFlopProfile, ...] = ()
    fit, error = None, None
    try:
        profiles = fits.isoflop_profiles([budgets[r["name"]] for r in rs], *columns)
        fit = fits.fit_isoflop([budgets[r["name"]] for r in rs], *columns, n_boot=n_boot)
    except fits.FitError as err:
        error = str(err)
    if len(points) == len(records):
        approach3 = laws["L(N, D)"]
    else:
        data = f"final held-out loss of the {len(points)} run(s) at a planned compute budget"
        try:
            approach3 = LawFit(laws["L(N, D)"].law, data, points, fits.fit_chinchilla(*columns, n_boot=n_boot), None)
        except fits.FitError as err:
            approach3 = LawFit(laws["L(N, D)"].law, data, points, None, str(err))
    n_opt = tuple(fits.chinchilla_n_opt(approach3.fit, p) for p in profiles) if approach3.fit is not None else ()
    return IsoFlop(points, profiles, fit, error, approach3, n_opt)


@dataclass(frozen=True)
class Prediction:
    """A law fitted without the largest model, what it predicts for one of that model's runs, and the loss
    the run reached; `interval` spans the 2.5th to 97.5th percentiles of the bootstrap refits' predictions."""

    law: str
    run: str
    predicted: float
    interval: tuple[float, float]
    reached: float


def predict_largest(
    records: Sequence[dict[str, Any]], *, n_boot: int = 200, seed: int = 0
) -> tuple[dict[str, LawFit], list[Prediction]]:
    """Every law fitted to the runs of all but the largest model, and their predictions for its runs: L(N, D)
    for each, L(N) (with and without E) for those trained on the token count the L(N) fits used."""
    largest = max(r["non_embedding_params"] for r in records)
    rest = [r for r in records if r["non_embedding_params"] < largest]
    if not rest:
        return {}, []
    laws = fit_laws(rest, n_boot=n_boot, seed=seed)
    predictions = []
    for r in (r for r in records if r["non_embedding_params"] == largest):
        for name in ("L(N)", "L(N) with E", "L(N, D)"):
            fit = laws[name].fit
            if fit is None or (name != "L(N, D)" and r["tokens"] != rest[laws[name].points[0]]["tokens"]):
                continue
            args = (r["non_embedding_params"], r["tokens"]) if name == "L(N, D)" else (r["non_embedding_params"],)
            samples = fit.predict_refits(*args)
            interval = (
                (float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5)))
                if len(samples) >= 2
                else (float("nan"), float("nan"))
            )
            predictions.append(Prediction(name, r["name"], float(fit.predict(*args)), interval, r["final_eval_loss"]))
    return laws, predictions


__all__ = [
    "Curve",
    "IsoFlop",
    "LawFit",
    "Prediction",
    "compute_frontier_points",
    "fit_isoflop",
    "fit_laws",
    "load_curves",
    "predict_largest",
]
