"""`run_sweep`: train every point of a sweep file, one after another, then write the registry and report.

Points run in this process, not one subprocess each: starting JAX and TensorFlow and opening the data
takes longer than training a tiny point does, and a subprocess per point would pay it every time; every
point's MFU is measured against the same CPU peak measurement (`gptjax.metrics` measures it once per
process); and a Trainer holds no process-wide state beyond its jit caches (cleared after each point) and
the SIGTERM handler it installs while it trains. What a subprocess would add, surviving a segfault or an
out-of-memory kill, a rerun gives too: finished points are skipped and an interrupted one resumes from its
last checkpoint. The sweep directory's layout is `gptjax.rundir.SweepDir`'s. A tiny point's cost is mostly
compilation (8-9 XLA programs: initialisation, train step, held-out loss, few-shot scorer, ICL probes), so
programs go to JAX's persistent cache (eval.phases; GPTJAX_COMPILATION_CACHE): a preset trained at several
lengths compiles its initialisation and evaluations once (the train step bakes in its schedule's length).

`run_sweep_workers` trains several points at once on one machine, one single-threaded worker process per
core, through the same leases several slices use (below): on a 2-core CPU two tiny points side by side beat
one process using both cores for one point (bench/sweep_cost.py; figures in bench/README.md).

On a multi-host slice every process runs this loop together (each point's Trainer is collective); whether a
point is done, or held by another slice, is decided once by process 0 and broadcast, and only process 0
writes the sweep's files. With a `holder` name several slices share one sweep directory: each takes the
next point no other holds (experiments/leases.py), waits for the points others hold, and whoever finds every
point done writes the registry, the report and `DONE`, all rebuilt from the shared (gs://) directory.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
from jax.experimental import multihost_utils

from eval.hook import add_fewshot_hook
from eval.icl.hook import add_icl_hook
from eval.phases import default_compilation_cache, enable_compilation_cache
from experiments.leases import Leases
from experiments.registry import rebuild_registry
from experiments.report import build_sweep_report
from experiments.sweep import Point, Sweep, load_sweep, resolve_sweep_file
from gptjax.config import ConfigError, RunConfig
from gptjax.errors import GptjaxError
from gptjax.hooks import Heartbeat, add_standard_hooks
from gptjax.model import flops_per_token
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


class _Header(Protocol):
    def __call__(self, note: str = "", repeat_quietly: bool = False) -> None: ...


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _add_time(run_dir: RunDir, wall: float, cpu: float) -> None:
    path = run_dir.sweep_point_file
    total = json.loads(path.read_text()) if path.is_file() else {}
    write_json(
        path,
        {"wall_time_s": total.get("wall_time_s", 0.0) + wall, "cpu_time_s": total.get("cpu_time_s", 0.0) + cpu},
        indent=None,
    )


def _train(run: RunConfig, progress: bool, heartbeat: tuple[PathLike, str] | None) -> bool:
    """Train (or resume) one run, beating `heartbeat` = (file, point name) too if given; False if a SIGTERM
    stopped it before its last step."""
    run_dir = RunDir(run.run_dir)
    started, cpu_started = time.perf_counter(), _cpu_seconds()
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
                wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
                _add_time(run_dir, wall, cpu)
                _say(f"  {run_dir.name}: {wall:.0f} s, {cpu:.0f} CPU-s")
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
    point: Point,
    sweep: Sweep,
    sweep_dir: SweepDir,
    progress: bool,
    result: SweepResult,
    holder: str | None,
    header: _Header,
) -> bool:
    """Train `point` unless it is done; False if another holder has it (to look at again later). `header`
    names the point on stderr (a point only looked at again, held or done elsewhere, is not named again)."""
    status = _shared_status(point, sweep, sweep_dir, holder)
    if status == _ELSEWHERE:
        header(" held by another holder: looked at again when this one has nothing left", repeat_quietly=True)
        return False
    if status == _DONE:
        header(" done already: skipped", repeat_quietly=True)
        result.skipped.append(point.name)
        return True
    header()
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


def _planned_flops(point: Point, sweep: Sweep, sweep_dir: SweepDir) -> float:
    """A point's training FLOPs as planned (0 for one whose preset does not exist: it fails fast anyway)."""
    try:
        run = point.run_config(sweep, sweep_dir.run(point.name).path)
    except ConfigError:
        return 0.0
    return run.steps * run.batch_size * run.sequence_length * flops_per_token(run.model, run.sequence_length)


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
    enable_compilation_cache(default_compilation_cache())
    is_writer = jax.process_index() == 0
    if is_writer:
        sweep_dir.runs_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(sweep_dir.sweep_file, sweep.text)
    result = SweepResult(sweep_dir)
    failures: list[dict[str, Any]] = []
    total = len(sweep.points)
    sweep_started = time.perf_counter()
    pending = list(enumerate(sweep.points, 1))
    if holder is not None:  # the costliest first, so the holders finish together (longest-processing-time order)
        pending.sort(key=lambda item: -_planned_flops(item[1], sweep, sweep_dir))
    first_pass, waiting_for = True, -1
    while pending:
        held_elsewhere = []
        for i, point in pending:
            if not _attempt(i, point, sweep, sweep_dir, progress, result, holder, failures, first_pass):
                held_elsewhere.append((i, point))
            if result.interrupted:
                break
        if result.interrupted or not held_elsewhere:
            break
        if len(held_elsewhere) != waiting_for:
            waiting_for = len(held_elsewhere)
            _say(f"[sweep {sweep.name}] waiting for {waiting_for} point(s) other holders have")
        if is_writer and holder:  # alive while idle, so the keep-alive loop does not relaunch it
            write_json(sweep_dir.heartbeat_file(holder), {"point": None, "waiting": True, "time": time.time()})
        time.sleep(poll_seconds)
        pending, first_pass = held_elsewhere, False
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


