"""Scaling-law fits: Kaplan et al.'s power laws and Hoffmann et al.'s (Chinchilla) parametric loss.

- `fit_power_law`: L(x) = (x_c / x)^alpha, a straight line in log-log space, fitted by least squares on
  log L. Kaplan et al. (2020) use it for L(N) with N the non-embedding parameter count, and for L(C_min)
  over the compute frontier (`compute_frontier`).
- `fit_saturating_power_law`: L(x) = E + A / x^alpha, the same with an irreducible loss E.
- `fit_chinchilla`: L(N, D) = E + A / N^alpha + B / D^beta, fitted as Hoffmann et al. (2022, Approach 3):
  the Huber loss (delta 1e-3) between log L and LSE(a - alpha log N, b - beta log D, e) with A = exp(a),
  B = exp(b), E = exp(e), minimised from a grid of initialisations. The paper uses L-BFGS; with at most
  five parameters we use BFGS, its full-memory form, which scipy runs an order of magnitude faster here.

Uncertainty is a residual bootstrap on log L: the fitted log-losses plus resampled residuals (inflated by
sqrt(n / (n - p)) for the p fitted parameters) are refitted, and `stderr` is the standard deviation of the
refitted parameters. With the handful of runs of a sweep, resampling whole runs (the pairs bootstrap) would
often draw fewer distinct model sizes than the law has parameters; resampling residuals never does.
A law needs at least one more point than it has parameters, so there is a residual to resample.

`SCALING_LAWS` names the laws a sweep is analysed with (L(N), L(C), ...), each one of these forms written in
the sweep's variables; it is the one table the analysis, plots and report read them from.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize

from gptjax.errors import GptjaxError

Law = Literal["power_law", "saturating_power_law", "chinchilla"]

# Each form as a formula; the one-variable forms are written in {x}, which a scaling law names (N, C, ...).
FORMULAS: dict[Law, str] = {
    "power_law": "L({x}) = ({x}_c / {x})^α",
    "saturating_power_law": "L({x}) = E + A / {x}^α",
    "chinchilla": "L(N, D) = E + A / N^α + B / D^β",
}
HUBER_DELTA = 1e-3  # Hoffmann et al.'s delta, on residuals of log L
# Hoffmann et al.'s initialisation grid, over (e, a, alpha) and, for L(N, D), also (b, beta).
_GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
_GRID_LOG_COEF = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
_GRID_EXPONENT = (0.0, 0.5, 1.0, 1.5, 2.0)


class FitError(GptjaxError, ValueError):
    """The data cannot determine the law (too few points, non-positive values, mismatched lengths)."""


@dataclass(frozen=True)
class ScalingLaw:
    """A form fitted to named quantities of a sweep, under the name the analysis, plots and report use."""

    name: str  # e.g. "L(N) with E"
    form: Law
    variables: str  # x of a one-variable form (N non-embedding parameters, C training FLOPs), or "N, D"

    @property
    def formula(self) -> str:
        return FORMULAS[self.form].format(x=self.variables)

    def symbol(self, param: str) -> str:
        """How a fitted parameter is written: Greek exponents, and x_c named after the law's variable."""
        return {"alpha": "α", "beta": "β", "x_c": f"{self.variables}_c"}.get(param, param)


SCALING_LAWS: dict[str, ScalingLaw] = {
    law.name: law
    for law in (
        ScalingLaw("L(N)", "power_law", "N"),
        ScalingLaw("L(N) with E", "saturating_power_law", "N"),
        ScalingLaw("L(C)", "power_law", "C"),
        ScalingLaw("L(N, D)", "chinchilla", "N, D"),
    )
}


