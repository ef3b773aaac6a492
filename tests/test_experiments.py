"""experiments/: scaling-law fits on synthetic data, sweep files, and a micro sweep run end to end."""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from experiments import analysis, fits, runner
from experiments.cli import sweep_command
from experiments.registry import RECORD_FIELDS, read_registry, rebuild_registry
from experiments.report import build_sweep_report
from experiments.runner import SweepIncomplete, run_sweep
from experiments.sweep import SweepFileError, embedded_sweeps, load_sweep
from gptjax import cli as gptjax_cli
from gptjax import model
from gptjax.config import get_preset
from gptjax.reporting import human, pm
from gptjax.rundir import SweepDir

# ---------------------------------------------------------------------------------------------------------
# Fits: parameters are recovered within a tolerance set by the noise, through the linearised standard error
# sigma * sqrt(diag((J^T J)^-1)) of log L at the true parameters (J = d log L / d theta).

SIGMA = 0.01  # multiplicative noise: log L + N(0, SIGMA)


def _linearised_stderr(law, theta: list[float], sigma: float) -> np.ndarray:
    base = np.log(law(np.array(theta)))
    columns = []
    for i in range(len(theta)):
        shifted = np.array(theta, dtype=float)
        step = 1e-6 * max(1.0, abs(shifted[i]))
        shifted[i] += step
        columns.append((np.log(law(shifted)) - base) / step)
    jacobian = np.array(columns).T
    return sigma * np.sqrt(np.diag(np.linalg.inv(jacobian.T @ jacobian)))


def _noisy(loss: np.ndarray, seed: int) -> np.ndarray:
    return loss * np.exp(np.random.default_rng(seed).normal(0.0, SIGMA, loss.shape))


def test_power_law_recovers_kaplan_exponent():
    n = np.logspace(4, 8, 8)
    alpha, n_c = 0.076, 8.8e13  # Kaplan et al.'s L(N)
    fit = fits.fit_power_law(n, _noisy((n_c / n) ** alpha, seed=1), n_boot=500)
    # Least squares on log L = alpha log N_c - alpha log N: the slope's standard error in closed form.
    se = SIGMA / np.sqrt(np.sum((np.log(n) - np.log(n).mean()) ** 2))
    assert abs(fit.params["alpha"] - alpha) < 4 * se
    assert 0.4 * se < fit.stderr["alpha"] < 2.5 * se
    assert fit.n_points == 8 and fit.n_bootstrap == 500
    np.testing.assert_allclose(fit.predict(n), (fit.params["x_c"] / n) ** fit.params["alpha"])


def test_saturating_power_law_recovers_parameters():
    n = np.logspace(4, 8, 10)
    truth = [1.7, 400.0, 0.34]
    law = lambda t: t[0] + t[1] / n ** t[2]  # noqa: E731
    fit = fits.fit_saturating_power_law(n, _noisy(law(truth), seed=2), n_boot=40)
    se = _linearised_stderr(law, truth, SIGMA)
    # Huber loss with delta 1e-3 << SIGMA is nearly least absolute deviations: ~1.25x least squares' error.
    for (name, value), s in zip(zip(("E", "A", "alpha"), truth), se):
        assert abs(fit.params[name] - value) < 5 * s, (name, fit.params[name], value, s)
    assert 0.3 * se[2] < fit.stderr["alpha"] < 3 * se[2]


def test_chinchilla_recovers_exponents():
    n, d = (a.ravel() for a in np.meshgrid(np.logspace(5, 9, 5), np.logspace(7, 11, 5)))
    truth = [1.69, 406.4, 0.34, 410.7, 0.28]  # Hoffmann et al.'s fitted values
    law = lambda t: t[0] + t[1] / n ** t[2] + t[3] / d ** t[4]  # noqa: E731
    fit = fits.fit_chinchilla(n, d, _noisy(law(truth), seed=3), n_boot=20)
    se = _linearised_stderr(law, truth, SIGMA)
    assert abs(fit.params["alpha"] - 0.34) < 5 * se[2]
    assert abs(fit.params["beta"] - 0.28) < 5 * se[4]
    assert 0.3 * se[2] < fit.stderr["alpha"] < 3 * se[2]
    np.testing.assert_allclose(fit.predict(n, d), law([fit.params[k] for k in ("E", "A", "alpha", "B", "beta")]))


