"""`gptjax align <stage>`: InstructGPT's stages on the toy task, each in its own run directory
(gptjax.rlhf.stages), or `toy`: all of them chained, every figure to a JSON file."""

from __future__ import annotations

import argparse
import tempfile

from gptjax import config
from gptjax.rlhf.stages import ToyExperiment, prepare, run_stage, run_toy
from gptjax.rlhf.toy import ToyTask
from gptjax.rundir import write_json

OVERRIDES = "key=value: task.*, ppo.*, rm_prompts, k, ... (align.json) or RunConfig fields (steps, optim.*, ...)"


def align_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gptjax align", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    stages = {
        "pretrain": ("a fresh model on the toy pretraining language", ()),
        "sft": ("supervised fine-tuning on demonstrations", (("--from", "PRETRAIN_RUN"),)),
        "rm": ("the reward model on K-way rankings of the SFT model's samples", (("--from", "SFT_RUN"),)),
        "ppo": ("PPO(-ptx) against the RM, KL-penalised to the SFT policy", (("--sft", "SFT_RUN"), ("--rm", "RM_RUN"))),
    }
    for name, (text, sources) in stages.items():
        stage = sub.add_parser(name, help=text)
        stage.add_argument("--run-dir", required=True, help="this stage's run directory (resumed if present)")
        for flag, metavar in sources:
            stage.add_argument(flag, dest=metavar.lower(), metavar=metavar, required=True)
        stage.add_argument("overrides", nargs="*", help=OVERRIDES)
    toy = sub.add_parser("toy", help="pretrain -> SFT -> RM -> PPO / PPO-ptx / PPO(beta=0) and best-of-n")
    toy.add_argument("--out", required=True, help="JSON file for every figure")
    toy.add_argument("--dir", help="where the stages' run directories go (default: a temporary directory)")
    toy.add_argument("overrides", nargs="*", help="key=value on task.* and experiment.*, e.g. experiment.k=6")
    args = parser.parse_args(argv)
    if args.stage == "toy":
        return _toy(args)
    runs = [getattr(args, m.lower()) for _, m in stages[args.stage][1]]
    result = run_stage(*prepare(args.stage, args.run_dir, runs, args.overrides))
    print(f"{args.stage} done in {args.run_dir}: {result}")
    return 0


def _toy(args: argparse.Namespace) -> int:
    task_over = [o.removeprefix("task.") for o in args.overrides if o.startswith("task.")]
    exp_over = [o.removeprefix("experiment.") for o in args.overrides if o.startswith("experiment.")]
    unknown = [o for o in args.overrides if not o.startswith(("task.", "experiment."))]
    if unknown:
        raise config.ConfigError(f"override {unknown[0]!r} must start with task. or experiment.")
    task, exp = config.override(ToyTask(), task_over), config.override(ToyExperiment(), exp_over)
    with tempfile.TemporaryDirectory(prefix="gptjax-align-") as tmp:
        result = run_toy(task, exp, args.dir or tmp)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0
