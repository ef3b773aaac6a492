"""The matrix products of one training step, each timed on its own: a floor under the step's time.

A train step of gptjax's GPT-2 form is, FLOP for FLOP, the matrix products `model.FLOPS_CONVENTION` counts
(each projection's forward, input-gradient and weight-gradient product; attention's scores and weighted
values, forward and backward, over the key blocks gptjax computes; the LM head), plus elementwise work. Timing
every product alone, with the step's shapes and operand transposes, gives the time a backend's matmul kernels
need per step however well everything else is fused. gptjax on XLA:CPU cannot step faster than XLA's products,
so the torch reference's whole step divided by XLA's floor bounds the gptjax/torch ratio on this host.

Data-parallel over N host devices, each device times its 1/N of the rows (tokens, or batch x heads); the
weight-gradient all-reduce is left out, which only lowers the floor.

`python bench/gemm_floor.py [--bench small] [--host-devices 2]` prints the table; train_throughput.py
prints the totals next to the measured steps.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

if __name__ == "__main__":  # XLA fixes the number of host devices when JAX starts
    _pre = argparse.ArgumentParser(add_help=False)
    _pre.add_argument("--host-devices", type=int, default=2)
    if (_n := _pre.parse_known_args()[0].host_devices) > 1:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={_n}"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from gptjax import model, sharding  # noqa: E402
from gptjax.config import MeshConfig, ModelConfig  # noqa: E402

# Over the last two axes: "nn" lhs @ rhs, "nt" lhs @ rhs^T, "tn" lhs^T @ rhs.
LAYOUTS = ("nn", "nt", "tn")


@dataclass(frozen=True)
class Gemm:
    name: str
    count: int  # times per step
    lhs: tuple[int, ...]  # leading axis: the rows split over data-parallel devices
    rhs: tuple[int, ...]
    layout: str
    rhs_is_weight: bool  # replicated on every device rather than split with the rows

    @property
    def flops(self) -> int:
        """2 x batch x m x k x n for one product."""
        rows, cols = self.lhs[-2:]
        m, k = (cols, rows) if self.layout == "tn" else (rows, cols)
        n = self.rhs[-2] if self.layout == "nt" else self.rhs[-1]
        return 2 * math.prod(self.lhs[:-2]) * m * k * n


def step_gemms(cfg: ModelConfig, batch: int, seq_len: int) -> list[Gemm]:
    """The products of one training step (forward and backward) on batch x seq_len tokens, attention in the
    blocks gptjax computes (`model.attention_blocks`: with `attention_block` 0, all seq_len keys)."""
    tokens, d, a, f, layers = batch * seq_len, cfg.d_model, cfg.d_attn, cfg.d_ff, cfg.n_layer
    gemms = []
    for name, count, d_in, d_out in [
        ("query/key/value", 3 * layers, d, a),
        ("out projection", layers, a, d),
        ("mlp in", layers, d, f),
        ("mlp out", layers, f, d),
        ("lm head", 1, d, cfg.vocab_size),
    ]:
        gemms += [
            Gemm(f"{name} forward", count, (tokens, d_in), (d_in, d_out), "nn", True),
            Gemm(f"{name} input grad", count, (tokens, d_out), (d_in, d_out), "nt", True),
            Gemm(f"{name} weight grad", count, (tokens, d_in), (tokens, d_out), "tn", False),
        ]
    blocks = Counter(
        block
        for i in range(layers)
        for block in model.attention_blocks(cfg, cfg.layer_kind(i), seq_len, band_in_slots=True)
    )
    for (q_start, q_end, k_start), count in sorted(blocks.items()):
        rows, q_len, k_len = batch * cfg.n_head, q_end - q_start, q_end - k_start
        queries, keys, scores = (rows, q_len, cfg.d_head), (rows, k_len, cfg.d_head), (rows, q_len, k_len)
        for name, lhs, rhs, layout in [
            ("scores q.k", queries, keys, "nt"),
            ("values p.v", scores, keys, "nn"),
            ("grad p", queries, keys, "nt"),
            ("grad v", scores, queries, "tn"),
            ("grad q", scores, keys, "nn"),
            ("grad k", scores, queries, "tn"),
        ]:
            gemms.append(Gemm(f"attention {name} {q_len}x{k_len}", count, lhs, rhs, layout, False))
    return gemms


def product(layout: str, transpose: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    """The product `layout` names, for arrays whose last-two-axes transpose is `transpose`."""
    return {"nn": lambda x, y: x @ y, "nt": lambda x, y: x @ transpose(y), "tn": lambda x, y: transpose(x) @ y}[layout]


def fastest(call: Callable[[], Any], repeats: int) -> float:
    """Fastest of `repeats` timed calls, after one untimed call (which may compile)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def _kernel_seconds(
    call: Callable[[Callable[[Any, Any], Any]], Any], op: Callable[[Any, Any], Any], repeats: int
) -> float:
    """Fastest call of `op` less the fastest call of a near-empty op on the same operands: the kernel's
    time without the per-call dispatch, which a jitted step pays once rather than per product."""
    empty = lambda x, y: x[:1] + 0  # noqa: E731  one row: a copy-sized op with the same arguments
    return max(0.0, fastest(lambda: call(op), repeats) - fastest(lambda: call(empty), repeats))


