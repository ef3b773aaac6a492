"""The sweep report's plots, drawn in gptjax.reporting's style and written as PNG (embedded in the HTML
report) and SVG.

One colour per model size throughout, so a size looks the same in every plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullFormatter, NullLocator

from experiments.analysis import Curve, IsoFlop, LawFit
from gptjax.reporting import human, new_axes, plot_style, pm, save_figure, sequential_colours

_HEIGHT = 4.4  # inches; a little taller than gptjax.reporting's default, for the legends inside the axes
_FIT_COLOUR = "#d62728"
_SECOND_FIT_COLOUR = "#555555"


def size_colours(records: Sequence[dict[str, Any]]) -> dict[int, Any]:
    """One colour per non-embedding parameter count, smallest first."""
    return sequential_colours(sorted({r["non_embedding_params"] for r in records}))


def _loglog(ax: Axes, x_ticks: Sequence[float] | None = None) -> None:
    """Log-log axes, called after plotting (ticks come from the data limits). The loss axis spans a narrow
    range, so it gets plain evenly spaced ticks (2.5, 3) rather than decades; `x_ticks` (e.g. the model
    sizes) replace the decades of the x axis, labelled 25.5k rather than 2.55 x 10^4."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ticks = [t for t in MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10]).tick_values(low, high) if low <= t <= high]
    ax.set_yticks(ticks, labels=[f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_locator(NullLocator())
    if x_ticks is not None:
        ax.set_xticks(list(x_ticks), labels=[human(t) for t in x_ticks])
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())


def _span(values: Sequence[float], pad: float = 1.4) -> np.ndarray:
    return np.geomspace(min(values) / pad, max(values) * pad, 200)


def _fit_label(law: LawFit, params: Sequence[str]) -> str:
    """The law's name and the given fitted parameters, e.g. "L(N, D): α = 0.34 ± 0.02, β = 0.28 ± 0.03"."""
    return f"{law.law.name}: {law.describe(params)}"


_MARKERS = "os^Dv<>p"
_LINESTYLES = ("-", "--", ":", "-.")


def _budget_styles(records: Sequence[dict[str, Any]], styles: Sequence[str]) -> dict[int, str]:
    """One style per token budget, the largest budget first (solid lines, circles)."""
    budgets = sorted({r["tokens"] for r in records}, reverse=True)
    return {tokens: styles[i % len(styles)] for i, tokens in enumerate(budgets)}


def _size_handles(records: Sequence[dict[str, Any]], **style: Any) -> list[Line2D]:
    by_size = {r["non_embedding_params"]: r["preset"] for r in records}
    return [
        Line2D([], [], color=colour, label=f"{by_size[size]} ({human(size)})", **style)
        for size, colour in size_colours(records).items()
    ]


def _budget_handles(styles: Mapping[int, str], key: str, **style: Any) -> list[Line2D]:
    """Neutral legend entries for the token budgets (only when there are several, each its own style: an
    IsoFLOP sweep gives every run its own token count, and those styles repeat)."""
    if not 2 <= len(styles) == len(set(styles.values())):
        return []
    return [
        Line2D([], [], color="#777777", label=f"{human(tokens)} tokens", **{key: s}, **style)
        for tokens, s in sorted(styles.items())
    ]


def _legend(ax: Axes, handles: Sequence[Any]) -> None:
    ax.legend(handles=list(handles), loc="best", frameon=True, facecolor="white", edgecolor="none", framealpha=0.9)


def _finish(fig: Figure, ax: Axes, xlabel: str, ylabel: str, title: str, handles: Sequence[Any], stem: Path) -> Path:
    """Label the axes, add the legend and save the figure; returns the PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _legend(ax, handles)
    return save_figure(fig, stem)


def plot_loss_vs_params(records: Sequence[dict[str, Any]], laws: Mapping[str, LawFit], stem: Path) -> Path:
    """Final held-out loss against non-embedding parameters, one marker per token budget, with L(N)."""
    fig, ax = new_axes(_HEIGHT)
    colours = size_colours(records)
    markers = _budget_styles(records, _MARKERS)
    for tokens, marker in markers.items():
        rs = [r for r in records if r["tokens"] == tokens]
        ax.scatter(
            [r["non_embedding_params"] for r in rs],
            [r["final_eval_loss"] for r in rs],
            c=[colours[r["non_embedding_params"]] for r in rs],
            marker=marker,
            s=40,
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
        )
    handles = _budget_handles(markers, "marker", linestyle="", markeredgecolor="black", markersize=6)
    n = _span([r["non_embedding_params"] for r in records], pad=1.25)
    for name, params, colour, style in (
        ("L(N)", ["alpha"], _FIT_COLOUR, "--"),
        ("L(N) with E", ["alpha", "E"], _SECOND_FIT_COLOUR, ":"),
    ):
        law = laws[name]
        if law.fit is not None:
            handles += ax.plot(n, law.fit.predict(n), style, color=colour, linewidth=1.4, label=_fit_label(law, params))
    _loglog(ax, sorted(colours))
    return _finish(
        fig,
        ax,
        "Non-embedding parameters N",
        "Final held-out loss (nats/token)",
        "Loss against model size",
        handles,
        stem,
    )


def plot_loss_vs_compute(
    records: Sequence[dict[str, Any]], curves: Sequence[Curve], laws: Mapping[str, LawFit], stem: Path
) -> Path:
    """Held-out learning curves against training FLOPs, the frontier of final losses, and L(C)."""
    fig, ax = new_axes(_HEIGHT)
    colours = size_colours(records)
    styles = _budget_styles(records, _LINESTYLES)
    for curve in curves:
        r = curve.record
        ax.plot(
            curve.eval_tokens * r["flops_per_token"],
            curve.eval_loss,
            styles[r["tokens"]],
            color=colours[r["non_embedding_params"]],
            linewidth=1.1,
            alpha=0.75,
        )
    law = laws["L(C)"]
    frontier = ax.scatter(
        [records[i]["flops"] for i in law.points],
        [records[i]["final_eval_loss"] for i in law.points],
        s=70,
        facecolors="none",
        edgecolors="black",
        linewidths=1.2,
        zorder=4,
        label="compute frontier (final losses)",
    )
    handles = [*_size_handles(records), *_budget_handles(styles, "linestyle"), frontier]
    if law.fit is not None:
        c = _span([records[i]["flops"] for i in law.points], pad=1.25)
        handles += ax.plot(
            c, law.fit.predict(c), "-", color=_FIT_COLOUR, linewidth=1.4, label=_fit_label(law, ["alpha"])
        )
    _loglog(ax)
    return _finish(fig, ax, "Training FLOPs C", "Held-out loss (nats/token)", "Loss against compute", handles, stem)


def plot_learning_curves(records: Sequence[dict[str, Any]], curves: Sequence[Curve], stem: Path) -> Path:
    """Held-out loss (markers) and training loss (faint) against tokens, one colour per size and one line
    style per token budget (each budget is its own run, with its own learning-rate schedule)."""
    fig, ax = new_axes(_HEIGHT)
    colours = size_colours(records)
    styles = _budget_styles(records, _LINESTYLES)
    for curve in curves:
        r = curve.record
        colour, style = colours[r["non_embedding_params"]], styles[r["tokens"]]
        ax.plot(curve.tokens, curve.loss, style, color=colour, linewidth=0.7, alpha=0.3)
        ax.plot(curve.eval_tokens, curve.eval_loss, style, color=colour, linewidth=1.3, marker="o", markersize=3)
    _loglog(ax)
    return _finish(
        fig,
        ax,
        "Tokens seen",
        "Loss (nats/token)",
        "Learning curves",
        [*_size_handles(records, marker="o", markersize=3), *_budget_handles(styles, "linestyle")],
        stem,
    )


def plot_loss_vs_tokens(records: Sequence[dict[str, Any]], laws: Mapping[str, LawFit], stem: Path) -> Path:
    """Final held-out loss against tokens, one colour per size, with the L(N, D) fit for each size."""
    fig, ax = new_axes(_HEIGHT)
    colours = size_colours(records)
    law = laws["L(N, D)"]
    fit = law.fit
    d = _span([r["tokens"] for r in records], pad=1.25)
    for size, colour in colours.items():
        rs = [r for r in records if r["non_embedding_params"] == size]
        ax.scatter(
            [r["tokens"] for r in rs],
            [r["final_eval_loss"] for r in rs],
            color=colour,
            s=40,
            edgecolors="black",
            linewidths=0.5,
            zorder=3,
        )
        if fit is not None:
            ax.plot(d, fit.predict(np.full_like(d, size), d), "--", color=colour, linewidth=1.1)
    handles = _size_handles(records, marker="o", linestyle="", markeredgecolor="black", markersize=6)
    if fit is not None:
        handles.append(
            Line2D([], [], linestyle="--", color=_SECOND_FIT_COLOUR, label=_fit_label(law, ["alpha", "beta"]))
        )
    _loglog(ax, sorted({r["tokens"] for r in records}))
    return _finish(fig, ax, "Training tokens D", "Final held-out loss (nats/token)", "Loss against data", handles, stem)


def plot_isoflop_profiles(isoflop: IsoFlop, stem: Path) -> Path:
    """Final held-out loss against N at each compute budget, the parabola in log N and its minimum; crosses:
    L(N, D)'s optimum along the same budget (Approach 3)."""
    fig, ax = new_axes(_HEIGHT)
    colours = sequential_colours([p.budget for p in isoflop.profiles])
    handles = []
    for i, profile in enumerate(isoflop.profiles):
        colour = colours[profile.budget]
        fitted = np.array(profile.fitted)
        for runs, face in ((fitted, colour), (~fitted, "none")):
            n_runs, loss = np.array(profile.n)[runs], np.array(profile.loss)[runs]
            ax.scatter(n_runs, loss, s=40, facecolors=face, edgecolors=colour if face == "none" else "black", zorder=3)
        n = _span(profile.window("n"), pad=1.15)
        handles += ax.plot(
            n, np.polyval(profile.coef, np.log(n)), "-", color=colour, label=f"C = {human(profile.budget)}"
        )
        if np.isfinite(profile.n_opt):
            ax.scatter(
                [profile.n_opt], [profile.loss_opt], marker="*", s=160, color=colour, edgecolors="black", zorder=4
            )
        if isoflop.approach3_n_opt:
            n3 = isoflop.approach3_n_opt[i]
            ax.scatter([n3], [np.polyval(profile.coef, np.log(n3))], marker="x", s=60, color="black", zorder=5)
    handles += [
        Line2D(
            [],
            [],
            marker="*",
            linestyle="",
            color="#777777",
            markeredgecolor="black",
            markersize=11,
            label="parabola minimum (Approach 2)",
        ),
        Line2D([], [], marker="x", linestyle="", color="black", label="L(N, D) optimum (Approach 3)"),
        Line2D([], [], marker="o", linestyle="", color="#777777", fillstyle="none", label="outside the parabola's fit"),
    ]
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    return _finish(
        fig, ax, "Non-embedding parameters N", "Final held-out loss (nats/token)", "IsoFLOP profiles", handles, stem
    )


def plot_isoflop_optima(isoflop: IsoFlop, stem: Path) -> Path:
    """N_opt and D_opt against compute: the parabola minima with N_opt = k_N C^a and D_opt = k_D C^b."""
    assert isoflop.fit is not None
    fit = isoflop.fit
    fig, ax = new_axes(_HEIGHT)
    profiles = [p for p in fit.profiles if np.isfinite(p.n_opt)]
    c = _span([p.budget for p in profiles], pad=1.25)
    handles = []
    for key, exponent, values, colour, label in (
        ("k_N", "a", [p.n_opt for p in profiles], _FIT_COLOUR, "N_opt"),
        ("k_D", "b", [p.d_opt for p in profiles], _SECOND_FIT_COLOUR, "D_opt"),
    ):
        ax.scatter([p.budget for p in profiles], values, color=colour, s=40, edgecolors="black", zorder=3)
        power = fit.params[key] * c ** fit.params[exponent]
        handles += ax.plot(
            c,
            power,
            "--",
            color=colour,
            label=f"{label} ∝ C^{exponent}, {exponent} = {pm(fit.params[exponent], fit.stderr[exponent])}",
        )
    if isoflop.approach3_n_opt:
        handles.append(
            ax.scatter(
                [p.budget for p in fit.profiles],
                isoflop.approach3_n_opt,
                marker="x",
                s=60,
                color="black",
                zorder=4,
                label="N_opt of L(N, D) (Approach 3)",
            )
        )
    _loglog(ax)
    return _finish(
        fig,
        ax,
        "Compute budget C (FLOPs)",
        "Parameters N_opt, tokens D_opt",
        "Compute-optimal allocation",
        handles,
        stem,
    )


def draw_plots(
    records: Sequence[dict[str, Any]],
    curves: Sequence[Curve],
    laws: Mapping[str, LawFit],
    plots_dir: Path,
    isoflop: IsoFlop | None = None,
) -> dict[str, Path]:
    """Every plot the records support, by name -> PNG path (loss_vs_tokens needs two token counts, the IsoFLOP
    plots `isoflop`'s profiles and its fit)."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    with plot_style():
        plots = {
            "loss_vs_params": plot_loss_vs_params(records, laws, plots_dir / "loss_vs_params"),
            "loss_vs_compute": plot_loss_vs_compute(records, curves, laws, plots_dir / "loss_vs_compute"),
            "learning_curves": plot_learning_curves(records, curves, plots_dir / "learning_curves"),
        }
        if len({r["tokens"] for r in records}) >= 2:
            plots["loss_vs_tokens"] = plot_loss_vs_tokens(records, laws, plots_dir / "loss_vs_tokens")
        if isoflop is not None and isoflop.profiles:
            plots["isoflop_profiles"] = plot_isoflop_profiles(isoflop, plots_dir / "isoflop_profiles")
        if isoflop is not None and isoflop.fit is not None:
            plots["isoflop_optima"] = plot_isoflop_optima(isoflop, plots_dir / "isoflop_optima")
    return plots


__all__ = [
    "draw_plots",
    "plot_isoflop_optima",
    "plot_isoflop_profiles",
    "plot_learning_curves",
    "plot_loss_vs_compute",
    "plot_loss_vs_params",
    "plot_loss_vs_tokens",
    "size_colours",
]