CHINCHILLA = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}  # Hoffmann et al.'s fit


def _chinchilla_n_opt(c: float) -> float:
    """The true optimum of CHINCHILLA at C = 6ND: G (C / 6)^a, G = (alpha A / beta B)^(1 / (alpha + beta))."""
    p = CHINCHILLA
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    return g * (c / 6) ** (p["beta"] / (p["alpha"] + p["beta"]))


def test_isoflop_profiles_recover_the_planted_optimum():
    # 4 budgets x 9 sizes over 2 decades, centred 0.1 decade off the true optimum (a grid never is centred),
    # noise 0.005 nats on losses near 2.5.
    rows = []
    for c in (1e18, 1e19, 1e20, 1e21):
        for n in _chinchilla_n_opt(c) * np.logspace(-0.9, 1.1, 9):
            d = c / (6 * n)
            rows.append((c, n, d, fits.Fit("chinchilla", CHINCHILLA, {}, 0, 0, 0.0).predict(n, d)))
    c, n, d, loss = map(np.array, zip(*rows))
    loss = loss + np.random.default_rng(4).normal(0.0, 0.005, loss.shape)
    fit = fits.fit_isoflop(c, n, d, loss, n_boot=200)
    a_true = CHINCHILLA["beta"] / (CHINCHILLA["alpha"] + CHINCHILLA["beta"])
    assert abs(fit.params["a"] - a_true) < 0.03 and abs(fit.params["b"] - (1 - a_true)) < 0.03
    assert fit.params["a"] + fit.params["b"] == pytest.approx(1.0)  # D = C / 6N at every budget
    assert 0 < fit.stderr["a"] < 0.03 and fit.interval["a"][0] < fit.params["a"] < fit.interval["a"][1]
    # A parabola is the profile's second-order expansion; 0.1 decade off centre its minimum moves by a few
    # percent (measured: at most 4.3% here), so the stated tolerance is 10% in N.
    for profile in fit.profiles:
        assert profile.interior and abs(np.log(profile.n_opt / _chinchilla_n_opt(profile.budget))) < 0.1
        assert profile.d_opt == pytest.approx(profile.budget / (6 * profile.n_opt))
    # Approach 3 on the same runs finds the same allocation.
    law = fits.fit_chinchilla(n, d, loss, n_boot=5)
    assert abs(fits.chinchilla_allocation(law)["a"] - a_true) < 0.03
    for profile in fit.profiles:
        assert abs(np.log(fits.chinchilla_n_opt(law, profile) / _chinchilla_n_opt(profile.budget))) < 0.1


def test_approach_2_refuses_minima_outside_the_sizes_trained():
    """A budget whose sizes all lie on one side of its optimum gives a parabola whose minimum is an
    extrapolation: N_opt ∝ C^a is fitted from the budgets that bracket their optimum, or not at all."""
    law, rows = fits.Fit("chinchilla", CHINCHILLA, {}, 0, 0, 0.0), []
    for c, offsets in ((1e19, np.logspace(-0.9, 1.1, 9)), (1e20, np.logspace(0.5, 2.0, 6))):
        rows += [(c, n, c / (6 * n)) for n in _chinchilla_n_opt(c) * offsets]
    c, n, d = map(np.array, zip(*rows))
    profiles = fits.isoflop_profiles(c, n, d, law.predict(n, d))
    assert [p.interior for p in profiles] == [True, False]
    with pytest.raises(fits.FitError, match="only 1 of 2 budget.s. have their loss minimum inside the sizes"):
        fits.fit_isoflop(c, n, d, law.predict(n, d), n_boot=5)


