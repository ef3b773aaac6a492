"""`gptjax plan` for the published GPT-3 presets on TPU slices: per-chip memory, the largest per-chip batch
at context 2048, FLOPs and compile times, with the settings the README recommends; and compile time against
depth with and without the layer scan.

Every compile runs the real TPU compiler (libtpu) on this CPU, so a large preset takes minutes per compile
and a batch search several compiles; run one case per process to plan several slices in parallel (libtpu
reads its environment once). Run as a script from the repository root:

    python bench/plan_presets.py [--case gpt3-xl/v5e-16 ... [--no-flops]] [--table] [--depth] [--policies]
        [--out r.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass

from gptjax import config, plan, tpu

# The settings every recommendation shares: bf16 compute (fp32 parameters and optimizer state), scanned
# layers (flat compile time), and the LM head + loss over 512 positions at a time.
COMMON = ("model.dtype=bfloat16", "model.scan_layers=true", "model.loss_chunk=512")
FSDP = ("mesh.data=1", "mesh.fsdp=-1")  # parameters and optimizer state sharded over every chip
# gpt3-13b-table's d_model 5140 = 4 x 5 x 257 divides by no larger power of two, so FSDP over 4 chips (the
# rules replicate a dimension its mesh axes do not divide) and data parallelism over the groups of 4.
FSDP_4 = ("mesh.data=-1", "mesh.fsdp=4")
# GPT-2's attention dropout keeps attention on the XLA path, which libtpu's compiler crashes on (a stack
# overflow; bench/README.md); without it `auto` picks splash attention.
SPLASH = ("model.attn_dropout=0",)


@dataclass(frozen=True)
class Recipe:
    slice: str
    remat: str
    per_chip: int = 1  # sequences per chip in each micro-batch
    micro_batches: int = 1
    mesh: tuple[str, ...] = FSDP
    extra: tuple[str, ...] = ()

    def run(self, preset: str, *extra: str) -> config.RunConfig:
        batch = self.per_chip * self.micro_batches * tpu.slice_type(self.slice).chips
        settings = [f"model.remat={self.remat}", f"batch_size={batch}", f"micro_batches={self.micro_batches}"]
        overrides = [*COMMON, *self.mesh, *settings, *self.extra, *extra]
        return config.override(config.RunConfig(model=config.get_preset(preset)), overrides)


# The largest-batch searches: case -> (preset, recipe). Each starts from the per-chip batch of the README's
# table (a known fit; the search doubles from there), with remat=full.
CASES = {
    "gpt3-xl/v5e-16": ("gpt3-xl", Recipe("v5e-16", "full", 8)),
    "gpt3-6.7b/v5e-64": ("gpt3-6.7b", Recipe("v5e-64", "full", 16)),
    "gpt3-6.7b/v4-64": ("gpt3-6.7b", Recipe("v4-64", "full", 16)),
    "gpt3-13b/v5p-128": ("gpt3-13b", Recipe("v5p-128", "full", 16)),
    "gpt3-175b/v5p-512": ("gpt3-175b", Recipe("v5p-512", "full", 6)),
}
# The README's preset table: a recipe per preset at about the paper's batch (GPT-3 Table 2.1's tokens; GPT-2's
# 512 sequences, GPT-1's 64).
RECOMMENDED = {
    "gpt1": Recipe("v5e-8", "none", 8),
    "gpt2-small": Recipe("v5e-32", "save_dot_except_mlp", 16, extra=SPLASH),
    "gpt2-medium": Recipe("v5e-32", "save_dot_except_mlp", 16, extra=SPLASH),
    "gpt2-large": Recipe("v5e-32", "full", 16, extra=SPLASH),
    "gpt2-xl": Recipe("v5e-32", "full", 16, extra=SPLASH),
    "gpt3-small": Recipe("v5e-16", "save_dot_except_mlp", 16),
    "gpt3-medium": Recipe("v5e-16", "save_dot_except_mlp", 8, 2),
    "gpt3-large": Recipe("v5e-32", "save_dot_except_mlp", 8),
    "gpt3-xl": Recipe("v5e-16", "save_dot_except_mlp", 8, 4),
    "gpt3-xl-table": Recipe("v5e-16", "full", 8, 4),
    "gpt3-2.7b": Recipe("v5e-32", "full", 16),
    "gpt3-6.7b": Recipe("v5e-64", "full", 16),
    "gpt3-13b": Recipe("v5p-128", "save_dot_except_mlp", 16),
    "gpt3-13b-table": Recipe("v5p-128", "full", 16, mesh=FSDP_4),
    "gpt3-175b": Recipe("v5p-512", "full", 6),
}


def plan_case(name: str, max_per_chip: int, flops: bool) -> dict:
    preset, recipe = CASES[name]
    start = time.perf_counter()
    result = plan.plan_slice(recipe.run(preset), recipe.slice, max_per_chip=max_per_chip, flops=flops)
    print(
        f"== {name} (remat={recipe.remat}; {time.perf_counter() - start:.0f} s in all)\n{result.format()}\n", flush=True
    )
    return {"case": name, **result.to_json()}


def table_row(preset: str) -> dict:
    """One compile of a preset at its recommended settings: does it fit, and its peak per chip."""
    recipe = RECOMMENDED[preset]
    result = plan.plan_slice(recipe.run(preset), recipe.slice, search=False, flops=False)
    print(f"== {preset}\n{result.format()}\n", flush=True)
    return {"preset": preset, **result.to_json()}


def depth_study(slice_name: str = "v5e-16") -> list[dict]:
    """Compile time of gpt3-xl's width at several depths, scanned and unrolled (one sequence per chip)."""
    rows = []
    for scan, depths in ((True, (8, 24, 48)), (False, (8, 24))):
        for n_layer in depths:
            run = Recipe(slice_name, "full").run("gpt3-xl", f"model.n_layer={n_layer}", f"model.scan_layers={scan}")
            attempt = plan.compile_step(run, tpu.topology_devices(slice_name))
            print(f"gpt3-xl width, {n_layer} layers, scan={scan}: compile {attempt.seconds:.0f} s", flush=True)
            rows.append({"n_layer": n_layer, "scan_layers": scan, "compile_seconds": attempt.seconds})
    return rows


