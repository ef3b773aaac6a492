"""What a sweep point costs on this CPU: CPU seconds per training step of each tiny preset, and the wall
time of a small sweep trained by one process against two single-threaded workers (`gptjax sweep --workers`).

CPU seconds, not wall seconds, are what a shared machine still measures: a process descheduled by other
jobs accrues no CPU time, so CPU-s per step (the slope between two step counts, which cancels compilation)
is close to what the step costs on an idle core. The default sweep's budget is planned from it
(experiments/sweeps/scaling_study.toml; figures in bench/README.md).

    .venv/bin/python bench/sweep_cost.py steps [--presets tiny-25k,tiny-1.2m] [--batch-size 16] [--seq-len 128]
    .venv/bin/python bench/sweep_cost.py workers SWEEP_FILE [--out DIR]   # 1 process, then 2 workers
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--threads", type=int, default=1)
if _pre.parse_known_args()[0].threads == 1:  # read before JAX starts its thread pool
    from experiments.runner import worker_environment  # noqa: E402

    os.environ["XLA_FLAGS"] = worker_environment()["XLA_FLAGS"]

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from gptjax import model, sharding, train  # noqa: E402
from gptjax.config import MeshConfig, RunConfig, get_preset  # noqa: E402


def cpu_seconds_per_step(run: RunConfig, steps: tuple[int, int] = (4, 16)) -> tuple[float, float]:
    """(CPU-s, wall-s) per jitted train step of `run` on one device: the difference between timing
    steps[1] and steps[0] steps, each dispatched back to back and waited for, divided by their difference."""
    mesh = sharding.make_mesh(MeshConfig(), jax.devices()[:1])
    tx = train.make_optimizer(run)
    shardings = train.state_shardings(run, tx, mesh)
    batch_sharding = sharding.batch_sharding(mesh, run.mesh.rules)
    tokens = np.random.default_rng(0).integers(0, run.model.vocab_size, (run.batch_size, run.sequence_length + 1))
    ones = np.ones((run.batch_size, run.sequence_length), np.int32)
    batch = {
        "inputs": tokens[:, :-1].astype(np.int32),
        "targets": tokens[:, 1:].astype(np.int32),
        "segment_ids": ones,
        "positions": np.cumsum(ones, axis=1) - 1,
        "loss_mask": ones,
    }
    times = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.flax_rules(run.mesh.rules)):
        state = train.init_sharded_state(run, tx, shardings)
        step_fn = train.jit_train_step(run, tx, shardings, batch_sharding)
        placed = jax.device_put(batch, batch_sharding)
        state, _ = step_fn(state, placed)  # compile
        for n in steps:
            jax.block_until_ready(state)
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(n):
                state, out = step_fn(state, placed)
            jax.block_until_ready(out)
            times.append((time.process_time() - cpu, time.perf_counter() - wall))
    span = steps[1] - steps[0]
    return (times[1][0] - times[0][0]) / span, (times[1][1] - times[0][1]) / span


def _steps(args: argparse.Namespace) -> None:
    print(f"load average {os.getloadavg()[0]:.1f}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print("| Preset | Non-emb. N | FLOPs/token | CPU ms/step | Wall ms/step | CPU µs/token | GFLOP per CPU-s |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name in args.presets.split(","):
        run = RunConfig(model=get_preset(name), batch_size=args.batch_size, seq_len=args.seq_len)
        cpu, wall = cpu_seconds_per_step(run)
        per_token = model.flops_per_token(run.model, run.sequence_length)
        tokens = run.batch_size * run.sequence_length
        n = model.param_count(run.model).non_embedding
        rows.append({"preset": name, "non_embedding_params": n, "cpu_s_per_step": cpu, "wall_s_per_step": wall})
        print(
            f"| {name} | {n:,} | {per_token / 1e6:.2f}M | {cpu * 1e3:.1f} | {wall * 1e3:.1f} | "
            f"{cpu / tokens * 1e6:.2f} | {per_token * tokens / cpu / 1e9:.1f} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


def _workers(args: argparse.Namespace) -> None:
    """The same sweep trained twice from scratch: one process (JAX's default threads), then 2 workers."""
    for workers in (1, 2):
        out = f"{args.out}/workers{workers}"
        command = [sys.executable, "-m", "gptjax.cli", "sweep", args.sweep_file, "--out", out, "--no-progress"]
        command += ["--no-report", "--workers", str(workers)]
        load = os.getloadavg()[0]
        started, before = time.perf_counter(), os.times()
        subprocess.run(command, check=True)
        after = os.times()
        cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
        print(
            f"workers={workers}: wall {time.perf_counter() - started:.0f} s, CPU {cpu:.0f} s "
            f"(children), load average {load:.1f} at the start"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="1: single-threaded XLA, as a sweep worker")
    sub = parser.add_subparsers(dest="what", required=True)
    steps = sub.add_parser("steps", help="CPU seconds per training step of each preset")
    steps.add_argument("--presets", default="tiny-25k,tiny-80k,tiny-200k,tiny-450k,tiny-1.2m,tiny-2.7m")
    steps.add_argument("--batch-size", type=int, default=16)
    steps.add_argument("--seq-len", type=int, default=128)
    steps.add_argument("--out", help="also write the rows as JSON here")
    workers = sub.add_parser("workers", help="one process against two single-threaded workers on a sweep")
    workers.add_argument("sweep_file")
    workers.add_argument("--out", default="/tmp/sweep_cost")
    args = parser.parse_args()
    _steps(args) if args.what == "steps" else _workers(args)


if __name__ == "__main__":
    main()