def test_isoflop_parabola_is_fitted_around_the_best_run():
    """A ladder's far end rises much faster than a parabola (tiny budgets give big models a few steps): the
    profile is fitted to the 5 sizes around its lowest loss only, and so finds the exact minimum of an
    exactly parabolic neighbourhood, where a fit to every size would not."""
    n = 1e4 * np.logspace(-1.0, 1.5, 11)  # runs given out of order: profiles sort them by N
    loss = 2.0 + 0.05 * np.log(n / 2e4) ** 2 + np.where(n > 1e5, np.log(n / 1e5) ** 3, 0.0)
    order = np.random.default_rng(0).permutation(len(n))
    (profile,) = fits.isoflop_profiles([1e15] * len(n), n[order], 1e15 / (6 * n[order]), loss[order])
    assert profile.n == tuple(np.sort(n)) and sum(profile.fitted) == 5
    assert profile.fitted == tuple(abs(np.log10(np.sort(n) / 2e4)) < 0.6)  # the 5 sizes nearest 2e4
    assert profile.interior and profile.n_opt == pytest.approx(2e4, rel=1e-9)
    everything = np.polyfit(np.log(n), loss, 2)
    assert abs(np.log(np.exp(-everything[1] / (2 * everything[0])) / 2e4)) > 0.5  # the whole ladder's parabola


def _synthetic_records(budgets: list[float], sizes: list[float], noise: float, seed: int) -> list[dict]:
    """Registry-like records of runs at each budget and size, final losses from CHINCHILLA plus noise."""
    rng, law, records = np.random.default_rng(seed), fits.Fit("chinchilla", CHINCHILLA, {}, 0, 0, 0.0), []
    for c in budgets:
        for n in sizes:
            d = c / (6 * n)
            loss = float(law.predict(n, d)) + rng.normal(0.0, noise)
            records.append(
                {"name": f"{n:g}_{c:g}", "non_embedding_params": n, "tokens": d, "flops": c, "final_eval_loss": loss}
            )
    return records


def test_the_largest_model_is_predicted_by_fits_made_without_it():
    sizes = [1e7, 3e7, 1e8, 3e8, 1e9]
    records = _synthetic_records([1e19, 1e20, 1e21], sizes, noise=0.002, seed=5)
    truth = {r["name"]: r["final_eval_loss"] for r in records}
    for r in records:
        if r["non_embedding_params"] == sizes[-1]:
            r["final_eval_loss"] += 0.1  # what it reached is off the law: a fit that saw it would bend to it
    laws, predictions = analysis.predict_largest(records, n_boot=20)
    assert laws["L(N, D)"].fit.n_points == 12 and len(predictions) == 3
    for p in predictions:
        assert p.law == "L(N, D)" and p.run.startswith("1e+09_")
        assert abs(p.predicted - truth[p.run]) < 0.02 and p.reached == pytest.approx(truth[p.run] + 0.1)
        assert p.interval[0] <= p.predicted <= p.interval[1]

    budgets = {r["name"]: r["flops"] for r in records}
    all_laws = analysis.fit_laws(records, n_boot=5)
    isoflop = analysis.fit_isoflop(records, budgets, all_laws, n_boot=20)
    assert isoflop.fit is not None and len(isoflop.fit.profiles) == 3 and isoflop.approach3.fit.n_points == 15
    assert len(isoflop.approach3_n_opt) == 3 and set(isoflop.approach3_allocation()) == {"a", "b"}
    none = analysis.fit_isoflop(records, {}, all_laws)
    assert none.fit is None and "no compute budgets" in none.error


def test_l_of_n_is_fitted_at_the_token_count_most_sizes_share():
    sizes = [1e7, 3e7, 1e8]
    budgeted = _synthetic_records([1e19, 1e20], sizes, noise=0.0, seed=0)  # each run its own token count
    law = fits.Fit("chinchilla", CHINCHILLA, {}, 0, 0, 0.0)
    fixed = [
        {"name": f"{n:g}_1e9tok", "non_embedding_params": n, "tokens": 10**9, "flops": 6e9 * n}
        | {"final_eval_loss": float(law.predict(n, 1e9))}
        for n in sizes
    ]
    records = budgeted + fixed
    laws = analysis.fit_laws(records, n_boot=5)
    assert [records[i]["name"] for i in laws["L(N)"].points] == [r["name"] for r in fixed]
    assert "trained on 1,000,000,000 tokens" in laws["L(N)"].data


