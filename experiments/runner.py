"""`run_sweep`: train every point of a sweep file, one after another, then write the registry and report.

Points run in this process, not one subprocess each: starting JAX and TensorFlow and opening the data
takes longer than training a tiny point does, and a subprocess per point would pay it every time; every
point's MFU is measured against the same CPU peak measurement (`gptjax.metrics` measures it once per
process); and a Trainer holds no process-wide state beyond its jit caches (cleared after each point) and
the SIGTERM handler it installs while it trains. What a subprocess would add, surviving a segfault or an
out-of-memory kill, a rerun gives too: finished points are skipped and an interrupted one resumes from its
last checkpoint. The sweep directory's layout is `gptjax.rundir.SweepDir`'s.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax

from eval.hook import add_fewshot_hook
from experiments.registry import rebuild_registry
from experiments.report import build_sweep_report
from experiments.sweep import Point, Sweep, load_sweep, resolve_sweep_file
from gptjax.config import RunConfig
from gptjax.errors import GptjaxError
from gptjax.hooks import add_standard_hooks
from gptjax.rundir import PathLike, RunDir, SweepDir, as_path, write_atomic, write_json
from gptjax.train import Trainer

DEFAULT_SWEEPS_DIR = Path("runs/sweeps")


@dataclass
class SweepResult:
    """What one invocation did: point names by outcome, and the files written."""

    sweep_dir: SweepDir
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already done
    failed: dict[str, str] = field(default_factory=dict)  # name -> "ErrorType: message"
    interrupted: str | None = None  # the point a SIGTERM stopped; later points were not started
    report: dict[str, Path] = field(default_factory=dict)


class SweepIncomplete(GptjaxError, RuntimeError):
    """Some points failed or the sweep was stopped; raised after the registry (and report) are written."""

    def __init__(self, result: SweepResult, total: int) -> None:
        self.result = result
        parts = []
        if result.failed:
            listed = "; ".join(f"{name} ({error})" for name, error in result.failed.items())
            parts.append(
                f"{len(result.failed)} of {total} points failed: {listed}; tracebacks in "
                f"{result.sweep_dir.failures_file}"
            )
        if result.interrupted:
            parts.append(f"stopped by SIGTERM during {result.interrupted}; run the sweep again to resume")
        super().__init__(". ".join(parts))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _add_wall_time(run_dir: RunDir, seconds: float) -> None:
    path = run_dir.sweep_point_file
    total = json.loads(path.read_text())["wall_time_s"] if path.is_file() else 0.0
    write_json(path, {"wall_time_s": total + seconds}, indent=None)


def _train(run: RunConfig, progress: bool) -> bool:
    """Train (or resume) one run; False if a SIGTERM stopped it before its last step."""
    run_dir = RunDir(run.run_dir)
    started = time.perf_counter()
    trainer = None
    try:
        trainer = Trainer(run)
        if trainer.restore_or_init():
            _say(f"  resuming at step {trainer.step} of {run.steps}")
        add_fewshot_hook(trainer, add_standard_hooks(trainer, progress=progress))
        trainer.train()
    finally:
        if trainer is not None:
            trainer.checkpointer.close()
            _add_wall_time(run_dir, time.perf_counter() - started)
        jax.clear_caches()  # the next point compiles other shapes; free this one's executables
    return run_dir.is_done()


def _run_point(point: Point, sweep: Sweep, sweep_dir: SweepDir, progress: bool, result: SweepResult) -> None:
    run_dir = sweep_dir.run(point.name)
    run = point.run_config(sweep, run_dir.path)
    if run_dir.is_done():
        run_dir.check_same_run(run, "use a new sweep directory or delete that run directory")
        _say("  done already: skipped")
        result.skipped.append(point.name)
        return
    tokens = run.steps * run.batch_size * run.sequence_length
    _say(f"  training {run.model.name} for {run.steps} steps ({tokens:,} tokens, seed {run.seed}) in {run_dir.path}")
    if _train(run, progress):
        result.trained.append(point.name)
    else:
        result.interrupted = point.name


def _write_failures(sweep_dir: SweepDir, failures: list[dict[str, Any]]) -> None:
    path = sweep_dir.failures_file
    if failures:
        write_atomic(path, "".join(json.dumps(f) + "\n" for f in failures))
    elif path.exists():
        path.unlink()


def run_sweep(
    sweep_file: str | Path, sweep_dir: PathLike | None = None, *, progress: bool = True, report: bool = True
) -> SweepResult:
    """Run every point of `sweep_file` (a path, or an embedded sweep's name) not yet done into `sweep_dir`
    (default runs/sweeps/<sweep name>), then rebuild the registry and (with `report`) write `sweep_dir/report/`.

    A point that raises is recorded and the sweep goes on; a SIGTERM stops it after the current point has
    saved a checkpoint. Either way SweepIncomplete is raised at the end, naming the points, after the
    registry is written. Ctrl-C (KeyboardInterrupt) stops at once; rerunning resumes.
    """
    sweep = load_sweep(resolve_sweep_file(sweep_file))
    sweep_dir = SweepDir(as_path(sweep_dir) if sweep_dir is not None else DEFAULT_SWEEPS_DIR / sweep.name)
    sweep_dir.runs_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(sweep_dir.sweep_file, sweep.text)
    result = SweepResult(sweep_dir)
    failures: list[dict[str, Any]] = []
    total = len(sweep.points)
    sweep_started = time.perf_counter()
    for i, point in enumerate(sweep.points, 1):
        _say(f"[sweep {sweep.name}] point {i}/{total}: {point.name}")
        try:
            _run_point(point, sweep, sweep_dir, progress, result)
        except Exception as err:  # noqa: BLE001 - one bad point must not stop the others
            message = f"{type(err).__name__}: {err}"
            _say(f"  FAILED: {message}")
            result.failed[point.name] = message
            failures.append(
                {
                    "name": point.name,
                    "preset": point.preset,
                    "error": message,
                    "traceback": traceback.format_exc(),
                    "time": time.time(),
                }
            )
        if result.interrupted:
            break
        rebuild_registry(sweep_dir)  # after every point: a crash later loses nothing already trained
    _write_failures(sweep_dir, failures)
    finished = rebuild_registry(sweep_dir)
    _say(
        f"[sweep {sweep.name}] {len(result.trained)} trained, {len(result.skipped)} already done, "
        f"{len(result.failed)} failed in {time.perf_counter() - sweep_started:.0f} s"
    )
    if report and finished and not result.interrupted:
        result.report = build_sweep_report(sweep_dir)
        _say(f"[sweep {sweep.name}] report: {result.report['report.html']}")
    if result.failed or result.interrupted:
        raise SweepIncomplete(result, total)
    return result


__all__ = ["DEFAULT_SWEEPS_DIR", "SweepIncomplete", "SweepResult", "run_sweep"]
