"""The training loop's standard hooks, each one job on the trainer's schedule: metrics, held-out loss,
checkpoints, the heartbeat and the profiler. `add_standard_hooks` attaches them as a run's config asks;
other packages hand the trainer their own (eval/hook.py: few-shot evaluation), writing their numbers through
the same `MetricsLogger`. Only process 0 writes files, except the profiler (one trace per host).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import jax

from gptjax import metrics as metrics_lib
from gptjax.rundir import PathLike, as_path, write_atomic, write_json
from gptjax.train import StepInfo, Trainer


class MetricsLogger:
    """Loss, grad norm, lr, step time, tokens/s, TFLOP/s per device, MFU, tokens and FLOPs seen ->
    metrics.jsonl, TensorBoard and the progress bar (process 0 only). Also the sink other hooks (held-out
    loss, eval) write through, so every number lands in the same places.

    Throughput is measured between consecutive calls; the first call of an attempt only starts the clock
    (its step is mostly compilation), so add it with `at_start=True`.
    """

    def __init__(self, trainer: Trainer, progress: bool = True) -> None:
        run, start = trainer.run, trainer.step
        device = jax.devices()[0]
        self.every = run.logging.every
        self.throughput = metrics_lib.Throughput.for_run(run, device.device_kind, jax.device_count())
        metrics_lib.write_metadata(
            trainer.run_dir.metrics_meta_file,
            {
                **self.throughput.metadata(),
                "platform": device.platform,
                "process_count": jax.process_count(),
                "code_commit": run.code_commit,
            },
            start,
        )
        self.sinks = metrics_lib.open_sinks(
            trainer.run_dir, run.steps, start, progress=progress, flush_seconds=run.logging.flush_seconds
        )
        self._last: tuple[int, float] | None = None

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        self.sinks.write(step, scalars)

    def flush(self) -> None:
        """Upload what a gs:// metrics file buffers (local files are always flushed)."""
        self.sinks.flush()

    def __call__(self, info: StepInfo) -> None:
        values = {k: float(v) for k, v in jax.device_get(info.metrics).items()}  # waits for the step
        now = time.perf_counter()
        record = {k: values[k] for k in ("loss", "grad_norm", "learning_rate")}
        if self._last is not None:
            last_step, last_time = self._last
            record["step_time_s"] = (now - last_time) / (info.step - last_step)
            record.update(self.throughput.measure(info.step, info.step - last_step, now - last_time).as_dict())
        self._last = (info.step, now)
        if info.step % self.every == 0 or info.final:
            self.write(info.step, record)

    def close(self) -> None:
        self.sinks.close()


class HeldOutLoss:
    """The mean validation loss, logged as `eval_loss`."""

    def __init__(self, trainer: Trainer, logger: MetricsLogger) -> None:
        self.trainer, self.logger = trainer, logger

    def __call__(self, info: StepInfo) -> None:
        self.logger.write(info.step, {"eval_loss": self.trainer.held_out_loss()})


class CheckpointSaver:
    """An asynchronous save; at the final step (the last one, or a stop) it also waits for the write. With a
    logger, it flushes the metrics too, so a gs:// metrics file always reaches the latest checkpoint (a run
    resumed from it then replays, and drops, only records after it)."""

    def __init__(self, trainer: Trainer, logger: MetricsLogger | None = None) -> None:
        self.checkpointer = trainer.checkpointer
        self.logger = logger

    def __call__(self, info: StepInfo) -> None:
        self.checkpointer.save(info.step, info.state)
        if self.logger is not None:
            self.logger.flush()
        if info.final:
            self.checkpointer.wait()


class Heartbeat:
    """Rewrites `path` with {"step", "time", "host", "pid", **extra} (process 0) when the hook is added, then
    at most every `seconds` and at the final step, so a watcher (tpu_scripts/resume_loop.sh) tells a run
    that trains from one that crashed or hangs. Add it with every=1: the clock decides."""

    def __init__(self, trainer: Trainer, path: PathLike, seconds: float, extra: dict[str, Any] | None = None) -> None:
        self.path, self.seconds, self.extra = as_path(path), seconds, extra or {}
        self._last = 0.0
        self._beat(trainer.step, final=False)

    def _beat(self, step: int, final: bool) -> None:
        if jax.process_index() != 0:
            return
        self._last = time.monotonic()
        record = {"step": step, "time": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
        write_json(self.path, {**record, "final": final, **self.extra}, indent=None)

    def __call__(self, info: StepInfo) -> None:
        if info.final or time.monotonic() - self._last >= self.seconds:
            self._beat(info.step, info.final)


class Profiler:
    """A `jax.profiler` trace of steps START+1..END (`profile_steps`) into <run_dir>/profile/, which
    TensorBoard's profile plugin reads (`tensorboard --logdir <run_dir>`). Every host traces itself; the
    profiler writes local files, so the trace goes to a temporary directory and is copied into the run
    directory (local or gs://) when it stops. A run resumed past START traces what is left of the range."""

    def __init__(self, trainer: Trainer, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.target = trainer.run_dir.profile_dir
        self._tmp: Path | None = None

    def __call__(self, info: StepInfo) -> None:
        if self._tmp is None and self.start <= info.step < self.end and not info.final:
            self._tmp = Path(tempfile.mkdtemp(prefix="gptjax-profile-"))
            jax.profiler.start_trace(str(self._tmp))
        elif self._tmp is not None and (info.step >= self.end or info.final):
            jax.block_until_ready(info.metrics)
            self.close()

    def close(self) -> None:
        if self._tmp is None:
            return
        jax.profiler.stop_trace()
        for file in sorted(p for p in self._tmp.rglob("*") if p.is_file()):
            write_atomic(self.target / file.relative_to(self._tmp).as_posix(), file.read_bytes())
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None


def add_standard_hooks(trainer: Trainer, progress: bool = True) -> MetricsLogger:
    """Metrics every `logging.every` steps, held-out loss every `held_out.every`, a checkpoint every
    `checkpoint.every`, each also at the final step; the heartbeat, and the profiler when `profile_steps`
    asks. Call after `restore_or_init` (the logger continues the metrics from the restored step); returns
    the logger, for other hooks to write through."""
    run = trainer.run
    logger = MetricsLogger(trainer, progress=progress)
    trainer.add_hook(logger, every=run.logging.every, at_start=True)
    trainer.add_hook(HeldOutLoss(trainer, logger), every=run.held_out.every)
    trainer.add_hook(CheckpointSaver(trainer, logger), every=run.checkpoint.every)
    trainer.add_hook(Heartbeat(trainer, trainer.run_dir.heartbeat_file, run.logging.heartbeat_seconds), every=1)
    if run.profile_range is not None:
        trainer.add_hook(Profiler(trainer, *run.profile_range), every=1)
    return logger


__all__ = ["CheckpointSaver", "HeldOutLoss", "Heartbeat", "MetricsLogger", "Profiler", "add_standard_hooks"]