@dataclass(frozen=True)
class Fit:
    """A fitted law: parameter values and their bootstrap standard errors (NaN when none succeeded)."""

    law: Law
    params: dict[str, float]
    stderr: dict[str, float]
    n_points: int
    n_bootstrap: int  # bootstrap refits that converged
    rms_log_residual: float  # root-mean-square of log L - log L_fit
    refits: tuple[dict[str, float], ...] = ()  # the bootstrap refits' parameters, for derived quantities

    def predict(self, x: np.ndarray | float, d: np.ndarray | float | None = None) -> np.ndarray:
        """The law's loss at x (or at N = x and D = d for the Chinchilla law)."""
        p, x = self.params, np.asarray(x, dtype=float)
        if self.law == "power_law":
            return (p["x_c"] / x) ** p["alpha"]
        if self.law == "saturating_power_law":
            return p["E"] + p["A"] / x ** p["alpha"]
        if d is None:
            raise FitError("the Chinchilla law needs the token count d as well as the parameter count")
        return p["E"] + p["A"] / x ** p["alpha"] + p["B"] / np.asarray(d, dtype=float) ** p["beta"]

    def predict_refits(self, x: np.ndarray | float, d: np.ndarray | float | None = None) -> np.ndarray:
        """`predict` under each bootstrap refit's parameters, one row per refit."""
        return np.array([dataclasses.replace(self, params=refit).predict(x, d) for refit in self.refits])


def _columns(*columns: Sequence[float], names: Sequence[str]) -> list[np.ndarray]:
    arrays = [np.asarray(c, dtype=float).ravel() for c in columns]
    lengths = {name: len(a) for name, a in zip(names, arrays)}
    if len(set(lengths.values())) > 1:
        raise FitError(f"data columns differ in length: {lengths}")
    for name, a in zip(names, arrays):
        bad = a[~(np.isfinite(a) & (a > 0))]
        if bad.size:
            raise FitError(f"{name} must be positive and finite for a log-space fit, got {bad[:5].tolist()}")
    return arrays


def _require(n: int, n_params: int, law: Law, distinct: dict[str, int] | None = None) -> None:
    formula = FORMULAS[law].format(x="x")
    if n < n_params + 1:
        raise FitError(
            f"{formula} needs at least {n_params + 1} points, got {n}: one more than its "
            f"{n_params} parameters, so a residual is left to estimate the uncertainty from"
        )
    for name, count in (distinct or {}).items():
        if count < 2:
            raise FitError(f"{formula} needs at least 2 distinct values of {name}; got {count}")


def _bootstrap(
    fit_log: Callable[[np.ndarray], dict[str, float]],
    log_fitted: np.ndarray,
    residuals: np.ndarray,
    n_params: int,
    n_boot: int,
    seed: int,
) -> list[dict[str, float]]:
    """Refit on log-losses `log_fitted + resampled residuals`; refits that raise are dropped."""
    rng = np.random.default_rng(seed)
    n = len(residuals)
    scaled = residuals * np.sqrt(n / (n - n_params))
    refits = []
    for _ in range(n_boot):
        try:
            refits.append(fit_log(log_fitted + rng.choice(scaled, size=n, replace=True)))
        except FitError:
            continue
    return refits


def _stderr(refits: list[dict[str, float]], names: Sequence[str]) -> dict[str, float]:
    """Standard deviation over the refits: NaN with fewer than two, infinite if any refit diverged (e.g. a
    near-zero exponent sends x_c to infinity)."""
    if len(refits) < 2:
        return {name: float("nan") for name in names}
    values = {name: np.array([r[name] for r in refits]) for name in names}
    return {name: float(np.std(v, ddof=1)) if np.all(np.isfinite(v)) else float("inf") for name, v in values.items()}


# ---------------------------------------------------------------------------------------------------------
# L(x) = (x_c / x)^alpha: log L = alpha log x_c - alpha log x.


def _power_law_params(log_x: np.ndarray, log_loss: np.ndarray) -> dict[str, float]:
    slope, intercept = np.polyfit(log_x, log_loss, 1)
    if slope == 0:
        raise FitError("the loss does not change with x: the power-law exponent is 0 and x_c undefined")
    alpha = -slope
    with np.errstate(over="ignore"):  # a near-flat fit puts x_c beyond float range: inf, flagged by _stderr
        return {"alpha": float(alpha), "x_c": float(np.exp(intercept / alpha))}


