"""Evidence for InstructGPT's pipeline (issue #14) on the toy task of gptjax.rlhf.toy, whose true reward r*
is known: pretrain -> SFT -> reward model on K-way Bradley–Terry rankings of SFT samples -> PPO (β = 0.02),
PPO-ptx, and PPO with β = 0, with best-of-n sampling from the SFT model as the baseline.

Printed: the RM's held-out pairwise accuracy beside the Bayes-optimal accuracy from τ and its Spearman
correlation with r*; for SFT, best-of-n and each PPO variant on held-out prompts, r* (with the SFT standard
deviation), the RM score, the KL to SFT in nats per sequence and the pretraining loss. bench/README.md
records a run.

Run from the repository root: `python bench/rlhf_toy.py [--out results.json] [experiment.key=value ...]`.
"""

from __future__ import annotations

import argparse
import time

from gptjax import config
from gptjax.rlhf.pipeline import ToyExperiment, run_toy
from gptjax.rlhf.toy import ToyTask
from gptjax.rundir import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write every figure as JSON here")
    parser.add_argument("overrides", nargs="*", help="ToyExperiment fields, e.g. ppo_iterations=20")
    args = parser.parse_args()
    start = time.perf_counter()
    result = run_toy(ToyTask(), config.override(ToyExperiment(), args.overrides))
    sft_std = result["sft"]["true_std"]
    for name in ("ppo", "ppo_ptx", "ppo_beta0"):
        gain = (result[name]["held_out"]["true_reward"] - result["sft"]["true_reward"]) / sft_std
        print(f"{name}: r* gain {gain:+.2f} SFT standard deviations")
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
