"""Cross-cutting concerns of the training loop, each a hook: metrics, held-out loss, checkpoints and
preemption, the non-finite guard. `Trainer.train` calls `on_start`, `on_step(step)` after every optimizer
step (with `step` = steps completed) and `on_end`."""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import jax

from gptjax import metrics as metrics_lib
from gptjax.train import Hook, Trainer

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """The loss or gradient norm of a step was not finite (the update was not applied)."""


class NonFiniteGuard:
    """Stops the run (optim.on_nonfinite=error) or logs the skipped step (skip).

    The flag of step k is read after step k+1 has been dispatched, so checking never stalls the device
    queue; the step itself already refused the non-finite update, so no saved state is ever poisoned.
    """

    def __init__(self) -> None:
        self._pending: tuple[int, jax.Array] | None = None

    def on_start(self, trainer: Trainer) -> None:
        self._pending = None

    def on_step(self, trainer: Trainer, step: int, metrics: dict[str, jax.Array]) -> None:
        self._check(trainer)
        self._pending = (step, metrics["finite"])

    def on_end(self, trainer: Trainer) -> None:
        self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        if self._pending is None:
            return
        step, finite = self._pending
        self._pending = None
        if bool(jax.device_get(finite)):
            return
        if trainer.run.optim.on_nonfinite == "error":
            raise NonFiniteError(f"non-finite loss or gradient at step {step}; the update was not applied and "
                                 f"the last good checkpoint is kept in {trainer.checkpointer.directory} "
                                 "(set optim.on_nonfinite=skip to skip such batches)")
        log.warning("skipped step %d: non-finite loss or gradient", step)


class MetricsLogger:
    """Every `every` steps: loss, grad norm, lr, step time, tokens/s, TFLOP/s per device, MFU, tokens and
    FLOPs seen -> metrics.jsonl, TensorBoard and the progress bar (process 0 only). Also the sink other
    hooks (held-out loss, eval) write through, so every number lands in the same places."""

    def __init__(self, every: int, progress: bool = True) -> None:
        self.every = every
        self.progress = progress
        self.sinks: metrics_lib.MultiSink | None = None
        self.throughput: metrics_lib.Throughput | None = None
        self._last: tuple[int, float] | None = None

    def on_start(self, trainer: Trainer) -> None:
        start = trainer.step
        device = jax.devices()[0]
        self.throughput = metrics_lib.Throughput.for_run(trainer.run, device.device_kind, jax.device_count())
        metrics_lib.write_metadata(trainer.run_dir, {**self.throughput.metadata(), "platform": device.platform,
                                                     "process_count": jax.process_count()}, start)
        self.sinks = metrics_lib.open_sinks(trainer.run_dir, trainer.run.steps, start, progress=self.progress)
        self._last = None

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        assert self.sinks is not None, "MetricsLogger.on_start has not run"
        self.sinks.write(step, scalars)

    def on_step(self, trainer: Trainer, step: int, metrics: dict[str, jax.Array]) -> None:
        due = step % self.every == 0 or step == trainer.run.steps
        if not due and self._last is not None:
            return
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}  # waits for the step
        now = time.perf_counter()
        record = {k: values[k] for k in ("loss", "grad_norm", "learning_rate")}
        if self._last is not None:  # the first step's time is mostly compilation: no throughput for it
            last_step, last_time = self._last
            assert self.throughput is not None
            record["step_time_s"] = (now - last_time) / (step - last_step)
            record.update(self.throughput.measure(step, step - last_step, now - last_time).as_dict())
        self._last = (step, now)
        if due:
            self.write(step, record)

    def on_end(self, trainer: Trainer) -> None:
        if self.sinks is not None:
            self.sinks.close()


