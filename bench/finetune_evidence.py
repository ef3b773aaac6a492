"""Evidence for GPT-1 fine-tuning (gptjax/finetune, issue #15): accuracy of a tiny model fine-tuned from its
pretrained weights vs from a random initialisation with the same budget, with the auxiliary LM loss
(λ = 0.5) vs without (λ = 0), over seeds (mean and spread, every run printed), beside the same pretrained
model's zero- and few-shot accuracy from `gptjax eval` on the same documents, and a `gptjax report` of both.

Each task is scored on the split `gptjax eval` scores (test where the benchmark has one, else validation),
first `--eval-limit` documents. Chance, the majority class and a "longest answer" rule on those documents
are printed as reference points. The pretrained model is a run directory (--from) or `--preset` pre-trained
here for `--pretrain-steps` on `--pretrain-task` (byte vocabulary). Run from the repository root:
`python bench/finetune_evidence.py [--tasks openbookqa,arc_easy] [--seeds 0,1,2] ...`; bench/README.md
records a run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from eval.report import DEFAULT_PRIMARY_METRICS, build_report  # noqa: E402
from gptjax import config, paths  # noqa: E402
from gptjax.cli import main as gptjax_main  # noqa: E402
from gptjax.config import RunConfig  # noqa: E402
from gptjax.finetune.run import build, finetune  # noqa: E402
from gptjax.finetune.tasks import get_task, load_examples  # noqa: E402
from gptjax.hooks import add_standard_hooks  # noqa: E402
from gptjax.train import Trainer  # noqa: E402

CONDITIONS = (("pretrained", 0.5), ("pretrained", 0.0), ("random", 0.5))  # (initialisation, λ)


def pretrain(out: Path, preset: str, task: str, steps: int) -> str:
    run = config.override(
        RunConfig(model=config.get_preset(preset), run_dir=str(out / "pretrain")),
        [
            f"data.task={task}",
            f"steps={steps}",
            "batch_size=16",
            "seq_len=128",
            "optim.learning_rate=3e-3",
            "optim.warmup_steps=30",
        ],
    )
    trainer = Trainer(run)
    trainer.restore_or_init()
    add_standard_hooks(trainer, progress=False)
    trainer.train()
    print(f"pretrained {preset} for {steps} steps on {task}: held-out loss {trainer.held_out_loss():.3f}")
    return run.run_dir


def scored_split(task: str) -> str:
    """The split `gptjax eval` scores: test where the benchmark has one (lm-eval's rule), else validation."""
    return "test" if (paths.data_dir() / "benchmarks" / task / "test.jsonl").exists() else "validation"


def reference_points(task: str, split: str, limit: int) -> dict[str, float]:
    """Chance, the majority label and "pick the longest answer" on the scored documents."""
    examples = load_examples(get_task(task), split, paths.data_dir() / "benchmarks", limit)
    labels = [e.label for e in examples]
    longest = [max(range(len(e.sequences)), key=lambda k: len(e.sequences[k][-1])) for e in examples]
    return {
        "chance": float(np.mean([1 / len(e.sequences) for e in examples])),
        "majority": Counter(labels).most_common(1)[0][1] / len(labels),
        "longest answer": float(np.mean(np.array(longest) == np.array(labels))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", help="a pretrained gptjax run directory")
    parser.add_argument("--preset", default="tiny-450k")
    parser.add_argument("--pretrain-task", default="wikitext2")
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--tasks", default="openbookqa,arc_easy")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--train-limit", type=int, default=1024)
    parser.add_argument("--eval-limit", type=int, default=500)
    parser.add_argument("--seq-len", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="the paper's 6.25e-5 is for GPT-1 size")
    parser.add_argument("--shots", default="0,5", help="K values of the pretrained model's gptjax eval")
    parser.add_argument("--out", help="keep the run directories here (default: a temporary directory)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="finetune_evidence_"))
    source = args.source or pretrain(out, args.preset, args.pretrain_task, args.pretrain_steps)
    tasks, seeds = args.tasks.split(","), [int(s) for s in args.seeds.split(",")]
    table: dict[tuple[str, str, float], list[float]] = {}
    report_inputs = []
    for task, (init, weight), seed in itertools.product(tasks, CONDITIONS, seeds):
        name = f"{task}-{init}-lambda{weight}-seed{seed}"
        overrides = [
            f"seed={seed}",
            f"finetune.aux_lm_weight={weight}",
            f"seq_len={args.seq_len}",
            f"batch_size={args.batch_size}",
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
            eval_split=scored_split(task),
        )
        result = finetune(trainer, dataset, spec, progress=False)["results"][0]
        m = result["metrics"]
        table.setdefault((task, init, weight), []).append(m["acc"])
        if (init, weight, seed) == ("pretrained", 0.5, seeds[0]):
            report_inputs.append(trainer.run_dir.finetune_file)
        print(
            f"{name}: acc {m['acc']:.4f} ± {m['acc_stderr']:.4f} (n={result['num_docs']} {result['split']}, "
            f"{trainer.run.steps} steps, {time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    print("\n| task | split | init | λ | accuracy (mean of seeds) | spread (max - min) | per seed |")
    print("|---|---|---|---|---|---|---|")
    for (task, init, weight), accs in table.items():
        per_seed = ", ".join(f"{a:.4f}" for a in accs)
        mean, spread = np.mean(accs), np.ptp(accs)
        print(f"| {task} | {scored_split(task)} | {init} | {weight} | {mean:.4f} | {spread:.4f} | {per_seed} |")
    for task in tasks:
        points = reference_points(task, scored_split(task), args.eval_limit)
        print(f"{task} reference points ({scored_split(task)}):", ", ".join(f"{k} {v:.4f}" for k, v in points.items()))
    eval_file = out / f"eval-{'-'.join(tasks)}.json"
    status = gptjax_main(
        ["eval", "--checkpoint", source, "--tasks", args.tasks, "--shots", args.shots]
        + ["--limit", str(args.eval_limit), "--out", str(eval_file)]
    )
    if status:
        raise SystemExit(f"gptjax eval failed (exit {status}); the fine-tuning figures above stand")
    for result in json.loads(eval_file.read_text())["results"]:
        accs = {k: round(v, 4) for k, v in result["metrics"].items() if k.startswith("acc")}
        print(
            f"pretrained {result['task']} K={result['num_fewshot']} ({result['split']}, n={result['num_docs']}): {accs}"
        )
    report = out / f"report-{'-'.join(tasks)}"
    build_report([eval_file, *report_inputs], report, {**DEFAULT_PRIMARY_METRICS, **dict.fromkeys(tasks, "acc")})
    print(f"gptjax report of the eval and the seed-{seeds[0]} λ=0.5 fine-tuned runs: {report / 'report.md'}")


if __name__ == "__main__":
    main()
