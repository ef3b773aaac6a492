"""The few-shot evaluation hook eval offers training: the core trainer never imports eval; whoever wires a
run (the CLI, a sweep) attaches this hook to it."""

from __future__ import annotations

import jax

from eval.gptjax_lm import GptjaxLM
from eval.registry import get_spec
from eval.runner import evaluate, write_results
from gptjax.config import FewShotConfig
from gptjax.hooks import MetricsLogger
from gptjax.train import StepInfo, Trainer


class FewShotEval:
    """Runs eval/ tasks on the current parameters: the full results go to <run_dir>/eval/<step>.json, each
    metric to the run's metrics as eval/<task>/<K>shot/<metric>, so in-context learning curves sit beside
    the loss curve."""

    def __init__(self, trainer: Trainer, logger: MetricsLogger, cfg: FewShotConfig) -> None:
        for task in cfg.tasks:
            get_spec(task)  # an unknown task fails now, not after hours of training
        self.trainer, self.logger, self.cfg = trainer, logger, cfg

    def __call__(self, info: StepInfo) -> None:
        trainer, cfg = self.trainer, self.cfg
        lm = GptjaxLM(
            info.state.params,
            trainer.run.model,
            trainer.dataset.vocab,
            name=trainer.run.model.name,
            checkpoint=str(trainer.checkpointer.directory),
            step=info.step,
            mesh=trainer.mesh,
            param_shardings=trainer.state_shardings.params,
        )
        results = evaluate(lm, cfg.tasks, shots=cfg.shots, limit=cfg.limit or None)
        if jax.process_index() == 0:
            write_results(trainer.run_dir.eval_results(info.step), results)
        scalars = {
            f"eval/{r['task']}/{r['num_fewshot']}shot/{name}": value
            for r in results["results"]
            for name, value in r["metrics"].items()
            if isinstance(value, (int, float)) and not name.endswith("_stderr")
        }
        self.logger.write(info.step, scalars)


def add_fewshot_hook(trainer: Trainer, logger: MetricsLogger) -> None:
    """Attach few-shot evaluation as the run's `fewshot` section asks (every `fewshot.every` steps, 0 = only
    at the end); nothing when it names no tasks."""
    cfg = trainer.run.fewshot
    if cfg.tasks:
        trainer.add_hook(FewShotEval(trainer, logger, cfg), every=cfg.every or None)


__all__ = ["FewShotEval", "add_fewshot_hook"]
