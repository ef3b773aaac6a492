"""A sweep directory -> `report/report.md` and a self-contained `report/report.html` (plots embedded).

Everything is recomputed from the run directories: the registry is rebuilt, the laws refitted and the plots
redrawn, so `gptjax sweep --report-only DIR` reflects exactly what is on disk. Few-shot results (runs
trained with `eval_tasks`) get eval/report.py's report in `report/fewshot/`, linked and partly embedded.
Both reports are built from gptjax.reporting's blocks, plot style and number formats.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from etils import epath

from eval.icl.report import icl_section
from eval.report import build_report
from experiments.analysis import IsoFlop, LawFit, Prediction, fit_isoflop, fit_laws, load_curves, predict_largest
from experiments.fits import PROFILE_WINDOW
from experiments.plots import draw_plots
from experiments.registry import finished_run_dirs, rebuild_registry
from experiments.sweep import load_sweep
from gptjax.errors import InputNotFoundError
from gptjax.model import FLOPS_CONVENTION
from gptjax.reporting import Block, Code, Figure, Heading, Link, Table, Text, human, pm, write_report
from gptjax.rundir import PathLike, RunDir, SweepDir, as_path, staged_dir

# ---------------------------------------------------------------------------------------------------------
# Sections.


def _optional(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _runs_table(records: Sequence[dict[str, Any]]) -> Table:
    header = (
        "Run",
        "Params",
        "Non-emb. N",
        "Steps",
        "Tokens D",
        "FLOPs",
        "6ND",
        "Train loss",
        "Held-out loss",
        "Wall s",
        "CPU s",
        "Tokens/s",
        "MFU",
    )
    rows = tuple(
        (
            r["name"],
            f"{r['params']:,}",
            f"{r['non_embedding_params']:,}",
            str(r["steps"]),
            human(r["tokens"]),
            human(r["flops"]),
            human(r["flops_6nd"]),
            f"{r['final_train_loss']:.4f}",
            f"{r['final_eval_loss']:.4f}",
            _optional(r["wall_time_s"], ".1f"),
            _optional(r["cpu_time_s"], ".1f"),
            "—" if r["tokens_per_s"] is None else human(r["tokens_per_s"]),
            _optional(r["mfu"], ".1%"),
        )
        for r in records
    )
    return Table(header, rows, frozenset(range(1, len(header))))


def _summary_section(
    records: Sequence[dict[str, Any]], laws: Mapping[str, LawFit], isoflop: IsoFlop, predictions: Sequence[Prediction]
) -> list[Block]:
    """The study's key numbers in a few lines: what was trained, the fitted exponents with their relative
    bootstrap errors, the compute-optimal allocation, the prediction check, and the time it all took."""
    sizes = sorted({r["non_embedding_params"] for r in records})
    losses = [r["final_eval_loss"] for r in records]
    lines = [
        f"{len(records)} runs of {len(sizes)} sizes, N = {human(sizes[0])}–{human(sizes[-1])} non-embedding "
        f"parameters ({sizes[-1] / sizes[0]:.0f}x), D = {human(min(r['tokens'] for r in records))}–"
        f"{human(max(r['tokens'] for r in records))} tokens; final held-out loss {min(losses):.3f}–"
        f"{max(losses):.3f} nats/token."
    ]
    fit = laws["L(N)"].fit
    if fit is not None:
        alpha, err = fit.params["alpha"], fit.stderr["alpha"]
        lines.append(f"L(N) ({laws['L(N)'].data}): α_N = {pm(alpha, err)} (bootstrap error {err / alpha:.0%}).")
    if laws["L(N, D)"].fit is not None:
        lines.append(f"L(N, D): {laws['L(N, D)'].describe()}.")
    if isoflop.fit is not None:
        a, b = (pm(isoflop.fit.params[k], isoflop.fit.stderr[k]) for k in ("a", "b"))
        lines.append(f"IsoFLOP (Approach 2, {len(isoflop.profiles)} budgets): a = {a}, b = {b}.")
    for p in predictions:
        lines.append(
            f"{p.law} without the largest model predicted {p.predicted:.3f} for {p.run}; it reached "
            f"{p.reached:.3f} ({(p.reached - p.predicted) / p.reached:+.1%})."
        )
    wall = [r["wall_time_s"] for r in records if r["wall_time_s"] is not None]
    cpu = [r["cpu_time_s"] for r in records if r["cpu_time_s"] is not None]
    if wall and cpu:
        lines.append(
            f"Training: {sum(wall):.0f} s of wall time and {sum(cpu):.0f} CPU-s summed over the runs (runs trained "
            "side by side overlap in wall time)."
        )
    return [Heading(2, "Summary"), *(Text(f"- {line}") for line in lines)]


def _laws_section(laws: Mapping[str, LawFit], n_boot: int) -> list[Block]:
    rows = tuple(
        (
            name,
            law.law.formula,
            law.data,
            law.describe(),
            str(len(law.points)),
            f"{law.fit.rms_log_residual:.4f}" if law.fit else "—",
        )
        for name, law in laws.items()
    )
    blocks: list[Block] = [
        Heading(2, "Scaling laws"),
        Text(
            "N is the non-embedding parameter count (Kaplan et al.), D the number of training tokens, C the "
            f"training FLOPs. Values are ± the standard deviation of {n_boot} residual-bootstrap refits, which is "
            "optimistic when a law has barely more points than parameters; the last column is the "
            "root-mean-square residual of log L. L(N) and L(C) are least squares on log L; the laws with E use "
            "Hoffmann et al.'s Huber loss on log L from a grid of initialisations."
        ),
        Table(("Law", "Form", "Fitted to", "Parameters", "Points", "RMS log resid."), rows, frozenset({4, 5})),
    ]
    loose = {
        name: [p for p, v in law.fit.params.items() if not law.fit.stderr[p] < abs(v)]
        for name, law in laws.items()
        if law.fit is not None
    }
    listed = "; ".join(
        f"{name}: {', '.join(laws[name].law.symbol(p) for p in params)}" for name, params in loose.items() if params
    )
    if listed:
        blocks.append(
            Text(
                "Poorly determined (bootstrap error at least the value itself, or no error estimate): "
                f"{listed}. More sizes or token budgets would pin them down."
            )
        )
    if laws["L(N, D)"].fit is not None and not {"alpha", "beta"} & set(loose["L(N, D)"]):
        alpha, beta = (laws["L(N, D)"].fit.params[p] for p in ("alpha", "beta"))
        blocks.append(
            Text(
                f"L(N, D) implies compute-optimal allocation N_opt ∝ C^{beta / (alpha + beta):.2f} and "
                f"D_opt ∝ C^{alpha / (alpha + beta):.2f} (Hoffmann et al.: a = β/(α+β))."
            )
        )
    return blocks


def _interval(low: float, high: float) -> str:
    return "" if math.isnan(low) else f" [95%: {low:.3g}, {high:.3g}]"


def _isoflop_section(isoflop: IsoFlop) -> list[Block]:
    blocks: list[Block] = [Heading(2, "IsoFLOP profiles (Hoffmann et al., Approach 2)")]
    if not isoflop.profiles:
        return [*blocks, Text(f"Not fitted: {isoflop.error}.")]
    a3 = isoflop.approach3_n_opt
    rows = tuple(
        (
            human(p.budget),
            str(len(p.n)),
            f"{human(min(p.n))}–{human(max(p.n))}",
            f"{human(min(p.window('n')))}–{human(max(p.window('n')))}",
            human(p.n_opt) if math.isfinite(p.n_opt) else "no minimum",
            human(p.d_opt) if math.isfinite(p.d_opt) else "—",
            f"{p.loss_opt:.4f}" if math.isfinite(p.loss_opt) else "—",
            "yes" if p.interior else "no (extrapolated)" if math.isfinite(p.n_opt) else "—",
            human(a3[i]) if a3 else "—",
        )
        for i, p in enumerate(isoflop.profiles)
    )
    header = ("Budget C", "Runs", "N trained", "N fitted", "N_opt", "D_opt", "Loss at N_opt", "Inside range")
    header += ("N_opt of L(N, D)",)
    blocks += [
        Text(
            "Each compute budget's runs (one per size, planned at the same FLOPs) are fitted with a parabola of "
            f"the final held-out loss in ln N, over the {2 * PROFILE_WINDOW + 1} sizes nearest the budget's best "
            "run (its expansion about the minimum; a ladder's far ends are not parabolic); its minimum is N_opt, "
            "and D_opt is the token count a run of that size gets at that budget. N_opt ∝ C^a and D_opt ∝ C^b "
            "are least squares in log-log space; ± is the standard deviation, and the brackets the 2.5th–97.5th "
            "percentiles, of the bootstrap refits with each parabola's residuals resampled (a budget with 3 sizes "
            "has none to resample)."
        ),
        Table(header, rows, frozenset({1, 4, 5, 6, 8})),
    ]
    fit = isoflop.fit
    if fit is None:
        blocks.append(Text(f"N_opt ∝ C^a not fitted: {isoflop.error}."))
    else:
        blocks.append(
            Text(
                f"Approach 2: a = {pm(fit.params['a'], fit.stderr['a'])}{_interval(*fit.interval['a'])}, "
                f"b = {pm(fit.params['b'], fit.stderr['b'])}{_interval(*fit.interval['b'])} "
                f"({fit.n_bootstrap} refits)."
            )
        )
    law = isoflop.approach3
    if law is not None and law.fit is not None:
        alloc = isoflop.approach3_allocation()
        versus = f"; the two approaches differ by {abs(alloc['a'][0] - fit.params['a']):.2f} in a" if fit else ""
        blocks.append(
            Text(
                f"Approach 3 on the same {len(law.points)} runs ({law.law.formula}: {law.describe(['alpha', 'beta'])}"
                f") implies a = β/(α+β) = {pm(*alloc['a'])} and b = α/(α+β) = {pm(*alloc['b'])}{versus}. "
                "Hoffmann et al. found a = 0.49 (Approach 2) and 0.46 (Approach 3)."
            )
        )
    elif law is not None:
        blocks.append(Text(f"Approach 3 on the same runs: not fitted: {law.error}."))
    return blocks


def _prediction_section(records: Sequence[dict[str, Any]], predictions: Sequence[Prediction]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Predicted, then measured")]
    largest = max(r["non_embedding_params"] for r in records)
    if not predictions:
        return [
            *blocks,
            Text(
                f"No law could be fitted without the largest model (N = {human(largest)}), so there is no "
                "prediction to check: it needs enough smaller sizes for a law on their own."
            ),
        ]
    rows = tuple(
        (
            p.run,
            p.law,
            f"{p.predicted:.4f}",
            f"{p.interval[0]:.4f}–{p.interval[1]:.4f}" if math.isfinite(p.interval[0]) else "—",
            f"{p.reached:.4f}",
            f"{p.reached - p.predicted:+.4f} ({(p.reached - p.predicted) / p.reached:+.1%})",
        )
        for p in predictions
    )
    return [
        *blocks,
        Text(
            f"The laws were refitted without the runs of the largest model (N = {human(largest)}), as the GPT-4 "
            "report checks predictable scaling; the table gives what they predict for its runs, the 95% range of "
            "the bootstrap refits' predictions, and the held-out loss each run reached."
        ),
        Table(
            ("Run", "Law", "Predicted", "Bootstrap 95%", "Reached", "Reached − predicted"), rows, frozenset({2, 4, 5})
        ),
    ]


# Published constants: (quantity, law and parameter of ours it compares with, Kaplan, Hoffmann, Epoch).
_PUBLISHED = (
    ("α_N (L(N))", ("L(N)", "alpha"), "0.076", "—", "—"),
    ("α_D (L(D))", None, "0.095", "—", "—"),
    ("α_C (L(C_min))", ("L(C)", "alpha"), "0.050", "—", "—"),
    ("E (L(N, D))", ("L(N, D)", "E"), "—", "1.69", "1.82"),
    ("A", ("L(N, D)", "A"), "—", "406.4", "—"),
    ("B", ("L(N, D)", "B"), "—", "410.7", "—"),
    ("α", ("L(N, D)", "alpha"), "—", "0.34", "0.35"),
    ("β", ("L(N, D)", "beta"), "—", "0.28", "0.37"),
)


def _context_section(records: Sequence[dict[str, Any]], laws: Mapping[str, LawFit], isoflop: IsoFlop) -> list[Block]:
    def ours(key: tuple[str, str] | None) -> str:
        fit = laws[key[0]].fit if key else None
        return "—" if fit is None or key is None else pm(fit.params[key[1]], fit.stderr[key[1]])

    rows = [(name, ours(key), kaplan, hoffmann, epoch) for name, key, kaplan, hoffmann, epoch in _PUBLISHED]
    if isoflop.fit is not None:
        fit = isoflop.fit
        rows.append(("a (N_opt ∝ C^a, Approach 2)", pm(fit.params["a"], fit.stderr["a"]), "0.73", "0.49", "—"))
    sizes = sorted({r["non_embedding_params"] for r in records})
    tokens = sorted({r["tokens"] for r in records})
    return [
        Heading(2, "Context: published constants"),
        Table(
            ("Constant", "This sweep", "Kaplan et al. 2020", "Hoffmann et al. 2022", "Epoch refit 2024"),
            tuple(rows),
            frozenset({1, 2, 3, 4}),
        ),
        Text(
            f"What differs. Scale: this sweep spans N = {human(sizes[0])}–{human(sizes[-1])} non-embedding "
            f"parameters and D = {human(tokens[0])}–{human(tokens[-1])} tokens; Kaplan et al. span 768 to 1.5B "
            "parameters and Hoffmann et al. 70M to 16B on 5B to 500B tokens, so exponents fitted here measure "
            "a regime where even the largest model is far from the published fits' range. Tokenizer and corpus: "
            "losses here are nats per token of this sweep's tokenizer on its corpus, while the published laws "
            "are in nats per BPE token of WebText2 (Kaplan) or MassiveText (Hoffmann, Epoch): E, A and B are "
            "not comparable across them, only the exponents are, roughly. Epochs: the published runs see each "
            "token about once; a small corpus is repeated, which flattens L(D) once the model memorises it. "
            "Kaplan et al.'s a = 0.73 comes from runs sharing one learning-rate schedule length across "
            "budgets, which Hoffmann et al. name as the main reason they find about 0.5 instead."
        ),
    ]


_CAPTIONS = {
    "loss_vs_params": "Final held-out loss against non-embedding parameters (log-log); marker shape = token "
    "budget; lines: L(N) fitted at the largest budget.",
    "loss_vs_compute": "Held-out learning curves against training FLOPs, one colour per size; circled: the "
    "compute-efficient frontier of final losses that L(C) is fitted to.",
    "learning_curves": "Training loss (thin) and held-out loss (markers) against tokens seen, one colour per size.",
    "loss_vs_tokens": "Final held-out loss against training tokens, one colour per size; dashed: L(N, D) at each size.",
    "isoflop_profiles": "IsoFLOP profiles: final held-out loss against N at each compute budget, the parabola in "
    "ln N fitted to the sizes around its best run (hollow: runs outside that window) and its minimum (stars); "
    "crosses: the optimum L(N, D) puts along the same budget.",
    "isoflop_optima": "Compute-optimal N_opt and D_opt against the budget: the parabola minima and the power laws "
    "fitted to them; crosses: L(N, D)'s N_opt (Approach 3).",
}


def _fewshot_section(records: Sequence[dict[str, Any]], sweep_dir: epath.Path, out_dir: Path) -> list[Block]:
    paths = [sweep_dir / r["eval_results"] for r in records if r["eval_results"]]
    if not paths:
        return []
    written = build_report(paths, out_dir / "fewshot")
    blocks: list[Block] = [
        Heading(2, "Few-shot evaluation"),
        Text(
            f"{len(paths)} run(s) were evaluated at their last step; eval/report.py's full report (tables, plots "
            "against K and against size) is linked below."
        ),
        Link("Few-shot report", "fewshot/report.md", "fewshot/report.html"),
    ]
    scaling = [
        key
        for key in written
        if key.startswith("plots/")
        and key.endswith(".png")
        and (key == "plots/aggregate.png" or key.startswith("plots/scaling_"))
    ]
    blocks += [
        Figure(
            written[key],
            f"Few-shot {Path(key).stem.removeprefix('scaling_')} against non-embedding "
            "parameters (from the few-shot report).",
        )
        for key in scaling
    ]
    return blocks


def _icl_section(records: Sequence[dict[str, Any]], sweep_dir: epath.Path, out_dir: Path) -> list[Block]:
    """Runs trained with ICL probes (`icl` section): their curves over training (eval/icl/report.py), and
    eval/report.py's report of each run's last probe results in `report/icl/` (against K and size)."""
    run_dirs = [sweep_dir / r["run_dir"] for r in records]
    blocks = icl_section(run_dirs, out_dir / "plots", [r["name"] for r in records])
    finals = [files[-1] for d in run_dirs if (files := RunDir(d).icl_results_files())]
    if finals:
        build_report(finals, out_dir / "icl")
        blocks.append(
            Link(
                "ICL probe report (accuracy against K per size, scores against size)",
                "icl/report.md",
                "icl/report.html",
            )
        )
    return blocks


def build_sweep_report(sweep_dir: PathLike, *, n_boot: int = 200) -> dict[str, epath.Path]:
    """Rebuild the registry, refit, redraw, and write `<sweep_dir>/report/`. Returns the written files by
    their path relative to the report directory ("report.md", "report.html", "plots/<name>.png", ...)."""
    sweep_dir = as_path(sweep_dir)
    layout = SweepDir(sweep_dir)
    if not finished_run_dirs(sweep_dir):
        raise InputNotFoundError(
            f"{sweep_dir} holds no finished runs (looked for {layout.runs_dir}/*/DONE): nothing to report"
        )
    records = rebuild_registry(sweep_dir)
    with staged_dir(layout.report_dir) as out_dir:  # written locally, then uploaded when on gs://
        written = _write_files(sweep_dir, layout, records, out_dir, n_boot)
    return {name: layout.report_dir / name for name in written}


def _write_files(
    sweep_dir: epath.Path, layout: SweepDir, records: list[dict[str, Any]], out_dir: Path, n_boot: int
) -> dict[str, Path]:
    sweep_file = layout.sweep_file
    sweep = load_sweep(sweep_file) if sweep_file.is_file() else None
    budgets = {p.name: p.flops for p in sweep.points if p.flops is not None} if sweep else {}
    laws = fit_laws(records, n_boot=n_boot)
    isoflop = fit_isoflop(records, budgets, laws, n_boot=n_boot)
    _, predictions = predict_largest(records, n_boot=n_boot)
    plots = draw_plots(records, load_curves(sweep_dir, records), laws, out_dir / "plots", isoflop)
    title = f"Scaling sweep: {sweep.name if sweep else sweep_dir.name}"
    blocks: list[Block] = [Heading(1, title)]
    if sweep and sweep.description:
        blocks.append(Text(sweep.description))
    planned = f" of {len(sweep.points)} planned" if sweep else ""
    blocks.append(Text(f"{len(records)} finished run(s){planned} in {sweep_dir}."))
    failures_file = layout.failures_file
    if failures_file.is_file():
        failures = [json.loads(line) for line in failures_file.read_text().splitlines() if line.strip()]
        blocks.append(
            Text("Failed in the last invocation: " + "; ".join(f"{f['name']} ({f['error']})" for f in failures))
        )
    blocks += _summary_section(records, laws, isoflop, predictions)
    blocks += [
        Heading(2, "Runs"),
        _runs_table(records),
        Text(
            f"FLOPs follow gptjax's convention: {FLOPS_CONVENTION} 6ND is Kaplan et al.'s estimate with N "
            "the non-embedding parameters. Tokens/s and MFU are medians over the logged intervals; MFU on "
            "CPU is against a measured matmul peak."
        ),
    ]
    blocks += _laws_section(laws, n_boot)
    blocks += _isoflop_section(isoflop)
    blocks += _prediction_section(records, predictions)
    blocks += _context_section(records, laws, isoflop)
    blocks += [Heading(2, "Plots"), *(Figure(png, _CAPTIONS[name]) for name, png in plots.items())]
    blocks += _fewshot_section(records, sweep_dir, out_dir)
    blocks += _icl_section(records, sweep_dir, out_dir)
    if sweep:
        blocks += [Heading(2, "Sweep file"), Code(sweep.text, language="toml")]

    written = write_report(blocks, out_dir, title)
    for sub in ("fewshot", "icl"):  # the eval reports written beside this one
        written |= {p.relative_to(out_dir).as_posix(): p for p in (out_dir / sub).rglob("*") if p.is_file()}
    return written


__all__ = ["build_sweep_report"]
