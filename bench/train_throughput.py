"""Training throughput of gptjax's jitted train step next to the PyTorch eager reference, same model.

Both sides run the full update (forward, backward, global-norm clipping, AdamW with the schedule) in fp32
on random tokens, gptjax on one device and (with `--host-devices N`, default 2) data-parallel over N
emulated host devices, one per core, which is how JAX spreads a step over a CPU host's cores;
tests/test_torch_reference.py checks that the two sides compute the same thing. MFU uses gptjax's model
FLOP count (model.FLOPS_CONVENTION) for every side, against the host's peak (on CPU: a measured matmul
rate, see gptjax.metrics.measure_matmul_peak). It also times the step's matrix products alone on each side
(bench/gemm_floor.py): the torch step divided by XLA's products bounds the ratio any gptjax step could reach.

Run as a script from the repository root: `python bench/train_throughput.py [--bench nano] [--out r.json]`.
"""

from __future__ import annotations

import argparse
import json
import os
import time

# XLA fixes the number of host (CPU) devices when JAX starts, so --host-devices is read before jax is imported.
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--host-devices", type=int, default=2)
HOST_DEVICES = _pre.parse_known_args()[0].host_devices
if HOST_DEVICES > 1:
    os.environ["XLA_FLAGS"] = (
        f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={HOST_DEVICES}"
    ).strip()

import flax.linen as nn  # noqa: E402
import gemm_floor  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch_reference  # noqa: E402

from gptjax import metrics, model, sharding, train  # noqa: E402
from gptjax.config import MeshConfig, OptimConfig, RunConfig  # noqa: E402


def jax_tokens_per_s(run: RunConfig, steps: int, warmup: int, devices: list[jax.Device], seed: int = 0) -> float:
    """Tokens/s of `train.make_train_step` jitted as the Trainer jits it (state and batch sharded over a
    `data` mesh of `devices`, state donated), dispatched back to back as the trainer does (no per-step
    host sync); the clock stops when the last step's outputs are ready."""
    mesh = sharding.make_mesh(MeshConfig(data=len(devices)), devices)
    tx = train.make_optimizer(run)
    state_shardings = train.state_shardings(run, tx, mesh)
    batch_sharding = sharding.batch_sharding(mesh, run.mesh.rules)
    batch, seq_len = run.batch_size, run.sequence_length
    tokens = np.random.default_rng(seed).integers(0, run.model.vocab_size, (warmup + steps, batch, seq_len + 1))
    ones = np.ones((batch, seq_len), np.int32)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.flax_rules(run.mesh.rules)):
        state = train.init_sharded_state(run, tx, state_shardings)
        step_fn = train.jit_train_step(run, tx, state_shardings, batch_sharding)
        batches = [
            jax.device_put(
                {
                    "inputs": t[:, :-1].astype(np.int32),
                    "targets": t[:, 1:].astype(np.int32),
                    "segment_ids": ones,
                    "positions": np.cumsum(ones, axis=1) - 1,
                    "loss_mask": ones,
                },
                batch_sharding,
            )
            for t in tokens
        ]
        for b in batches[:warmup]:  # the first call compiles
            state, out = step_fn(state, b)
        jax.block_until_ready(out)
        start = time.perf_counter()
        for b in batches[warmup:]:
            state, out = step_fn(state, b)
        jax.block_until_ready((state, out))
    return steps * batch * seq_len / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bench",
        choices=sorted(torch_reference.BENCH_CONFIGS),
        action="append",
        help="benchmark config (repeatable; default: all)",
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument(
        "--host-devices",
        type=int,
        default=2,
        help="emulated host devices; with more than 1, gptjax also runs data-parallel over them",
    )
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = jax.devices()
    sides = {"gptjax": devices[:1]}
    if len(devices) > 1:  # one emulated device per core, the batch sharded over a data mesh of them
        sides[f"gptjax x{len(devices)}"] = devices
    results = []
    for name in args.bench or sorted(torch_reference.BENCH_CONFIGS):
        bench = torch_reference.BENCH_CONFIGS[name]
        # The schedule's values do not change the cost of a step; warm-up must only fit in the run.
        run = RunConfig(
            model=bench.model,
            mesh=MeshConfig(data=1),
            optim=OptimConfig(warmup_steps=1),
            batch_size=bench.batch_size,
            steps=args.warmup + args.steps,
        )
        throughput = metrics.Throughput.for_run(run, devices[0].device_kind, n_devices=1)
        # Per device, emulated host devices get an equal share of the host's measured matmul rate; every side
        # here uses the whole host, so MFU is against the host's rate.
        host_peak = throughput.peak_flops_per_device * len(devices)
        tokens_per_s = {
            side: jax_tokens_per_s(run, args.steps, args.warmup, side_devices) for side, side_devices in sides.items()
        }
        tokens_per_s["torch"] = torch_reference.measure_tokens_per_s(
            bench.model, bench.batch_size, run.sequence_length, args.steps, args.warmup
        )
        mfu = {side: tps * throughput.flops_per_token / host_peak for side, tps in tokens_per_s.items()}
        # The step's matrix products timed alone: no step on a side is faster than its products.
        gemms = gemm_floor.step_gemms(bench.model, bench.batch_size, run.sequence_length)
        floor_s = {
            side: gemm_floor.floor_seconds(gemms, lambda g, d=side_devices: gemm_floor.xla_seconds(g, d))
            for side, side_devices in sides.items()
        }
        floor_s["torch"] = gemm_floor.floor_seconds(gemms, gemm_floor.torch_seconds)
        torch_step_s = throughput.tokens_per_step / tokens_per_s["torch"]
        results.append(
            {
                "bench": name,
                "params": model.param_count(bench.model).total,
                "batch_size": bench.batch_size,
                "seq_len": run.sequence_length,
                "tokens_per_s": tokens_per_s,
                "mfu": mfu,
                "host_peak_flops": host_peak,
                "gemm_floor_s": floor_s,
                "torch_step_s": torch_step_s,
                **throughput.metadata(),
            }
        )
        print(
            f"{name}: "
            + ", ".join(f"{side} {tps:,.0f} tok/s (MFU {mfu[side]:.1%})" for side, tps in tokens_per_s.items())
        )
        print(
            f"{name}: " + ", ".join(f"{side}/torch {tokens_per_s[side] / tokens_per_s['torch']:.2f}x" for side in sides)
        )
        print(
            f"{name}: matrix products alone {', '.join(f'{side} {s * 1e3:,.1f} ms' for side, s in floor_s.items())}"
            f" per step; torch's whole step {torch_step_s * 1e3:,.1f} ms, so with XLA's matmul kernels "
            + ", ".join(f"{side}/torch <= {torch_step_s / floor_s[side]:.2f}x" for side in sides)
        )
    print(
        f"host {devices[0].device_kind} as {len(devices)} device(s), {os.cpu_count()} cores, peak "
        f"{host_peak / 1e9:,.0f} GFLOP/s ({throughput.peak_source} fp32 matmul), torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads, jax {jax.__version__}"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
