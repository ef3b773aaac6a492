"""`run_sweep`: train every point of a sweep file, one after another, then write the registry and report.

Points run in this process, not one subprocess each: starting JAX and TensorFlow and opening the data
takes longer than training a tiny point does, and a subprocess per point would pay it every time; every
point's MFU is measured against the same CPU peak measurement (`gptjax.metrics` measures it once per
process); and a Trainer holds no process-wide state beyond its jit caches (cleared after each point) and
the SIGTERM handler (restored after each point). What a subprocess would add, surviving a segfault or an
out-of-memory kill, a rerun gives too: finished points are skipped and an interrupted one resumes from its
last checkpoint.

Layout of a sweep directory: `sweep.toml` (the sweep file as last run), `runs/<point>/` (one gptjax run
directory per point, sharing `runs/.data_cache`), `registry.jsonl`, `failures.jsonl` (the points that failed
in the last invocation, with tracebacks; absent when none did) and `report/`.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.registry import POINT_FILE, RUNS_DIR, rebuild_registry
from experiments.sweep import Point, Sweep, load_sweep, resolve_sweep_file
from gptjax.config import ConfigError, RunConfig, from_dict, to_dict
from gptjax.train import DONE_MARKER

DEFAULT_SWEEPS_DIR = Path("runs/sweeps")
SWEEP_COPY = "sweep.toml"
FAILURES_FILE = "failures.jsonl"


@dataclass
class SweepResult:
    """What one invocation did: point names by outcome, and the files written."""

    sweep_dir: Path
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already done
    failed: dict[str, str] = field(default_factory=dict)  # name -> "ErrorType: message"
    interrupted: str | None = None  # the point a SIGTERM stopped; later points were not started
    report: dict[str, Path] = field(default_factory=dict)


class SweepIncomplete(RuntimeError):
    """Some points failed or the sweep was stopped; raised after the registry (and report) are written."""

    def __init__(self, result: SweepResult, total: int) -> None:
        self.result = result
        parts = []
        if result.failed:
            listed = "; ".join(f"{name} ({error})" for name, error in result.failed.items())
            parts.append(f"{len(result.failed)} of {total} points failed: {listed}; tracebacks in "
                         f"{result.sweep_dir / FAILURES_FILE}")
        if result.interrupted:
            parts.append(f"stopped by SIGTERM during {result.interrupted}; run the sweep again to resume")
        super().__init__(". ".join(parts))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config dict with dotted keys (optim.learning_rate), so a difference names the field itself."""
    flat = {}
    for key, value in config.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def _check_unchanged(run: RunConfig, run_dir: Path) -> None:
    """A finished point is only reused if the sweep file still describes the same run."""
    saved = _flat(to_dict(from_dict(RunConfig, json.loads((run_dir / "config.json").read_text()))))
    wanted = _flat(to_dict(run))
    changed = sorted(k for k in wanted.keys() | saved.keys() if k != "run_dir" and wanted.get(k) != saved.get(k))
    if changed:
        detail = "; ".join(f"{k}: ran with {saved.get(k)!r}, sweep file now says {wanted.get(k)!r}" for k in changed)
        raise ConfigError(f"{run_dir} finished with a different config ({detail}); use a new sweep directory "
                          "or delete that run directory")


def _add_wall_time(run_dir: Path, seconds: float) -> None:
    path = run_dir / POINT_FILE
    total = json.loads(path.read_text())["wall_time_s"] if path.is_file() else 0.0
    path.write_text(json.dumps({"wall_time_s": total + seconds}))


def _train(run: RunConfig, progress: bool) -> bool:
    """Train (or resume) one run; False if a SIGTERM stopped it before its last step."""
    import jax

    from gptjax.hooks import default_hooks
    from gptjax.train import Trainer

    run_dir = Path(run.run_dir)
    previous_handler = signal.getsignal(signal.SIGTERM)
    started = time.perf_counter()
    trainer = None
    try:
        trainer = Trainer(run)
        trainer.hooks = default_hooks(trainer, progress=progress)
        if trainer.step:
            _say(f"  resuming at step {trainer.step} of {run.steps}")
        trainer.train()
    finally:
        if trainer is not None:
            trainer.checkpointer.close()
            _add_wall_time(run_dir, time.perf_counter() - started)
        signal.signal(signal.SIGTERM, previous_handler)  # a failed run never restores its own
        jax.clear_caches()  # the next point compiles other shapes; free this one's executables
    return (run_dir / DONE_MARKER).exists()


def _run_point(point: Point, sweep: Sweep, sweep_dir: Path, progress: bool, result: SweepResult) -> None:
    run = point.run_config(sweep, sweep_dir / RUNS_DIR / point.name)
    run_dir = Path(run.run_dir)
    if (run_dir / DONE_MARKER).exists():
        _check_unchanged(run, run_dir)
        _say("  done already: skipped")
        result.skipped.append(point.name)
        return
    tokens = run.steps * run.batch_size * run.sequence_length
    _say(f"  training {run.model.name} for {run.steps} steps ({tokens:,} tokens, seed {run.seed}) in {run_dir}")
    if _train(run, progress):
        result.trained.append(point.name)
    else:
        result.interrupted = point.name


def _write_failures(sweep_dir: Path, failures: list[dict[str, Any]]) -> None:
    path = sweep_dir / FAILURES_FILE
    if failures:
        path.write_text("".join(json.dumps(f) + "\n" for f in failures))
    else:
        path.unlink(missing_ok=True)


def run_sweep(sweep_file: str | Path, sweep_dir: str | Path | None = None, *, progress: bool = True,
              report: bool = True) -> SweepResult:
    """Run every point of `sweep_file` (a path, or an embedded sweep's name) not yet done into `sweep_dir`
    (default runs/sweeps/<sweep name>), then rebuild the registry and (with `report`) write `sweep_dir/report/`.

    A point that raises is recorded and the sweep goes on; a SIGTERM stops it after the current point has
    saved a checkpoint. Either way SweepIncomplete is raised at the end, naming the points, after the
    registry is written. Ctrl-C (KeyboardInterrupt) stops at once; rerunning resumes.
    """
    sweep = load_sweep(resolve_sweep_file(sweep_file))
    sweep_dir = Path(sweep_dir) if sweep_dir is not None else DEFAULT_SWEEPS_DIR / sweep.name
    (sweep_dir / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    (sweep_dir / SWEEP_COPY).write_text(sweep.text, encoding="utf-8")
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
            failures.append({"name": point.name, "preset": point.preset, "error": message,
                             "traceback": traceback.format_exc(), "time": time.time()})
        if result.interrupted:
            break
        rebuild_registry(sweep_dir)  # after every point: a crash later loses nothing already trained
    _write_failures(sweep_dir, failures)
    finished = rebuild_registry(sweep_dir)
    _say(f"[sweep {sweep.name}] {len(result.trained)} trained, {len(result.skipped)} already done, "
         f"{len(result.failed)} failed in {time.perf_counter() - sweep_started:.0f} s")
    if report and finished and not result.interrupted:
        from experiments.report import build_sweep_report

        result.report = build_sweep_report(sweep_dir)
        _say(f"[sweep {sweep.name}] report: {result.report['report.html']}")
    if result.failed or result.interrupted:
        raise SweepIncomplete(result, total)
    return result


__all__ = ["DEFAULT_SWEEPS_DIR", "FAILURES_FILE", "SWEEP_COPY", "SweepIncomplete", "SweepResult", "run_sweep"]
