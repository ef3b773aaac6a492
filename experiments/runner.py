"""`run_sweep`: train every point of a sweep file, one after another, then write the registry and report.

Points run in this process, not one subprocess each: starting JAX and TensorFlow and opening the data
takes longer than training a tiny point does, and a subprocess per point would pay it every time; every
point's MFU is measured against the same CPU peak measurement (`gptjax.metrics` measures it once per
process); and a Trainer holds no process-wide state beyond its jit caches (cleared after each point) and
the SIGTERM handler it installs while it trains. What a subprocess would add, surviving a segfault or an
out-of-memory kill, a rerun gives too: finished points are skipped and an interrupted one resumes from its
last checkpoint. The sweep directory's layout is `gptjax.rundir.SweepDir`'s.

On a multi-host slice every process runs this loop together (each point's Trainer is collective); whether a
point is done, or held by another slice, is decided once by process 0 and broadcast, and only process 0
writes the sweep's files. With a `holder` name several slices share one sweep directory: each takes the
next point no other holds (experiments/leases.py), waits for the points others hold, and whoever finds every
point done writes the registry, the report and `DONE`, all rebuilt from the shared (gs://) directory.
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
import numpy as np
from jax.experimental import multihost_utils

from eval.hook import add_fewshot_hook
from eval.icl.hook import add_icl_hook
from experiments.leases import Leases
from experiments.registry import rebuild_registry
from experiments.report import build_sweep_report
from experiments.sweep import Point, Sweep, load_sweep, resolve_sweep_file
from gptjax.config import RunConfig
from gptjax.errors import GptjaxError
from gptjax.hooks import Heartbeat, add_standard_hooks
from gptjax.rundir import PathLike, RunDir, SweepDir, as_path, write_atomic, write_json
from gptjax.train import Trainer

DEFAULT_SWEEPS_DIR = Path("runs/sweeps")
_TRAIN, _DONE, _ELSEWHERE, _FAILED = range(4)  # what to do with a point, as process 0 decides it


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


def _train(run: RunConfig, progress: bool, heartbeat: tuple[PathLike, str] | None) -> bool:
    """Train (or resume) one run, beating `heartbeat` = (file, point name) too if given; False if a SIGTERM
    stopped it before its last step."""
    run_dir = RunDir(run.run_dir)
    started = time.perf_counter()
    trainer = None
    try:
        trainer = Trainer(run)
        if trainer.restore_or_init():
            _say(f"  resuming at step {trainer.step} of {run.steps}")
        logger = add_standard_hooks(trainer, progress=progress)
        add_fewshot_hook(trainer, logger)
        add_icl_hook(trainer, logger)
        if heartbeat is not None:
            beat = Heartbeat(trainer, heartbeat[0], run.logging.heartbeat_seconds, extra={"point": heartbeat[1]})
            trainer.add_hook(beat, every=1)
        trainer.train()
    finally:
        if trainer is not None:
            trainer.checkpointer.close()
            if jax.process_index() == 0:
                _add_wall_time(run_dir, time.perf_counter() - started)
        jax.clear_caches()  # the next point compiles other shapes; free this one's executables
    return run_dir.is_done()


def _status(point: Point, sweep: Sweep, sweep_dir: SweepDir, holder: str | None) -> int:
    run_dir = sweep_dir.run(point.name)
    if run_dir.is_done():
        run_dir.check_same_run(point.run_config(sweep, run_dir.path), "use a new sweep directory or delete that run")
        return _DONE
    if holder is not None and not Leases(sweep_dir, holder).acquire(point.name):
        return _ELSEWHERE
    return _TRAIN


def _shared_status(point: Point, sweep: Sweep, sweep_dir: SweepDir, holder: str | None) -> int:
    """`_status` as process 0 finds it, on every process; its error is raised on process 0."""
    status, error = _TRAIN, None
    if jax.process_index() == 0:
        try:
            status = _status(point, sweep, sweep_dir, holder)
        except Exception as err:  # noqa: BLE001 - re-raised below, after the others heard of it
            status, error = _FAILED, err
    if jax.process_count() > 1:
        status = int(multihost_utils.broadcast_one_to_all(np.int32(status)))
    if error is not None:
        raise error
    if status == _FAILED:
        raise RuntimeError(f"process 0 could not start point {point.name}")
    return status


def _run_point(
    point: Point, sweep: Sweep, sweep_dir: SweepDir, progress: bool, result: SweepResult, holder: str | None
) -> bool:
    """Train `point` unless it is done; False if another holder has it (to look at again later)."""
    status = _shared_status(point, sweep, sweep_dir, holder)
    if status == _ELSEWHERE:
        _say("  held by another slice: looked at again when this one has nothing left")
        return False
    if status == _DONE:
        _say("  done already: skipped")
        result.skipped.append(point.name)
        return True
    run_dir = sweep_dir.run(point.name)
    run = point.run_config(sweep, run_dir.path)
    tokens = run.steps * run.batch_size * run.sequence_length
    _say(f"  training {run.model.name} for {run.steps} steps ({tokens:,} tokens, seed {run.seed}) in {run_dir.path}")
    heartbeat = (sweep_dir.heartbeat_file(holder), point.name) if holder else None
    if _train(run, progress, heartbeat):
        result.trained.append(point.name)
    else:
        result.interrupted = point.name
    return True


def _write_failures(sweep_dir: SweepDir, failures: list[dict[str, Any]]) -> None:
    path = sweep_dir.failures_file
    if failures:
        write_atomic(path, "".join(json.dumps(f) + "\n" for f in failures))
    elif path.exists():
        path.unlink()


def run_sweep(
    sweep_file: str | Path,
    sweep_dir: PathLike | None = None,
    *,
    progress: bool = True,
    report: bool = True,
    holder: str | None = None,
    poll_seconds: float = 60.0,
) -> SweepResult:
    """Run every point of `sweep_file` (a path, or an embedded sweep's name) not yet done into `sweep_dir`
    (default runs/sweeps/<sweep name>), then rebuild the registry and (with `report`) write `sweep_dir/report/`
    and `sweep_dir/DONE`. With `holder` (e.g. a slice's name) it shares the directory with other holders
    through leases, and waits, polling every `poll_seconds`, for the points they train.

    A point that raises is recorded and the sweep goes on; a SIGTERM stops it after the current point has
    saved a checkpoint. Either way SweepIncomplete is raised at the end, naming the points, after the
    registry is written. Ctrl-C (KeyboardInterrupt) stops at once; rerunning resumes.
    """
    sweep = load_sweep(resolve_sweep_file(sweep_file))
    sweep_dir = SweepDir(as_path(sweep_dir) if sweep_dir is not None else DEFAULT_SWEEPS_DIR / sweep.name)
    is_writer = jax.process_index() == 0
    if is_writer:
        sweep_dir.runs_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(sweep_dir.sweep_file, sweep.text)
    result = SweepResult(sweep_dir)
    failures: list[dict[str, Any]] = []
    total = len(sweep.points)
    sweep_started = time.perf_counter()
    pending = list(enumerate(sweep.points, 1))
    while pending:
        held_elsewhere = []
        for i, point in pending:
            if not _attempt(i, point, sweep, sweep_dir, progress, result, holder, failures):
                held_elsewhere.append((i, point))
            if result.interrupted:
                break
        if result.interrupted or not held_elsewhere:
            break
        _say(f"[sweep {sweep.name}] waiting for {len(held_elsewhere)} point(s) other slices hold")
        if is_writer and holder:  # alive while idle, so the keep-alive loop does not relaunch it
            write_json(sweep_dir.heartbeat_file(holder), {"point": None, "waiting": True, "time": time.time()})
        time.sleep(poll_seconds)
        pending = held_elsewhere
    if is_writer:
        _write_failures(sweep_dir, failures)
    finished = rebuild_registry(sweep_dir) if is_writer else []
    _say(
        f"[sweep {sweep.name}] {len(result.trained)} trained, {len(result.skipped)} already done, "
        f"{len(result.failed)} failed in {time.perf_counter() - sweep_started:.0f} s"
    )
    if is_writer and report and finished and not result.interrupted:
        result.report = build_sweep_report(sweep_dir)
        _say(f"[sweep {sweep.name}] report: {result.report['report.html']}")
        if len(finished) == total:
            sweep_dir.done_file.write_text("")
    if result.failed or result.interrupted:
        raise SweepIncomplete(result, total)
    return result


def _attempt(
    i: int,
    point: Point,
    sweep: Sweep,
    sweep_dir: SweepDir,
    progress: bool,
    result: SweepResult,
    holder: str | None,
    failures: list[dict[str, Any]],
) -> bool:
    """One pass at point `i`: False if another holder has it; a failure is recorded in `result`/`failures`."""
    _say(f"[sweep {sweep.name}] point {i}/{len(sweep.points)}: {point.name}")
    try:
        if not _run_point(point, sweep, sweep_dir, progress, result, holder):
            return False
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
    if jax.process_index() == 0 and not result.interrupted:
        rebuild_registry(sweep_dir)  # after every point: a crash later loses nothing already trained
    return True


__all__ = ["DEFAULT_SWEEPS_DIR", "SweepIncomplete", "SweepResult", "run_sweep"]