def fit_power_law(x: Sequence[float], loss: Sequence[float], *, n_boot: int = 1000, seed: int = 0) -> Fit:
    """L(x) = (x_c / x)^alpha by least squares on log L (Kaplan et al.'s L(N), L(D) and L(C_min))."""
    x_arr, loss_arr = _columns(x, loss, names=("x", "loss"))
    _require(len(x_arr), 2, "power_law", {"x": len(np.unique(x_arr))})
    log_x, log_loss = np.log(x_arr), np.log(loss_arr)
    params = _power_law_params(log_x, log_loss)
    log_fitted = np.polyval(np.polyfit(log_x, log_loss, 1), log_x)
    residuals = log_loss - log_fitted
    refits = _bootstrap(lambda y: _power_law_params(log_x, y), log_fitted, residuals, 2, n_boot, seed)
    rms = float(np.sqrt(np.mean(residuals**2)))
    return Fit("power_law", params, _stderr(refits, params), len(x_arr), len(refits), rms, tuple(refits))


# ---------------------------------------------------------------------------------------------------------
# Sums of power laws in log space: log L_fit = LSE(e, a_1 - alpha_1 log x_1, ...), Huber loss on log L.


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals r and its derivative."""
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
    return value, np.where(small, r, delta * np.sign(r))


def _lse_objective(
    theta: np.ndarray, log_xs: np.ndarray, log_loss: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Sum of Huber losses and its gradient; theta = (e, a_1, alpha_1, a_2, alpha_2, ...), log_xs (k, n)."""
    k = log_xs.shape[0]
    a, alpha = theta[1::2], theta[2::2]
    terms = np.vstack([np.full(log_xs.shape[1], theta[0]), a[:, None] - alpha[:, None] * log_xs])
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    prediction = top + np.log(total)
    weights /= total  # d prediction / d term
    value, dr = _huber(prediction - log_loss, delta)
    grad = np.empty_like(theta)
    grad[0] = dr @ weights[0]
    for i in range(k):
        grad[1 + 2 * i] = dr @ weights[1 + i]
        grad[2 + 2 * i] = -(dr * log_xs[i]) @ weights[1 + i]
    return float(value.sum()), grad


def _lse_grid(k: int) -> np.ndarray:
    """Hoffmann et al.'s grid of initial (e, a_1, alpha_1, ...) for k power-law terms."""
    return np.array([(e, *rest) for e in _GRID_E for rest in itertools.product(*[_GRID_LOG_COEF, _GRID_EXPONENT] * k)])


def _lse_fit(log_xs: np.ndarray, log_loss: np.ndarray, starts: np.ndarray, delta: float) -> np.ndarray:
    """The best of BFGS runs from each start; FitError if none converges to a finite optimum."""
    best: tuple[float, np.ndarray] | None = None
    for start in starts:
        result = optimize.minimize(_lse_objective, start, args=(log_xs, log_loss, delta), jac=True, method="BFGS")
        if np.isfinite(result.fun) and np.all(np.isfinite(result.x)) and (best is None or result.fun < best[0]):
            best = (result.fun, result.x)
    if best is None:
        raise FitError("no initialisation converged to a finite optimum")
    return best[1]


def _lse_params(theta: np.ndarray, names: Sequence[tuple[str, str]]) -> dict[str, float]:
    params = {"E": float(np.exp(theta[0]))}
    for i, (coef, exponent) in enumerate(names):
        params[coef] = float(np.exp(theta[1 + 2 * i]))
        params[exponent] = float(theta[2 + 2 * i])
    return params


def _fit_lse(
    law: Law,
    log_xs: np.ndarray,
    log_loss: np.ndarray,
    names: Sequence[tuple[str, str]],
    max_starts: int,
    n_boot: int,
    seed: int,
    delta: float,
) -> Fit:
    """Fit from the `max_starts` grid points with the lowest objective (all of them if max_starts <= 0);
    bootstrap refits start from the full-data optimum, which is what keeps them cheap."""
    grid = _lse_grid(len(names))
    if 0 < max_starts < len(grid):
        objectives = np.array([_lse_objective(g, log_xs, log_loss, delta)[0] for g in grid])
        grid = grid[np.argsort(objectives, kind="stable")[:max_starts]]
    theta = _lse_fit(log_xs, log_loss, grid, delta)
    params = _lse_params(theta, names)
    terms = np.vstack([np.full(log_xs.shape[1], theta[0]), theta[1::2, None] - theta[2::2, None] * log_xs])
    log_fitted = np.logaddexp.reduce(terms, axis=0)
    residuals = log_loss - log_fitted
    refits = _bootstrap(
        lambda y: _lse_params(_lse_fit(log_xs, y, theta[None], delta), names),
        log_fitted,
        residuals,
        len(theta),
        n_boot,
        seed,
    )
    rms = float(np.sqrt(np.mean(residuals**2)))
    return Fit(law, params, _stderr(refits, params), log_xs.shape[1], len(refits), rms, tuple(refits))