def test_isoflop_needs_three_sizes_per_budget_and_two_budgets():
    with pytest.raises(fits.FitError, match="at least 3 distinct sizes per budget; budget 1e\\+18 has 2"):
        fits.fit_isoflop([1e18] * 2 + [1e19] * 3, [1, 2, 1, 2, 3], [1] * 5, [3.0] * 5)
    with pytest.raises(fits.FitError, match="at least 2 compute budgets; got 1"):
        fits.fit_isoflop([1e18] * 3, [1, 2, 3], [3, 2, 1], [3.0, 2.0, 3.0])
    with pytest.raises(fits.FitError, match="only 1 of 2 budget\\(s\\) have their loss minimum inside"):
        fits.fit_isoflop([1e18] * 3 + [1e19] * 3, [1, 2, 3] * 2, [3, 2, 1] * 2, [3.0, 2.0, 3.0, 2.0, 3.0, 2.0])


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: fits.fit_power_law([1e4, 1e5], [3.0, 2.5]), "needs at least 3 points, got 2"),
        (lambda: fits.fit_power_law([1e4, 1e4, 1e4], [3.0, 2.9, 3.1]), "at least 2 distinct values of x"),
        (lambda: fits.fit_saturating_power_law([1e4, 1e5, 1e6], [3.0, 2.5, 2.2]), "needs at least 4 points, got 3"),
        (
            lambda: fits.fit_chinchilla([1e4] * 3 + [1e5] * 2, [1e6, 1e7] * 2 + [1e8], [3.0] * 5),
            "needs at least 6 points, got 5",
        ),
        (
            lambda: fits.fit_chinchilla([1e4, 1e5, 1e6] * 2, [1e6] * 6, [3.0, 2.5, 2.2] * 2),
            "at least 2 distinct values of D",
        ),
        (lambda: fits.fit_power_law([1e4, 1e5, 1e6], [3.0, -1.0, 2.0]), "loss must be positive and finite"),
        (lambda: fits.fit_power_law([1e4, 1e5, 1e6], [3.0, 2.0]), "differ in length"),
    ],
)
def test_fits_reject_data_that_cannot_determine_the_law(call, message):
    with pytest.raises(fits.FitError, match=re.escape(message)):
        call()


def test_scaling_laws_are_one_table_of_forms_in_named_variables():
    laws = fits.SCALING_LAWS
    assert list(laws) == ["L(N)", "L(N) with E", "L(C)", "L(N, D)"]
    assert laws["L(C)"].formula == "L(C) = (C_c / C)^α" and laws["L(C)"].symbol("x_c") == "C_c"
    assert laws["L(N) with E"].formula == "L(N) = E + A / N^α" and laws["L(N)"].symbol("alpha") == "α"
    assert laws["L(N, D)"].formula == fits.FORMULAS["chinchilla"] == "L(N, D) = E + A / N^α + B / D^β"


def test_fitted_values_are_written_with_the_digits_their_error_supports():
    assert pm(0.0762, 0.0021) == "0.0762 ± 0.0021" and pm(406.4, 19.0) == "406 ± 19"
    assert pm(2.5, float("nan")) == "2.5" and pm(8.8e13, 1e13) == "8.8e+13 ± 1e+13"
    assert (human(25472), human(6.3e11), human(768)) == ("25.5k", "630G", "768")


def test_compute_frontier_keeps_points_nothing_cheaper_beats():
    compute = [1.0, 2.0, 2.0, 3.0, 4.0, 5.0]
    loss = [3.0, 2.8, 2.5, 2.6, 2.4, 2.4]
    assert fits.compute_frontier(compute, loss).tolist() == [0, 2, 4]


# ---------------------------------------------------------------------------------------------------------
# Sweep files and the command's start-up.


