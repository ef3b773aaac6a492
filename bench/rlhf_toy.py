"""Evidence for InstructGPT's pipeline (issue #14) on the toy task of gptjax.rlhf.toy, whose true reward r*
is known: pretrain -> SFT -> reward model on K-way Bradley–Terry rankings of SFT samples -> PPO (β = 0.02),
PPO-ptx, and PPO with β = 0, with best-of-n sampling from the SFT model as the baseline.

Printed: the RM's held-out pairwise accuracy beside the Bayes-optimal accuracy from τ and its Spearman
correlation with r*; for SFT, best-of-n and each PPO variant on held-out prompts, r* (with the SFT standard
deviation), the RM score, the KL to SFT in nats per sequence and the pretraining loss. bench/README.md
records a run.

`--overopt 32,512` runs the over-optimisation study instead (Gao et al. 2022): for each RM size (prompts
whose K SFT samples are ranked; everything else as the default RM) PPO with β = 0 for `--overopt-iterations`
iterations, printing the RM score, r* and the KL to SFT of each iteration's rollouts (running means over 5
iterations) and where r* peaks.

Run from the repository root: `python bench/rlhf_toy.py [--out results.json] [--dir DIR] [key=value ...]`;
each stage is a run directory under DIR (a temporary directory by default), so a killed run resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from typing import Any

import numpy as np

from gptjax import config
from gptjax.rlhf.stages import ToyExperiment, ppo_overrides, rm_dir, run_toy, toy_ppo, toy_stage, toy_supervised
from gptjax.rlhf.toy import ToyTask
from gptjax.rundir import PathLike, write_json

WINDOW = 5  # iterations averaged in the over-optimisation curves (64 rollouts each)


def curves(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Running means (WINDOW iterations) of the rollouts' RM score, r* and KL, r*'s peak and the last values."""
    smooth = {
        key: np.convolve([h[key] for h in history], np.ones(WINDOW) / WINDOW, "valid").tolist()
        for key in ("rm_score", "true_reward", "kl")
    }
    peak = int(np.argmax(smooth["true_reward"]))
    at = lambda i: {key: values[i] for key, values in smooth.items()}  # noqa: E731
    return {"smooth": smooth, "peak_iteration": peak + WINDOW, "at_peak": at(peak), "last": at(-1)}


def overoptimisation(
    task: ToyTask, exp: ToyExperiment, work_dir: PathLike, sizes: list[int], iterations: int
) -> dict[str, Any]:
    """PPO with β = 0 against an RM trained on each of `sizes` prompts (× K samples), from the same SFT model."""
    stage = toy_stage(task, exp, work_dir)
    out: dict[str, Any] = {"task": dataclasses.asdict(task), "experiment": dataclasses.asdict(exp), "runs": {}}
    for n in sizes:
        rm = toy_supervised(task, exp, stage, n)["rm"]
        overrides = [*ppo_overrides(exp), f"steps={iterations}", "ppo.kl_coef=0"]
        run = toy_ppo(stage, work_dir, f"overopt_rm{n}", rm_dir(exp, n), overrides)
        out["runs"][n] = {"rm": rm, **run, "curves": curves(run["history"])}
        c = out["runs"][n]["curves"]
        fit = f"accuracy/Bayes {rm['accuracy_over_bayes']:.3f}, Spearman {rm['spearman_with_true_reward']:.3f}"
        print(f"RM on {n} prompts: {fit}")
        for i in range(0, len(c["smooth"]["kl"]), WINDOW):
            print(f"  it. {i + WINDOW}: " + ", ".join(f"{k} {v[i]:.3f}" for k, v in c["smooth"].items()))
        print(f"  r* peaks at it. {c['peak_iteration']} {c['at_peak']}; last {c['last']}; held out {run['held_out']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write every figure as JSON here")
    parser.add_argument("--dir", help="the stages' run directories (default: a temporary directory)")
    parser.add_argument("--overopt", help="comma-separated RM sizes (prompts): run the over-optimisation study")
    parser.add_argument("--overopt-iterations", type=int, default=60, help="β = 0 PPO iterations per RM size")
    parser.add_argument("overrides", nargs="*", help="ToyExperiment fields, e.g. ppo_iterations=20")
    args = parser.parse_args()
    start = time.perf_counter()
    exp = config.override(ToyExperiment(), args.overrides)
    with tempfile.TemporaryDirectory(prefix="rlhf-toy-") as tmp:
        if args.overopt:
            sizes = [int(n) for n in args.overopt.split(",")]
            result = overoptimisation(ToyTask(), exp, args.dir or tmp, sizes, args.overopt_iterations)
        else:
            result = run_toy(ToyTask(), exp, args.dir or tmp)
            sft_std = result["sft"]["true_std"]
            for name in ("ppo", "ppo_ptx", "ppo_beta0"):
                gain = (result[name]["held_out"]["true_reward"] - result["sft"]["true_reward"]) / sft_std
                print(f"{name}: r* gain {gain:+.2f} SFT standard deviations")
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
