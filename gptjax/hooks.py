"""The training loop's standard hooks, each one job on the trainer's schedule: metrics, held-out loss,
checkpoints. `add_standard_hooks` attaches them as a run's config asks; other packages hand the trainer
their own (eval/hook.py: few-shot evaluation), writing their numbers through the same `MetricsLogger`.
"""

from __future__ import annotations

import time
from typing import Any

import jax

from gptjax import metrics as metrics_lib
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
            {**self.throughput.metadata(), "platform": device.platform, "process_count": jax.process_count()},
            start,
        )
        self.sinks = metrics_lib.open_sinks(trainer.run_dir, run.steps, start, progress=progress)
        self._last: tuple[int, float] | None = None

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        self.sinks.write(step, scalars)

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
    """An asynchronous save; at the final step (the last one, or a stop) it also waits for the write."""

    def __init__(self, trainer: Trainer) -> None:
        self.checkpointer = trainer.checkpointer

    def __call__(self, info: StepInfo) -> None:
        self.checkpointer.save(info.step, info.state)
        if info.final:
            self.checkpointer.wait()


def add_standard_hooks(trainer: Trainer, progress: bool = True) -> MetricsLogger:
    """Metrics every `logging.every` steps, held-out loss every `held_out.every`, a checkpoint every
    `checkpoint.every`, each also at the final step. Call after `restore_or_init` (the logger continues
    the metrics from the restored step); returns the logger, for other hooks to write through."""
    run = trainer.run
    logger = MetricsLogger(trainer, progress=progress)
    trainer.add_hook(logger, every=run.logging.every, at_start=True)
    trainer.add_hook(HeldOutLoss(trainer, logger), every=run.held_out.every)
    trainer.add_hook(CheckpointSaver(trainer), every=run.checkpoint.every)
    return logger


__all__ = ["CheckpointSaver", "HeldOutLoss", "MetricsLogger", "add_standard_hooks"]