def test_commands_start_without_tensorflow_notices_and_keep_other_output(tmp_path, monkeypatch, capfd):
    """gptjax/cli.py imports a command's modules with TensorFlow's CPU-machine notices (as TensorFlow 2.21
    prints them) filtered out of file descriptor 2, and every other line kept, also when the import fails."""
    notices = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796140130.2 8655 port.cc:153] oneDNN custom operations are on. You may see ...\n"
        "I0000 00:00:1796140130.2 8655 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU ...\n"
        "E0000 00:00:1796140139.2 8655 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
    )
    for name, tail in (("noisy_ok", ""), ("noisy_bad", "raise ImportError('broken')\n")):
        (tmp_path / f"{name}.py").write_text(
            f"import os\nos.write(2, {notices + 'a real warning' + chr(10)!r}.encode())\n{tail}"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert gptjax_cli.import_quietly("noisy_ok").__name__ == "noisy_ok"
    assert capfd.readouterr().err == "a real warning\n"
    with pytest.raises(ImportError, match="broken"):
        gptjax_cli.import_quietly("noisy_bad")
    assert capfd.readouterr().err == "a real warning\n"


def _write_sweep(path: Path, presets: list[str], steps: list[int], cache: Path) -> Path:
    path.write_text(
        f'name = "micro"\n[base]\nbatch_size = 8\nseq_len = 32\noptim.warmup_steps = 1\n'
        f"logging.every = 1\nheld_out = {{ every = 100, batches = 1 }}\ncheckpoint.every = 100\n"
        f'data.cache_dir = "{cache}"\n'
        f"[axes]\npresets = {json.dumps(presets)}\nsteps = {json.dumps(steps)}\n"
    )
    return path


def test_sweep_file_points_and_token_budgets(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        "[base]\nbatch_size = 8\nseq_len = 32\noptim.warmup_steps = 1\n"
        '[axes]\npresets = ["tiny-25k", "tiny-80k"]\ntokens = [1000, 2.56e3]\nseeds = [0, 3]\n'
    )
    sweep = load_sweep(path)
    assert sweep.name == "s"
    assert [p.name for p in sweep.points][:4] == [
        "tiny-25k_1ktok_seed0",
        "tiny-25k_1ktok_seed3",
        "tiny-25k_2.56ktok_seed0",
        "tiny-25k_2.56ktok_seed3",
    ]
    run = sweep.points[2].run_config(sweep, tmp_path / "run")
    assert (run.steps, run.seed, run.model.name) == (10, 0, "tiny-25k")  # ceil(2560 / (8 * 32))
    assert len(load_sweep(embedded_sweeps()["tiny_ladder"]).points) == 8


def test_sweep_file_compute_budgets_give_each_size_its_steps(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        "[base]\nbatch_size = 8\nseq_len = 32\noptim.warmup_steps = 1\n"
        '[axes]\npresets = ["tiny-25k", "tiny-200k"]\nflops = [3e9]\n'
    )
    points = load_sweep(path).points
    assert [p.name for p in points] == ["tiny-25k_3e9flops_seed0", "tiny-200k_3e9flops_seed0"]
    for point in points:
        run = point.run_config(load_sweep(path), tmp_path / "run")
        per_step = model.flops_per_token(run.model, 32) * 8 * 32
        assert run.steps == round(3e9 / per_step) and abs(run.steps * per_step - 3e9) <= per_step / 2


def test_per_preset_and_per_length_tables_refine_base_on_mixed_length_axes(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        "[base]\nbatch_size = 8\nseq_len = 32\noptim = { warmup_steps = 1, learning_rate = 3e-3 }\n"
        '[axes]\npresets = ["tiny-25k", "tiny-200k"]\ntokens = [2560]\nflops = [3e9]\n'
        "[per_preset.tiny-200k]\noptim.learning_rate = 1e-3\nbatch_size = 16\n"
        '[per_length."2.56ktok"]\nfewshot.tasks = ["copa"]\n'
    )
    sweep = load_sweep(path)
    names = [
        "tiny-25k_2.56ktok_seed0",
        "tiny-25k_3e9flops_seed0",
        "tiny-200k_2.56ktok_seed0",
        "tiny-200k_3e9flops_seed0",
    ]
    assert [p.name for p in sweep.points] == names
    runs = [p.run_config(sweep, tmp_path / "run") for p in sweep.points]
    assert [r.optim.learning_rate for r in runs] == [3e-3, 3e-3, 1e-3, 1e-3]  # [base] keeps its other optim keys
    assert [r.optim.warmup_steps for r in runs] == [1] * 4 and [r.batch_size for r in runs] == [8, 8, 16, 16]
    assert [r.fewshot.tasks for r in runs] == [("copa",), (), ("copa",), ()]
    assert (runs[0].steps, runs[2].steps) == (10, 5)  # ceil(2560 / (B * 32)): each size's own batch B
    per_step = model.flops_per_token(runs[3].model, 32) * 16 * 32
    assert runs[3].steps == round(3e9 / per_step)


def test_default_study_follows_its_documented_rules():
    """scaling_study.toml: >= 6 sizes over >= 30x, all >= 2 layers, lr(N) = 3e-3 (N / 25k)^(-1/4) to two
    digits, IsoFLOP budgets at every size, and the few-shot and ICL evaluations on the fixed-data runs."""
    sweep = load_sweep(embedded_sweeps()["scaling_study"])
    presets = list(dict.fromkeys(p.preset for p in sweep.points))
    sizes = [model.param_count(get_preset(p)).non_embedding for p in presets]
    assert len(presets) >= 6 and sizes == sorted(sizes) and sizes[-1] / sizes[0] >= 30
    assert min(get_preset(p).n_layer for p in presets) >= 2
    for point in sweep.points:
        run = point.run_config(sweep, Path("run"))
        n = model.param_count(run.model).non_embedding
        assert run.optim.learning_rate == float(f"{3e-3 * (n / 25e3) ** -0.25:.2g}"), point.name
        assert bool(run.fewshot.tasks) == bool(run.icl.probes) == (point.tokens is not None)
    assert len({p.flops for p in sweep.points if p.flops}) >= 3


@pytest.mark.parametrize(
    "text,message",
    [
        ('[axes]\npresets = ["tiny-25k"]\n', "at least one of steps, tokens and flops"),
        (
            '[axes]\npresets = ["tiny-25k"]\nstep = [5]\n',
            "unknown key(s) step; valid keys: flops, presets, seeds, steps, tokens",
        ),
        ('[base]\nsteps = 5\n[axes]\npresets = ["tiny-25k"]\nsteps = [5]\n', "sets steps, which the sweep"),
        ('[base]\noptim.lr = 1\n[axes]\npresets = ["tiny-25k"]\nsteps = [5]\n', "unknown config key 'optim.lr'"),
        (
            '[base]\nbatch_size = "8"\n[axes]\npresets = ["tiny-25k"]\nsteps = [5]\n',
            "batch_size='8' is not a valid int",
        ),
        ('[axes]\npresets = ["tiny-25k"]\nsteps = [0, 5]\n', "steps must be positive, got [0]"),
        ("[axes]\nsteps = [5]\n", "name the model(s)"),
        (
            '[axes]\npresets = ["tiny-25k"]\nsteps = [5]\n[per_preset.tiny-80k]\nbatch_size = 4\n',
            "[per_preset] names tiny-80k, not among tiny-25k",
        ),
        ('[axes]\npresets = ["tiny-25k"]\nsteps = [5]\n[per_length.5steps]\nsteps = 4\n', "sets steps, which"),
        (
            '[axes]\npresets = ["tiny-25k"]\nsteps = [5]\n[per_length.5steps]\noptim.lr = 1\n',
            "[per_length.'5steps']: unknown config key 'optim.lr'",
        ),
    ],
)
def test_bad_sweep_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SweepFileError) as err:
        load_sweep(path)
    assert message in str(err.value) and str(path) in str(err.value)


