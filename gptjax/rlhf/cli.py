"""`gptjax align toy`: the InstructGPT pipeline end to end on the synthetic task, figures to a JSON file."""

from __future__ import annotations

import argparse
import dataclasses

from gptjax import config
from gptjax.rlhf.pipeline import ToyExperiment, run_toy
from gptjax.rlhf.toy import ToyTask
from gptjax.rundir import write_json


def align_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gptjax align", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    toy = sub.add_parser("toy", help="pretrain -> SFT -> RM -> PPO / PPO-ptx / PPO(beta=0) and best-of-n")
    toy.add_argument("--out", required=True, help="JSON file for every figure")
    toy.add_argument("overrides", nargs="*", help="key=value on task.* and experiment.*, e.g. experiment.k=6")
    args = parser.parse_args(argv)
    task, exp = ToyTask(), ToyExperiment()
    task_over = [o.removeprefix("task.") for o in args.overrides if o.startswith("task.")]
    exp_over = [o.removeprefix("experiment.") for o in args.overrides if o.startswith("experiment.")]
    unknown = [o for o in args.overrides if not o.startswith(("task.", "experiment."))]
    if unknown:
        raise config.ConfigError(f"override {unknown[0]!r} must start with task. or experiment.")
    task, exp = config.override(task, task_over), config.override(exp, exp_over)
    result = run_toy(task, exp)
    write_json(args.out, result)
    print(f"wrote {args.out} ({dataclasses.asdict(exp)})")
    return 0