def fit_saturating_power_law(
    x: Sequence[float],
    loss: Sequence[float],
    *,
    max_starts: int = 32,
    n_boot: int = 200,
    seed: int = 0,
    delta: float = HUBER_DELTA,
) -> Fit:
    """L(x) = E + A / x^alpha with Hoffmann et al.'s objective and initialisation grid (see module doc)."""
    x_arr, loss_arr = _columns(x, loss, names=("x", "loss"))
    _require(len(x_arr), 3, "saturating_power_law", {"x": len(np.unique(x_arr))})
    return _fit_lse(
        "saturating_power_law", np.log(x_arr)[None], np.log(loss_arr), [("A", "alpha")], max_starts, n_boot, seed, delta
    )


def fit_chinchilla(
    n: Sequence[float],
    d: Sequence[float],
    loss: Sequence[float],
    *,
    max_starts: int = 64,
    n_boot: int = 200,
    seed: int = 0,
    delta: float = HUBER_DELTA,
) -> Fit:
    """L(N, D) = E + A / N^alpha + B / D^beta as Hoffmann et al. fit it (see module doc).

    The full grid has 4500 initialisations; BFGS starts from the `max_starts` with the lowest objective
    (`max_starts=0` starts from all of them, as the paper does).
    """
    n_arr, d_arr, loss_arr = _columns(n, d, loss, names=("N", "D", "loss"))
    _require(len(n_arr), 5, "chinchilla", {"N": len(np.unique(n_arr)), "D": len(np.unique(d_arr))})
    return _fit_lse(
        "chinchilla",
        np.log(np.vstack([n_arr, d_arr])),
        np.log(loss_arr),
        [("A", "alpha"), ("B", "beta")],
        max_starts,
        n_boot,
        seed,
        delta,
    )


# ---------------------------------------------------------------------------------------------------------
# IsoFLOP profiles (Hoffmann et al., Approach 2): at each compute budget, a parabola of the final loss in
# log N, its minimum N_opt, and D_opt where the budget's runs put it; then N_opt ∝ C^a and D_opt ∝ C^b by
# least squares in log-log space. A parabola is the profile's expansion about its minimum, so it is fitted to
# the runs nearest the budget's best one (PROFILE_WINDOW sizes on each side: Hoffmann et al. train each
# budget's sizes around its optimum, and a ladder spanning decades is far from parabolic at its ends).
# Uncertainty is the residual bootstrap of the module doc applied to each parabola (loss residuals resampled
# within their budget), carried through the minima to a and b; a budget with exactly 3 sizes has no residual,
# so it contributes no spread (and with every budget so, no error).


PROFILE_WINDOW = 2


@dataclass(frozen=True)
class IsoFlopProfile:
    """One budget's runs (by increasing N) and L = c2 (ln N)^2 + c1 ln N + c0 fitted by least squares to
    those within PROFILE_WINDOW sizes of the lowest loss (`fitted`)."""

    budget: float
    n: tuple[float, ...]
    d: tuple[float, ...]
    loss: tuple[float, ...]
    fitted: tuple[bool, ...]
    coef: tuple[float, float, float]  # (c2, c1, c0)
    d_line: tuple[float, float]  # ln D = u ln N + v through the budget's runs (u = -1 when C = 6ND)
    n_opt: float  # exp(-c1 / 2 c2); NaN when the parabola opens downwards (c2 <= 0: no minimum)
    d_opt: float
    loss_opt: float

    @property
    def interior(self) -> bool:
        """The minimum lies within the sizes fitted (outside, it is an extrapolation)."""
        return bool(min(self.window("n")) <= self.n_opt <= max(self.window("n")))

    def window(self, column: str) -> np.ndarray:
        """`column` ("n", "d" or "loss") of the runs the parabola is fitted to."""
        return np.array(getattr(self, column))[list(self.fitted)]

    def d_at(self, n: np.ndarray | float) -> np.ndarray:
        """The tokens a run of size n gets at this budget."""
        u, v = self.d_line
        return np.exp(u * np.log(np.asarray(n, dtype=float)) + v)