# ---------------------------------------------------------------------------------------------------------
# The runner, registry and report on a micro sweep: 2 tiny models x 3 steps, and between them a point whose
# preset does not exist (so one training pass shows both the good points and the failure). Batch 8, not 4:
# the test process has 8 emulated devices, and a batch must split over all of them.

GOOD = ["tiny-25k_3steps_seed0", "tiny-80k_3steps_seed0"]
BAD = "tiny-bogus_3steps_seed0"


@dataclass(frozen=True)
class Micro:
    sweep_dir: Path
    good_file: Path  # the two good points
    bad_file: Path  # the good points and the bad one
    error: SweepIncomplete


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Micro:
    root = tmp_path_factory.mktemp("micro")
    cache = root / "data_cache"
    good = _write_sweep(root / "good.toml", ["tiny-25k", "tiny-80k"], [3], cache)
    bad = _write_sweep(root / "bad.toml", ["tiny-25k", "tiny-bogus", "tiny-80k"], [3], cache)
    with pytest.raises(SweepIncomplete) as err:
        run_sweep(bad, root / "sweep", progress=False)
    return Micro(root / "sweep", good, bad, err.value)


def test_micro_sweep_writes_runs_registry_and_report(micro):
    sweep_dir = micro.sweep_dir
    assert micro.error.result.trained == GOOD and not micro.error.result.skipped
    records = read_registry(sweep_dir)
    assert [r["name"] for r in records] == GOOD
    for record in records:
        assert set(record) == set(RECORD_FIELDS)
        cfg = get_preset(record["preset"])
        counts = model.param_count(cfg)
        assert (record["params"], record["non_embedding_params"]) == (counts.total, counts.non_embedding)
        assert record["tokens"] == 3 * 8 * 32 and record["steps"] == 3
        assert record["flops"] == pytest.approx(record["tokens"] * model.flops_per_token(cfg, 32))
        assert record["flops_6nd"] == 6 * counts.non_embedding * record["tokens"]
        assert math.isfinite(record["final_eval_loss"]) and math.isfinite(record["final_train_loss"])
        assert record["wall_time_s"] > 0 and record["tokens_per_s"] > 0 and record["mfu"] > 0
        assert (sweep_dir / record["run_dir"] / "DONE").exists() and record["eval_results"] is None
    assert rebuild_registry(sweep_dir) == records  # derived from the run directories alone

    report = sweep_dir / "report"
    markdown = (report / "report.md").read_text()
    assert "tiny-80k_3steps_seed0" in markdown
    assert "not fitted" in markdown and "needs at least 3 points, got 2" in markdown  # 2 sizes: no L(N) yet
    assert (report / "plots" / "loss_vs_params.png").stat().st_size > 0
    assert "data:image/png;base64," in (report / "report.html").read_text()