def xla_seconds(gemm: Gemm, devices: list[jax.Device], repeats: int = 10) -> float:
    """Kernel time of the product as its own jitted op, rows split over a `data` mesh of `devices`."""
    mesh = sharding.make_mesh(MeshConfig(data=len(devices)), devices)
    rows, weight = PartitionSpec("data"), PartitionSpec()
    rhs_spec = weight if gemm.rhs_is_weight else rows
    rng = np.random.default_rng(0)
    lhs = jax.device_put(rng.standard_normal(gemm.lhs, np.float32), NamedSharding(mesh, rows))
    rhs = jax.device_put(rng.standard_normal(gemm.rhs, np.float32), NamedSharding(mesh, rhs_spec))

    compiled: dict[Callable, Callable] = {}

    def call(op: Callable[[Any, Any], Any]) -> Any:
        if op not in compiled:
            compiled[op] = jax.jit(jax.shard_map(op, mesh=mesh, in_specs=(rows, rhs_spec), out_specs=rows))
        return jax.block_until_ready(compiled[op](lhs, rhs))

    return _kernel_seconds(call, product(gemm.layout, lambda x: jnp.swapaxes(x, -1, -2)), repeats)


def torch_seconds(gemm: Gemm, repeats: int = 10) -> float:
    """Kernel time of the product in torch eager on the host's threads."""
    import torch

    generator = torch.Generator().manual_seed(0)
    lhs, rhs = (torch.randn(shape, generator=generator) for shape in (gemm.lhs, gemm.rhs))
    return _kernel_seconds(lambda op: op(lhs, rhs), product(gemm.layout, lambda x: x.transpose(-1, -2)), repeats)


def floor_seconds(gemms: list[Gemm], seconds: Callable[[Gemm], float]) -> float:
    """Per-step time of all the products, each taking `seconds(gemm)`."""
    return sum(gemm.count * seconds(gemm) for gemm in gemms)


def main() -> None:
    import torch_reference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", choices=sorted(torch_reference.BENCH_CONFIGS), default="small")
    parser.add_argument("--host-devices", type=int, default=2, help="emulated host devices (data-parallel)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    bench = torch_reference.BENCH_CONFIGS[args.bench]
    devices = jax.devices()
    sides = {"xla 1 device": devices[:1]} | ({f"xla x{len(devices)}": devices} if len(devices) > 1 else {})
    totals = dict.fromkeys([*sides, "torch"], 0.0)
    print(f"{'product':34s} {'count':>5s} {'GFLOP':>7s} " + " ".join(f"{side:>13s}" for side in totals))
    for gemm in step_gemms(bench.model, bench.batch_size, bench.model.n_ctx):
        times = {side: xla_seconds(gemm, side_devices, args.repeats) for side, side_devices in sides.items()}
        times["torch"] = torch_seconds(gemm, args.repeats)
        for side, t in times.items():
            totals[side] += gemm.count * t
        print(
            f"{gemm.name:34s} {gemm.count:5d} {gemm.flops / 1e9:7.3f} "
            + " ".join(f"{t * 1e3:10.3f} ms" for t in times.values())
        )
    print(f"{'per step':48s} " + " ".join(f"{t * 1e3:10.1f} ms" for t in totals.values()))


if __name__ == "__main__":
    main()
