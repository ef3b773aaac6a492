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

from experiments import fits, runner
from experiments.cli import sweep_command
from experiments.registry import RECORD_FIELDS, read_registry, rebuild_registry
from experiments.report import build_sweep_report
from experiments.runner import SweepIncomplete, run_sweep
from experiments.sweep import SweepFileError, embedded_sweeps, load_sweep
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
# Sweep files.


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


@pytest.mark.parametrize(
    "text,message",
    [
        ('[axes]\npresets = ["tiny-25k"]\nsteps = [5]\ntokens = [100]\n', "exactly one of steps and tokens"),
        (
            '[axes]\npresets = ["tiny-25k"]\nstep = [5]\n',
            "unknown key(s) step; valid keys: presets, seeds, steps, tokens",
        ),
        ('[base]\nsteps = 5\n[axes]\npresets = ["tiny-25k"]\nsteps = [5]\n', "sets steps, which the sweep"),
        ('[base]\noptim.lr = 1\n[axes]\npresets = ["tiny-25k"]\nsteps = [5]\n', "unknown config key 'optim.lr'"),
        (
            '[base]\nbatch_size = "8"\n[axes]\npresets = ["tiny-25k"]\nsteps = [5]\n',
            "batch_size='8' is not a valid int",
        ),
        ('[axes]\npresets = ["tiny-25k"]\nsteps = [0, 5]\n', "steps must be positive, got [0]"),
        ("[axes]\nsteps = [5]\n", "name the model(s)"),
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
    assert sweep_command([str(micro.bad_file), "--out", str(micro.sweep_dir), "--no-progress"]) == 1
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