def test_a_bad_point_fails_alone_and_is_named(micro, capsys):
    assert micro.error.result.failed.keys() == {BAD}  # and the points after it still ran (test above)
    assert f"1 of 3 points failed: {BAD} (ConfigError: unknown preset 'tiny-bogus'" in str(micro.error)
    failure = json.loads(SweepDir(micro.sweep_dir).failures_file.read_text())
    assert failure["name"] == BAD and "Traceback" in failure["traceback"]
    assert f"Failed in the last invocation: {BAD}" in (micro.sweep_dir / "report" / "report.md").read_text()

    # The command line exits non-zero naming the point (the good ones are done, so nothing trains).
    assert sweep_command([str(micro.bad_file), "--out", str(micro.sweep_dir), "--no-progress", "--workers", "1"]) == 1
    assert f"1 of 3 points failed: {BAD}" in capsys.readouterr().err
    assert sweep_command(["--report-only", str(micro.sweep_dir)]) == 0
    assert "report.html" in capsys.readouterr().out


def test_rerun_skips_done_points_and_resumes_unfinished_ones(micro, monkeypatch, capsys):
    metrics = micro.sweep_dir / "runs" / GOOD[0] / "metrics.jsonl"
    before = metrics.read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    with monkeypatch.context() as patch:
        patch.setattr(runner, "Trainer", no_training)
        again = run_sweep(micro.good_file, micro.sweep_dir, progress=False, report=False)
    assert again.skipped == GOOD and not again.trained
    assert metrics.read_text() == before
    assert not SweepDir(micro.sweep_dir).failures_file.exists()  # it lists the last invocation's failures only

    # An interrupted point (no DONE yet) resumes from its checkpoint instead of starting over.
    (micro.sweep_dir / "runs" / GOOD[1] / "DONE").unlink()
    resumed = run_sweep(micro.good_file, micro.sweep_dir, progress=False, report=False)
    assert resumed.trained == [GOOD[1]]
    assert "resuming at step 3 of 3" in capsys.readouterr().err
    assert len(read_registry(micro.sweep_dir)) == 2


def test_changed_sweep_file_is_not_mixed_with_finished_runs(micro, tmp_path):
    changed = tmp_path / "changed.toml"
    changed.write_text(micro.good_file.read_text().replace("optim.warmup_steps = 1", "optim.warmup_steps = 2"))
    with pytest.raises(SweepIncomplete, match="optim.warmup_steps: saved 1 vs now 2.*use a new sweep directory"):
        run_sweep(changed, micro.sweep_dir, progress=False, report=False)