# One thread per worker process: tiny models' matrix products are too small to gain from a second thread,
# and a worker per core also runs the single-threaded parts (Python, compilation, evaluation) side by side.
WORKER_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def worker_environment() -> dict[str, str]:
    """This process's environment with the single-threaded worker flags added to XLA_FLAGS."""
    return {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {WORKER_XLA_FLAGS}".strip()}


def run_sweep_workers(
    sweep_file: str | Path, sweep_dir: PathLike | None = None, *, workers: int, report: bool = True
) -> SweepResult:
    """`run_sweep` with `workers` single-threaded processes training points at once (one per core), sharing
    the sweep directory through leases as slices do (holders worker0, worker1, ...); then this process
    writes the registry, the report and DONE. Workers print their progress to this stderr. A worker killed
    by a signal or crashing stops the others (SIGTERM: after a checkpoint), so none waits for its point; a
    SIGTERM to this process is passed on to them the same way. Call it from the main thread."""
    path = resolve_sweep_file(sweep_file)
    sweep = load_sweep(path)
    sweep_dir = SweepDir(as_path(sweep_dir) if sweep_dir is not None else DEFAULT_SWEEPS_DIR / sweep.name)
    env = worker_environment()
    command = [sys.executable, "-m", "gptjax.cli", "sweep", os.fspath(path), "--out", os.fspath(sweep_dir.path)]
    command += ["--no-progress", "--no-report", "--poll-seconds", "1"]
    started = time.perf_counter()
    procs = [subprocess.Popen([*command, "--holder", f"worker{k}"], env=env) for k in range(workers)]

    def stop(signum: int, frame: Any) -> None:  # a SIGTERM to this process stops the workers after a checkpoint
        for p in procs:
            if p.poll() is None:
                p.terminate()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0, 1) for p in procs):  # 1: some point failed, all others done
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
            time.sleep(0.5)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for p in procs:
            if p.poll() is None:
                p.kill()
    result = SweepResult(sweep_dir)
    finished = rebuild_registry(sweep_dir)
    done = {r["name"] for r in finished}
    result.trained = [p.name for p in sweep.points if p.name in done]
    result.failed = {
        p.name: f"not finished (worker exit codes {[p.returncode for p in procs]}; see their output above)"
        for p in sweep.points
        if p.name not in done
    }
    _say(
        f"[sweep {sweep.name}] {len(done)} of {len(sweep.points)} points done by {workers} workers in "
        f"{time.perf_counter() - started:.0f} s"
    )
    if report and finished:
        result.report = build_sweep_report(sweep_dir)
        _say(f"[sweep {sweep.name}] report: {result.report['report.html']}")
        if not result.failed:
            sweep_dir.done_file.write_text("")
    if result.failed:
        raise SweepIncomplete(result, len(sweep.points))
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
    first_pass: bool,
) -> bool:
    """One pass at point `i`: False if another holder has it; a failure is recorded in `result`/`failures`."""
    said = False

    def header(note: str = "", repeat_quietly: bool = False) -> None:
        """Name the point (and who looks at it) on stderr once, with `note`; not on a later pass when
        `repeat_quietly`."""
        nonlocal said
        if not said and not (repeat_quietly and not first_pass):
            who = f" {holder}" if holder else ""
            _say(f"[sweep {sweep.name}{who}] point {i}/{len(sweep.points)}: {point.name}{note}")
            said = True

    try:
        if not _run_point(point, sweep, sweep_dir, progress, result, holder, header):
            return False
    except Exception as err:  # noqa: BLE001 - one bad point must not stop the others
        header()
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


__all__ = [
    "DEFAULT_SWEEPS_DIR",
    "SweepIncomplete",
    "SweepResult",
    "run_sweep",
    "run_sweep_workers",
    "worker_environment",
]
