"""Shared pieces of the training tests: a small run config, a loss-recording hook, and a script entry point
(`python tests/train_helpers.py RUN_DIR CACHE_DIR [--kill-at N] [overrides...]`) for tests that need a real
separate process (kill-and-resume, multi-process)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from gptjax import config, sharding
from gptjax.config import ModelConfig, RunConfig
from gptjax.hooks import add_standard_hooks
from gptjax.train import Trainer

# vocab 258 (>= the byte vocabulary's 257, and even) so tensor parallelism really shards the vocab axis.
SMALL_MODEL = ModelConfig(name="test", vocab_size=258, n_ctx=32, n_layer=2, n_head=4, d_model=32)


def small_run(run_dir: Path | str, cache_dir: Path | str, **overrides) -> RunConfig:
    run = RunConfig(
        model=SMALL_MODEL,
        run_dir=str(run_dir),
        steps=6,
        batch_size=8,
        seq_len=32,
        logging=config.LoggingConfig(every=1),
        held_out=config.HeldOutConfig(every=1000, batches=2),
        checkpoint=config.CheckpointConfig(every=1000),
        data=config.DataConfig(cache_dir=str(cache_dir)),
        optim=config.OptimConfig(learning_rate=3e-3, warmup_steps=1),
    )
    return config.override(run, [f"{k}={v}" for k, v in overrides.items()])


class LossRecorder:
    """Collects every step's loss (add with every=1; read as host floats on close, adding no sync per step)."""

    def __init__(self) -> None:
        self.losses: list = []

    def __call__(self, info) -> None:
        self.losses.append(info.metrics["loss"])

    def close(self) -> None:
        self.losses = [float(x) for x in self.losses]


class KillAfterCheckpoint:
    """SIGKILLs this process right after the checkpoint of step `step` is fully written: a crash with no
    chance to clean up, at a deterministic point (add with every=1 after the standard hooks)."""

    def __init__(self, trainer, step: int) -> None:
        self.trainer, self.step = trainer, step

    def __call__(self, info) -> None:
        if info.step == self.step:
            self.trainer.checkpointer.wait()
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAt:
    """Sends this process `signum` after step `step` (add with every=1)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def __call__(self, info) -> None:
        if info.step == self.step:
            os.kill(os.getpid(), self.signum)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("cache_dir")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)

    sharding.maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    run = config.override(small_run(args.run_dir, args.cache_dir), args.overrides)
    trainer = Trainer(run)
    trainer.restore_or_init()
    add_standard_hooks(trainer, progress=False)
    if args.kill_at is not None:
        trainer.add_hook(KillAfterCheckpoint(trainer, args.kill_at), every=1)
    trainer.train()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
