"""Evidence for GPT-1 fine-tuning (gptjax/finetune, issue #15): validation accuracy of a tiny model
fine-tuned from its pretrained weights vs from a random initialisation with the same budget, and with the
auxiliary LM loss (λ = 0.5) vs without (λ = 0); mean and spread over seeds, every run printed.

The pretrained model is a run directory (--from) or, by default, `--preset` pre-trained here for
`--pretrain-steps` steps on tinyshakespeare (byte vocabulary). Run from the repository root:
`python bench/finetune_evidence.py [--tasks boolq,piqa] [--seeds 0,1,2] [--train-limit N] [--eval-limit N]`;
bench/README.md records a run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from gptjax import config  # noqa: E402
from gptjax.config import RunConfig  # noqa: E402
from gptjax.finetune.run import build, finetune  # noqa: E402
from gptjax.hooks import add_standard_hooks  # noqa: E402
from gptjax.train import Trainer  # noqa: E402


def pretrain(out: Path, preset: str, steps: int) -> str:
    run = config.override(
        RunConfig(model=config.get_preset(preset), run_dir=str(out / "pretrain")),
        [f"steps={steps}", "batch_size=16", "seq_len=128", "optim.learning_rate=3e-3", "optim.warmup_steps=20"],
    )
    trainer = Trainer(run)
    trainer.restore_or_init()
    add_standard_hooks(trainer, progress=False)
    trainer.train()
    print(f"pretrained {preset} for {steps} steps on {run.data.task}: held-out loss {trainer.held_out_loss():.3f}")
    return run.run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", help="a pretrained gptjax run directory")
    parser.add_argument("--preset", default="tiny-200k")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--tasks", default="boolq,piqa")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--train-limit", type=int, default=1024)
    parser.add_argument("--eval-limit", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="the paper's 6.25e-5 is for GPT-1 size")
    parser.add_argument("--out", help="keep the run directories here (default: a temporary directory)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="finetune_evidence_"))
    source = args.source or pretrain(out, args.preset, args.pretrain_steps)
    seeds = [int(s) for s in args.seeds.split(",")]
    table: dict[tuple[str, str, float], list[float]] = {}
    for task, init, weight, seed in itertools.product(
        args.tasks.split(","), ("pretrained", "random"), (0.5, 0.0), seeds
    ):
        name = f"{task}-{init}-lambda{weight}-seed{seed}"
        overrides = [
            f"seed={seed}",
            f"finetune.aux_lm_weight={weight}",
            f"seq_len={args.seq_len}",
            f"optim.learning_rate={args.learning_rate}",
        ]
        start = time.perf_counter()
        trainer, dataset, spec = build(
            task,
            str(out / name),
            source if init == "pretrained" else None,
            None,
            args.preset,
            overrides,
            args.epochs,
            args.train_limit,
            args.eval_limit,
        )
        m = finetune(trainer, dataset, spec, progress=False)["metrics"]
        table.setdefault((task, init, weight), []).append(m["acc"])
        print(
            f"{name}: acc {m['acc']:.4f} ± {m['acc_stderr']:.4f} (n={m['num_examples']}, "
            f"{trainer.run.steps} steps, {time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    print("\n| task | init | λ | accuracy (mean over seeds) | spread (max - min) |\n|---|---|---|---|---|")
    for (task, init, weight), accs in table.items():
        print(f"| {task} | {init} | {weight} | {np.mean(accs):.4f} | {np.ptp(accs):.4f} |")


if __name__ == "__main__":
    main()
