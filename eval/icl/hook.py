"""The ICL probes as a training hook: every `icl.every` steps (and at the end), probe results go to
<run_dir>/icl/<step>.json and their metrics into the run's metrics beside the loss, so the induction-head
phase change shows as a curve over training tokens. The core trainer never imports eval; whoever wires a
run (the CLI, a sweep) attaches this hook. Resuming is exact: a probe reads only the parameters at its step
and sequences fixed by the task's seed."""

from __future__ import annotations

import jax

from eval.icl import probes
from eval.icl.runs import held_out_batches, held_out_dataset, icl_results, model_info
from eval.runner import write_results
from gptjax.hooks import MetricsLogger
from gptjax.train import StepInfo, Trainer


class ICLProbes:
    """Runs `icl.probes` on the current parameters (gptjax.config.ICLConfig)."""

    def __init__(self, trainer: Trainer, logger: MetricsLogger) -> None:
        run = trainer.run
        probes.check(run.icl, run.model, trainer.seq_len)  # a bad probe fails now, not after hours of training
        self.held_out = held_out_dataset(run, trainer.dataset) if "icl_score" in run.icl.probes else None
        self.trainer, self.logger = trainer, logger

    def __call__(self, info: StepInfo) -> None:
        trainer = self.trainer
        pm = probes.ProbeModel(info.state.params, trainer.run.model)
        held_out = lambda rows: held_out_batches(self.held_out, rows)  # noqa: E731
        results = probes.run_probes(pm, trainer.run.icl, trainer.seq_len, held_out)
        if jax.process_index() == 0:
            info_ = model_info(trainer.run, str(trainer.checkpointer.directory), info.step)
            write_results(trainer.run_dir.icl_results(info.step), icl_results(info_, trainer.run, results))
        self.logger.write(info.step, probes.scalars(results))


def add_icl_hook(trainer: Trainer, logger: MetricsLogger) -> None:
    """Attach the probes as the run's `icl` section asks (every `icl.every` steps, 0 = only at the end);
    nothing when it names no probes."""
    cfg = trainer.run.icl
    if cfg.probes:
        trainer.add_hook(ICLProbes(trainer, logger), every=cfg.every or None)


__all__ = ["ICLProbes", "add_icl_hook"]