@dataclass(frozen=True)
class IsoFlopFit:
    """The profiles, and N_opt = k_N C^a, D_opt = k_D C^b over the budgets with a minimum inside their sizes."""

    profiles: tuple[IsoFlopProfile, ...]
    params: dict[str, float]  # a, k_N, b, k_D
    stderr: dict[str, float]
    interval: dict[str, tuple[float, float]]  # 2.5th and 97.5th percentiles of the bootstrap refits
    n_bootstrap: int


def _profile(
    budget: float, n: np.ndarray, d: np.ndarray, loss: np.ndarray, fitted: np.ndarray | None = None
) -> IsoFlopProfile:
    """The parabola through the `fitted` runs; by default the runs of the 2 * PROFILE_WINDOW + 1 sizes nearest
    in rank to the lowest loss's (shifted inwards at the ends of the ladder)."""
    if fitted is None:
        sizes = np.unique(n)
        best = int(np.searchsorted(sizes, n[np.argmin(loss)]))
        low = min(max(best - PROFILE_WINDOW, 0), max(len(sizes) - 2 * PROFILE_WINDOW - 1, 0))
        fitted = np.isin(n, sizes[low : low + 2 * PROFILE_WINDOW + 1])
    x = np.log(n)
    c2, c1, c0 = (float(c) for c in np.polyfit(x[fitted], loss[fitted], 2))
    u, v = (float(c) for c in np.polyfit(x, np.log(d), 1))
    if c2 > 0:
        x_opt = -c1 / (2 * c2)
        n_opt, d_opt, loss_opt = float(np.exp(x_opt)), float(np.exp(u * x_opt + v)), c0 - c1**2 / (4 * c2)
    else:
        n_opt = d_opt = loss_opt = float("nan")
    return IsoFlopProfile(
        budget,
        tuple(n.tolist()),
        tuple(d.tolist()),
        tuple(loss.tolist()),
        tuple(bool(f) for f in fitted),
        (c2, c1, c0),
        (u, v),
        n_opt,
        d_opt,
        loss_opt,
    )


def _allocation(profiles: Sequence[IsoFlopProfile]) -> dict[str, float]:
    """a, k_N, b, k_D by least squares on ln N_opt, ln D_opt against ln C over the profiles whose minimum lies
    within the sizes trained: a minimum outside them is the parabola's extrapolation, not a measurement."""
    usable = [p for p in profiles if np.isfinite(p.n_opt) and p.interior]
    if len({p.budget for p in usable}) < 2:
        raise FitError(
            f"only {len(usable)} of {len(profiles)} budget(s) have their loss minimum inside the sizes trained; "
            "need 2 (train sizes on both sides of each budget's optimum)"
        )
    log_c = np.log([p.budget for p in usable])
    a, log_k_n = np.polyfit(log_c, np.log([p.n_opt for p in usable]), 1)
    b, log_k_d = np.polyfit(log_c, np.log([p.d_opt for p in usable]), 1)
    return {"a": float(a), "k_N": float(np.exp(log_k_n)), "b": float(b), "k_D": float(np.exp(log_k_d))}


