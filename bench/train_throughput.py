"""Training throughput of gptjax's jitted train step next to the PyTorch eager reference, same model.

Both sides run the full update (forward, backward, global-norm clipping, AdamW with the schedule) on one
device in fp32 on random tokens; tests/test_torch_reference.py checks that they compute the same thing.
MFU uses gptjax's model FLOP count (model.FLOPS_CONVENTION) for both, against the device's peak (on CPU:
a measured matmul rate, see gptjax.metrics.measure_matmul_peak).

Run as a script from the repository root: `python bench/train_throughput.py [--bench nano] [--out r.json]`.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

import torch_reference
from gptjax import metrics, model, train
from gptjax.config import MeshConfig, OptimConfig, RunConfig


def jax_tokens_per_s(run: RunConfig, steps: int, warmup: int, seed: int = 0) -> float:
    """Tokens/s of `train.make_train_step` jitted with donation, dispatched back to back as the trainer
    does (no per-step host sync); the clock stops when the last step's outputs are ready."""
    tx = train.make_optimizer(run)
    state = jax.jit(lambda key: train.init_state(run, tx, key))(jax.random.key_data(jax.random.key(seed)))
    step_fn = jax.jit(train.make_train_step(run, tx), donate_argnums=(0,))
    batch, seq_len = run.batch_size, run.sequence_length
    tokens = np.random.default_rng(seed).integers(0, run.model.vocab_size, (warmup + steps, batch, seq_len + 1))
    ones = jnp.ones((batch, seq_len), jnp.int32)
    batches = [{"inputs": jnp.asarray(t[:, :-1], jnp.int32), "targets": jnp.asarray(t[:, 1:], jnp.int32),
                "segment_ids": ones, "positions": jnp.cumsum(ones, axis=1) - 1, "loss_mask": ones}
               for t in tokens]
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
    parser.add_argument("--bench", choices=sorted(torch_reference.BENCH_CONFIGS), action="append",
                        help="benchmark config (repeatable; default: all)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = jax.devices()[0]
    results = []
    for name in args.bench or sorted(torch_reference.BENCH_CONFIGS):
        bench = torch_reference.BENCH_CONFIGS[name]
        # The schedule's values do not change the cost of a step; warm-up must only fit in the run.
        run = RunConfig(model=bench.model, mesh=MeshConfig(data=1), optim=OptimConfig(warmup_steps=1),
                        batch_size=bench.batch_size, steps=args.warmup + args.steps)
        throughput = metrics.Throughput.for_run(run, device.device_kind, n_devices=1)
        jax_tps = jax_tokens_per_s(run, args.steps, args.warmup)
        torch_tps = torch_reference.measure_tokens_per_s(bench.model, bench.batch_size, run.sequence_length,
                                                         args.steps, args.warmup)
        mfu = {side: tps * throughput.flops_per_token / throughput.peak_flops_per_device
               for side, tps in (("jax", jax_tps), ("torch", torch_tps))}
        results.append({"bench": name, "params": model.param_count(bench.model).total,
                        "batch_size": bench.batch_size, "seq_len": run.sequence_length,
                        "jax_tokens_per_s": jax_tps, "torch_tokens_per_s": torch_tps,
                        "jax_mfu": mfu["jax"], "torch_mfu": mfu["torch"], **throughput.metadata()})
        print(f"{name}: gptjax {jax_tps:,.0f} tok/s (MFU {mfu['jax']:.1%}), torch {torch_tps:,.0f} tok/s "
              f"(MFU {mfu['torch']:.1%}), gptjax/torch {jax_tps / torch_tps:.2f}x")
    print(f"device {device.device_kind}, peak {throughput.peak_flops_per_device / 1e9:,.0f} GFLOP/s per device "
          f"({throughput.peak_source}), torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"jax {jax.__version__}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