def policy_study(per_chip: int = 8, slice_name: str = "v5e-16") -> list[dict]:
    """Per-chip memory of gpt3-xl at `per_chip` sequences per chip under each remat policy."""
    rows = []
    for policy in ("none", "minimal", "minimal_with_context", "save_dot_except_mlp", "save_qkv_proj", "full"):
        run = Recipe(slice_name, policy, per_chip).run("gpt3-xl")
        attempt = plan.compile_step(run, tpu.topology_devices(slice_name))
        memory = f"{attempt.memory.peak / tpu.GiB:.2f} GiB" if attempt.memory else f"does not fit ({attempt.oom[:120]})"
        print(f"gpt3-xl, {per_chip} per chip, remat={policy}: {memory}, compile {attempt.seconds:.0f} s", flush=True)
        rows.append({"remat": policy, **dataclasses.asdict(attempt)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=list(CASES), help="default: every case")
    parser.add_argument("--max-batch-per-chip", type=int, default=64)
    parser.add_argument("--no-flops", action="store_true", help="skip the compiled FLOP count (two more compiles)")
    parser.add_argument("--depth", action="store_true", help="only the compile-time-against-depth study")
    parser.add_argument("--policies", action="store_true", help="only the remat-policy memory study")
    parser.add_argument("--table", nargs="*", choices=list(RECOMMENDED), help="README table rows (none named: all)")
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(message)s")
    logging.getLogger(plan.__name__).setLevel(logging.INFO)  # each compile as it finishes
    if args.depth or args.policies:
        plan.tpu_environment(tpu.slice_type("v5e-16"))  # plan_slice sets it for each case's slice
    if args.depth:
        results: object = depth_study()
    elif args.policies:
        results = policy_study()
    elif args.table is not None:
        results = [table_row(preset) for preset in args.table or RECOMMENDED]
    else:
        results = [plan_case(name, args.max_batch_per_chip, not args.no_flops) for name in args.case or CASES]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