def isoflop_profiles(
    budget: Sequence[float], n: Sequence[float], d: Sequence[float], loss: Sequence[float]
) -> tuple[IsoFlopProfile, ...]:
    """The parabola of each budget's runs, by increasing budget; at least 3 distinct sizes per budget."""
    c, n_arr, d_arr, loss_arr = _columns(budget, n, d, loss, names=("budget", "N", "D", "loss"))
    groups = {float(b): np.flatnonzero(c == b) for b in np.unique(c)}
    for b, idx in groups.items():
        if len(np.unique(n_arr[idx])) < 3:
            raise FitError(
                f"an IsoFLOP parabola needs at least 3 distinct sizes per budget; budget {b:.3g} has "
                f"{len(np.unique(n_arr[idx]))}"
            )
    ordered = {b: idx[np.argsort(n_arr[idx], kind="stable")] for b, idx in groups.items()}
    return tuple(_profile(b, n_arr[i], d_arr[i], loss_arr[i]) for b, i in ordered.items())


def fit_isoflop(
    budget: Sequence[float],
    n: Sequence[float],
    d: Sequence[float],
    loss: Sequence[float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> IsoFlopFit:
    """Hoffmann et al.'s Approach 2 on runs labelled with their compute budget (see the section comment);
    needs at least 3 distinct sizes at each of at least 2 budgets."""
    profiles = isoflop_profiles(budget, n, d, loss)
    if len(profiles) < 2:
        raise FitError(f"N_opt ∝ C^a needs at least 2 compute budgets; got {len(profiles)}")
    params = _allocation(profiles)
    rng = np.random.default_rng(seed)
    fitted = [np.polyval(p.coef, np.log(p.window("n"))) for p in profiles]
    scaled = [
        (p.window("loss") - f) * np.sqrt(len(f) / (len(f) - 3)) if len(f) > 3 else np.zeros_like(f)
        for p, f in zip(profiles, fitted)
    ]
    refits = []
    for _ in range(n_boot):
        resampled = [
            _profile(p.budget, p.window("n"), p.window("d"), f + rng.choice(r, size=len(r)), np.ones(len(f), bool))
            for p, f, r in zip(profiles, fitted, scaled)
        ]
        try:
            refits.append(_allocation(resampled))
        except FitError:
            continue
    interval = {
        name: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if len(refits) >= 2 else (np.nan, np.nan)
        for name in params
        for v in [np.array([r[name] for r in refits])]
    }
    return IsoFlopFit(profiles, params, _stderr(refits, params), interval, len(refits))


def chinchilla_allocation(fit: Fit) -> dict[str, float]:
    """The exponents L(N, D) implies for C ∝ N D (Hoffmann et al.): a = β / (α + β), b = α / (α + β)."""
    alpha, beta = fit.params["alpha"], fit.params["beta"]
    return {"a": beta / (alpha + beta), "b": alpha / (alpha + beta)}


def chinchilla_n_opt(fit: Fit, profile: IsoFlopProfile) -> float:
    """The N minimising L(N, D) along the budget's runs (D = profile.d_at(N)), searched over 6 decades of N
    around the sizes trained."""
    low, high = np.log(min(profile.n)) - 3 * np.log(10), np.log(max(profile.n)) + 3 * np.log(10)
    result = optimize.minimize_scalar(
        lambda x: float(fit.predict(np.exp(x), profile.d_at(np.exp(x)))), bounds=(low, high), method="bounded"
    )
    return float(np.exp(result.x))


def compute_frontier(compute: Sequence[float], loss: Sequence[float]) -> np.ndarray:
    """Indices of the points no other point beats with less or equal compute, by increasing compute
    (Kaplan et al.'s compute-efficient frontier)."""
    c, losses = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    if c.shape != losses.shape:
        raise FitError(f"compute and loss differ in length: {c.size} vs {losses.size}")
    frontier, best = [], np.inf
    for i in np.lexsort((losses, c)):  # by compute, ties by loss
        if losses[i] < best:
            frontier.append(i)
            best = losses[i]
    return np.array(frontier, dtype=int)


__all__ = [
    "FORMULAS",
    "HUBER_DELTA",
    "SCALING_LAWS",
    "Fit",
    "FitError",
    "IsoFlopFit",
    "IsoFlopProfile",
    "ScalingLaw",
    "chinchilla_allocation",
    "chinchilla_n_opt",
    "compute_frontier",
    "fit_chinchilla",
    "fit_isoflop",
    "fit_power_law",
    "fit_saturating_power_law",
    "isoflop_profiles",
]
