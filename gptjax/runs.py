"""A run directory as a model store: a checkpoint's parameters, model config and vocabulary for inference
(generation, evaluation, export). Only the `params` entry of the saved train state is read (of a fine-tuning
run, its language model: the transformer with the new token rows, not the head), so a reader needs neither
the optimizer nor the trainer; the tokenizer is gptjax.plain_tokenizers', so reading a run
never imports TensorFlow."""

from __future__ import annotations

from typing import Any

import jax

from gptjax import model
from gptjax.checkpoint import Checkpointer, CheckpointError
from gptjax.config import ModelConfig
from gptjax.plain_tokenizers import Tokenizer, get_tokenizer
from gptjax.rundir import PathLike, RunDir


def load_for_inference(run_dir: PathLike, step: int | None = None) -> tuple[Any, ModelConfig, Tokenizer, int]:
    """(params, model config, tokenizer, step) from a run's checkpoint (the latest unless `step` is
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
        fine_tuned = bool(run.finetune.task)  # gptjax/finetune saves {"gpt": the LM, "head": its classifier}
        params = checkpointer.restore_subtree(step, {"params": {"gpt": target} if fine_tuned else target})["params"]
    finally:
        checkpointer.close()
    return params["gpt"] if fine_tuned else params, run.model, get_tokenizer(run.data.vocab), step


__all__ = ["load_for_inference"]
