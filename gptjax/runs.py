"""A run directory as a model store: a checkpoint's parameters, model config and vocabulary for inference
(generation, evaluation, export). Only the `params` entry of the saved train state is read, so a reader
needs neither the optimizer nor the trainer."""

from __future__ import annotations

from typing import Any

import jax
import seqio

from gptjax import model
from gptjax.checkpoint import Checkpointer, CheckpointError
from gptjax.config import ModelConfig
from gptjax.rundir import PathLike, RunDir
from gptjax.tokenizers import get_vocabulary


def load_for_inference(run_dir: PathLike, step: int | None = None) -> tuple[Any, ModelConfig, seqio.Vocabulary, int]:
    """(params, model config, vocabulary, step) from a run's checkpoint (the latest unless `step` is
    given), on the first local device (callers that shard, like the eval layer, place them further)."""
    run_dir = RunDir(run_dir)
    run = run_dir.read_config()
    checkpointer = Checkpointer(run_dir.checkpoints_dir)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{run_dir.checkpoints_dir} holds no finished checkpoint")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), model.abstract_params(run.model)
        )
        params = checkpointer.restore_subtree(step, {"params": target})["params"]
    finally:
        checkpointer.close()
    return params, run.model, get_vocabulary(run.data.vocab), step


__all__ = ["load_for_inference"]
