"""Run directories as model stores: load a checkpoint's parameters for inference, or write given
parameters (e.g. imported Hugging Face weights) as step 0 of a new run that can be evaluated or trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import seqio

from gptjax import train
from gptjax.checkpoint import CheckpointError, Checkpointer
from gptjax.config import DataConfig, ModelConfig, RunConfig, dumps, from_dict


def read_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a gptjax run directory")
    return from_dict(RunConfig, json.loads(path.read_text()))


def load_for_inference(run_dir: str | Path, step: int | None = None) -> tuple[Any, ModelConfig, seqio.Vocabulary]:
    """(params, model config, vocabulary) from a run's checkpoint (the latest unless `step` is given),
    on the first local device (callers that shard, like the eval layer, place them further)."""
    from gptjax.tokenizers import get_vocabulary

    run = read_run_config(run_dir)
    checkpointer = Checkpointer(Path(run_dir) / "checkpoints")
    step = checkpointer.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"{Path(run_dir) / 'checkpoints'} holds no finished checkpoint")
    tx = train.make_optimizer(run)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, train.abstract_state(run, tx))
    state = checkpointer.restore(step, train.restore_target(run, tx, shardings))
    checkpointer.close()
    return state.params, run.model, get_vocabulary(run.data.vocab)


def save_params(run_dir: str | Path, cfg: ModelConfig, params: Any, vocab: str = "gpt2") -> None:
    """Write `params` as step 0 of a run in `run_dir` (fresh optimizer state), so `gptjax eval` and
    `gptjax train --run-dir` (fine-tuning) both accept it."""
    run = RunConfig(model=cfg, data=DataConfig(vocab=vocab), run_dir=str(run_dir))
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "config.json").write_text(dumps(run))
    tx = train.make_optimizer(run)
    state = train.init_state(run, tx, jax.random.key_data(jax.random.key(run.seed)), params=params)
    checkpointer = Checkpointer(Path(run_dir) / "checkpoints")
    checkpointer.save(0, state)
    checkpointer.wait()
    checkpointer.close()