class HeldOutLoss:
    """Mean validation loss every `every` steps and at the end, logged as `eval_loss`."""

    def __init__(self, logger: MetricsLogger, every: int) -> None:
        self.logger, self.every = logger, every
        self._last_step = -1

    def on_start(self, trainer: Trainer) -> None:
        self._last_step = -1

    def on_step(self, trainer: Trainer, step: int, metrics: dict[str, jax.Array]) -> None:
        if step % self.every == 0:
            self._evaluate(trainer, step)

    def on_end(self, trainer: Trainer) -> None:
        if trainer.step != self._last_step:
            self._evaluate(trainer, trainer.step)

    def _evaluate(self, trainer: Trainer, step: int) -> None:
        self.logger.write(step, {"eval_loss": trainer.held_out_loss()})
        self._last_step = step


class CheckpointSaver:
    """Asynchronous save every `every` steps and at the end; on SIGTERM (or a multi-host preemption
    notice) saves at the current step, waits for the write, and stops the loop."""

    def __init__(self, every: int) -> None:
        self.every = every
        self._sigterm = False
        self._previous_handler: Any = None

    def on_start(self, trainer: Trainer) -> None:
        self._sigterm = False
        if jax.process_count() == 1:  # multi-process runs get preemption notices through JAX instead
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM: saving a checkpoint at the end of this step, then stopping")
        self._sigterm = True

    def on_step(self, trainer: Trainer, step: int, metrics: dict[str, jax.Array]) -> None:
        if self._sigterm or trainer.checkpointer.reached_preemption(step):
            trainer.checkpointer.save(step, trainer.state)
            trainer.checkpointer.wait()
            trainer.request_stop()
        elif step % self.every == 0:
            trainer.checkpointer.save(step, trainer.state)

    def on_end(self, trainer: Trainer) -> None:
        trainer.checkpointer.save(trainer.step, trainer.state)
        trainer.checkpointer.wait()
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None


class FewShotEval:
    """Runs eval/ tasks on the current parameters every `run.eval_tasks_every` steps (and at the end):
    the full results go to <run_dir>/eval/<step>.json, each metric to the sinks as
    eval/<task>/<K>shot/<metric>, so in-context learning curves sit beside the loss curve."""

    def __init__(self, logger: MetricsLogger) -> None:
        self.logger = logger
        self._last_step = -1

    def on_start(self, trainer: Trainer) -> None:
        from eval import get_spec

        for task in trainer.run.eval_tasks:
            get_spec(task)  # an unknown task fails now, not after hours of training
        self._last_step = -1

    def on_step(self, trainer: Trainer, step: int, metrics: dict[str, jax.Array]) -> None:
        every = trainer.run.eval_tasks_every
        if every and step % every == 0:
            self._evaluate(trainer, step)

    def on_end(self, trainer: Trainer) -> None:
        if trainer.step != self._last_step:
            self._evaluate(trainer, trainer.step)

    def _evaluate(self, trainer: Trainer, step: int) -> None:
        from eval import evaluate, write_results
        from eval.gptjax_lm import GptjaxLM

        run = trainer.run
        lm = GptjaxLM(trainer.state.params, run.model, trainer.dataset.vocab, name=run.model.name,
                      checkpoint=str(trainer.checkpointer.directory), step=step, mesh=trainer.mesh,
                      param_shardings=trainer.state_shardings.params)
        results = evaluate(lm, run.eval_tasks, shots=run.eval_shots, limit=run.eval_limit or None)
        if jax.process_index() == 0:
            write_results(trainer.run_dir / "eval" / f"{step}.json", results)
        scalars = {f"eval/{r['task']}/{r['num_fewshot']}shot/{name}": value
                   for r in results["results"] for name, value in r["metrics"].items()
                   if isinstance(value, (int, float)) and not name.endswith("_stderr")}
        self.logger.write(step, scalars)
        self._last_step = step


def default_hooks(trainer: Trainer, progress: bool = True) -> list[Hook]:
    run = trainer.run
    logger = MetricsLogger(run.log_every, progress=progress)
    hooks: list[Hook] = [NonFiniteGuard(), logger, HeldOutLoss(logger, run.eval_every)]
    if run.eval_tasks:
        hooks.append(FewShotEval(logger))
    return [*hooks, CheckpointSaver(run.checkpoint_every)]