def test_report_includes_few_shot_results_of_the_runs(micro, tmp_path):
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(micro.sweep_dir, sweep_dir)
    for i, record in enumerate(read_registry(sweep_dir)):
        results = {
            "model": {
                "name": record["preset"],
                "params": record["params"],
                "non_embedding_params": record["non_embedding_params"],
                "checkpoint": None,
                "step": 3,
            },
            "tokenizer": "byte",
            "created": "2026-01-01T00:00:00+00:00",
            "gptjax_version": "0.1.0",
            "results": [
                {
                    "task": "piqa",
                    "split": "validation",
                    "num_fewshot": 0,
                    "fewshot_split": "",
                    "seed": 1234,
                    "num_docs": 20,
                    "example_prompt": "Goal: x\nSolution: y",
                    "metrics": {
                        "acc": 0.5 + 0.05 * i,
                        "acc_stderr": 0.1,
                        "acc_norm": 0.5 + 0.1 * i,
                        "acc_norm_stderr": 0.1,
                    },
                }
            ],
        }
        (sweep_dir / record["run_dir"] / "eval").mkdir()
        (sweep_dir / record["run_dir"] / "eval" / "3.json").write_text(json.dumps(results))
    written = build_sweep_report(sweep_dir, n_boot=10)
    assert all(r["eval_results"] for r in read_registry(sweep_dir))
    markdown = (sweep_dir / "report" / "report.md").read_text()
    assert "## Few-shot evaluation" in markdown and "(fewshot/report.md)" in markdown
    assert "| L(C) | L(C) = (C_c / C)^α | final held-out loss of the 2 run(s) on the compute-efficient" in markdown
    assert "fewshot/report.html" in written and "fewshot/plots/aggregate.png" in markdown


def test_micro_study_runs_end_to_end_and_reports_every_section(tmp_path, monkeypatch):
    """The default study's pipeline in miniature (experiments/sweeps/micro_study.toml): 4 sizes x 2 compute
    budgets trained by two single-threaded workers (as `gptjax sweep` does on a CPU) sharing one persistent
    compilation cache, few-shot and ICL evaluation at the larger budget, and a report with every section."""
    monkeypatch.setenv("GPTJAX_COMPILATION_CACHE", str(tmp_path / "jax-cache"))
    monkeypatch.setenv("XLA_FLAGS", "")  # the workers are processes of their own: one CPU device each
    sweep_dir = tmp_path / "study"
    result = runner.run_sweep_workers("micro_study", sweep_dir, workers=2, report=False)
    assert len(result.trained) == 8 and not result.failed
    leases = {json.loads(f.read_text())["holder"] for f in SweepDir(sweep_dir).leases_dir.iterdir()}
    assert leases == {"worker0", "worker1"}  # both trained points
    records = read_registry(sweep_dir)
    assert all(r["cpu_time_s"] > 0 and r["wall_time_s"] > 0 for r in records)
    assert sum(bool(r["eval_results"]) for r in records) == 2  # tiny-10k and tiny-200k at 3e9 FLOPs
    build_sweep_report(sweep_dir, n_boot=10)
    markdown = (sweep_dir / "report" / "report.md").read_text()
    sections = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert sections[:10] == [
        "## Summary",
        "## Runs",
        "## Scaling laws",
        "## IsoFLOP profiles (Hoffmann et al., Approach 2)",
        "## Predicted, then measured",
        "## Context: published constants",
        "## Plots",
        "## Few-shot evaluation",
        "## In-context learning probes",
        "## Sweep file",
    ]
    # At seconds of training the smallest model wins every budget, so a parabola may have no minimum: the
    # section then says why N_opt ∝ C^a is not fitted; the profiles and Approach 3 are there either way.
    assert re.search(r"Approach 2: a = [-0-9.]+|N_opt ∝ C\^a not fitted: only \d of \d budget", markdown)
    assert re.search(r"\| 1\.5G \| 4 \| 10\.2k–200k \|", markdown) and "(plots/isoflop_profiles.png)" in markdown
    assert "Approach 3 on the same 8 runs (L(N, D) = E + A / N^α + B / D^β" in markdown
    for budget in ("1.5e9", "3e9"):  # the largest model's runs, predicted by L(N, D) fitted to the other 6
        assert re.search(rf"\| tiny-200k_{budget}flops_seed0 \| L\(N, D\) \| \d\.\d{{4}} \|", markdown)
        assert re.search(rf"L\(N, D\) without the largest model predicted \d\.\d{{3}} for tiny-200k_{budget}", markdown)
    assert "| α_N (L(N)) |" in markdown and "| 0.076 |" in markdown
    assert "(fewshot/report.md)" in markdown and "(icl/report.md)" in markdown
    assert re.search(r"Training: \d+ s of wall time and \d+ CPU-s summed over the runs", markdown)
