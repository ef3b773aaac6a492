"""The one owner of partitioning: the mesh, the logical-axis rules table, logical -> mesh shardings, the
batch rows each process loads, and `jax.distributed` set-up.

The model names its axes logically (`embed`, `heads`, `batch`, ...); `MeshConfig.rules` is the one table
that maps those names to the mesh axes `data`, `fsdp`, `tensor` (T5X's `standard_logical_axis_rules`).
Changing the parallelism layout means changing the table or the mesh sizes, never model or eval code:
the trainer, the eval scorer and Flax's `with_logical_constraint` all read the same table.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gptjax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
Rules = tuple[tuple[str, tuple[str, ...]], ...]
log = logging.getLogger(__name__)

# Logical axis -> mesh axes. Parameters: vocab/embed/mlp/heads/kv/norm; activations: batch/length/act_*.
# FSDP shards the embed dimension of every weight; tensor parallelism splits heads, MLP width and vocab.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", ()),
    ("act_embed", ()),
    ("embed", ("fsdp",)),
    ("vocab", ("tensor",)),
    ("mlp", ("tensor",)),
    ("heads", ("tensor",)),
    ("kv", ()),
    ("norm", ()),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes (one of them may be -1 = all remaining devices) and the logical-axis rules."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: Rules = DEFAULT_RULES

    def __post_init__(self) -> None:
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        if list(sizes.values()).count(-1) > 1:
            raise ConfigError(f"at most one mesh axis may be -1, got {sizes}")
        bad = {k: v for k, v in sizes.items() if v == 0 or v < -1}
        if bad:
            raise ConfigError(f"mesh sizes must be positive or -1, got {bad}")
        unknown = sorted({a for _, axes in self.rules for a in axes} - set(MESH_AXES))
        if unknown:
            raise ConfigError(f"mesh.rules name mesh axes {unknown}; the mesh has {list(MESH_AXES)}")


def flax_rules(rules: Rules) -> list[tuple[str, Any]]:
    """The rules table in the form `flax.linen.logical_axis_rules` takes (no axes = None = replicated)."""
    return [(name, axes if axes else None) for name, axes in rules]


def batch_axes(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> tuple[str, ...]:
    """The mesh axes the `batch` logical axis is split over (those of size 1 left out)."""
    return tuple(a for a in dict(rules).get("batch", ()) if a in mesh.shape and mesh.shape[a] > 1)


def maybe_initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Join a multi-process run. Explicit arguments (or GPTJAX_COORDINATOR / GPTJAX_NUM_PROCESSES /
    GPTJAX_PROCESS_ID) name the coordinator; GPTJAX_DISTRIBUTED=auto lets JAX discover a TPU pod's
    workers itself. With none of these it is a single-process run and nothing happens."""
    coordinator = coordinator or os.environ.get("GPTJAX_COORDINATOR")
    if coordinator:
        n = num_processes if num_processes is not None else int(os.environ["GPTJAX_NUM_PROCESSES"])
        i = process_id if process_id is not None else int(os.environ["GPTJAX_PROCESS_ID"])
        jax.distributed.initialize(coordinator, n, i)
    elif os.environ.get("GPTJAX_DISTRIBUTED") == "auto":
        jax.distributed.initialize()


def resolve_mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % known:
            raise ConfigError(
                f"mesh {dict(zip(MESH_AXES, sizes))}: {n_devices} devices are not divisible by "
                f"the fixed axes' product {known}"
            )
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ConfigError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but {n_devices} are available"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig, devices: list[jax.Device] | None = None) -> Mesh:
    devices = devices if devices is not None else jax.devices()
    shape = resolve_mesh_shape(cfg, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_mesh_spec(logical: PartitionSpec, shape: tuple[int, ...], mesh: Mesh, rules: Rules) -> PartitionSpec:
    """Translate one logical PartitionSpec into mesh axes.

    A dimension whose size does not divide by its mesh axes is replicated instead (e.g. the byte
    vocabulary's 257 rows under tensor parallelism), and a mesh axis is used at most once per array.
    """
    table = dict(rules)
    used: set[str] = set()
    out: list[Any] = []
    for dim, name in zip(shape, tuple(logical) + (None,) * (len(shape) - len(logical))):
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise ConfigError(f"logical axis {name!r} has no rule; mesh.rules covers {sorted(table)}")
        axes = tuple(a for a in table[name] if a not in used and mesh.shape[a] > 1)
        if axes and dim % math.prod(mesh.shape[a] for a in axes):
            log.info("replicating a dimension of size %d (logical %r): not divisible by mesh axes %s", dim, name, axes)
            axes = ()
        used.update(axes)
        out.append(axes if len(axes) > 1 else (axes[0] if axes else None))
    return PartitionSpec(*out)


def shardings_for(logical_specs: Any, abstract: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for every leaf of `abstract`, given a matching tree of logical PartitionSpecs."""
    return jax.tree.map(
        lambda spec, leaf: NamedSharding(mesh, logical_to_mesh_spec(spec, leaf.shape, mesh, rules)),
        logical_specs,
        abstract,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES, rank: int = 2) -> NamedSharding:
    """Sharding of a [batch, length, ...] input array (batch over the `batch` rule's axes; never
    silently replicated: `process_rows` raises when the batch does not divide)."""
    axes = batch_axes(mesh, rules)
    lead = axes if len(axes) > 1 else (axes[0] if axes else None)
    return NamedSharding(mesh, PartitionSpec(lead, *([None] * (rank - 1))))


def data_parallel_size(sharding: NamedSharding) -> int:
    lead = sharding.spec[0] if sharding.spec else None
    axes = (lead,) if isinstance(lead, str) else (lead or ())
    return math.prod(sharding.mesh.shape[a] for a in axes)


def process_rows(sharding: NamedSharding, global_batch: int) -> slice:
    """The contiguous rows of a global batch that this process's devices hold under `sharding`.

    Each process loads only these rows and hands them to `jax.make_array_from_process_local_data`.
    """
    dp = data_parallel_size(sharding)
    if global_batch % dp:
        raise ConfigError(
            f"global batch_size={global_batch} is not divisible by the data-parallel size {dp} "
            f"(mesh {dict(sharding.mesh.shape)})"
        )
    indices = [idx for idx in sharding.addressable_devices_indices_map((global_batch, 1)).values() if idx]
    starts = [idx[0].start or 0 for idx in indices]
    stops = [global_batch if idx[0].stop is None else idx[0].stop for idx in indices]
    lo, hi = min(starts), max(stops)
    covered = {r for a, b in zip(starts, stops) for r in range(a, b)}
    if len(covered) != hi - lo:
        raise ConfigError(
            f"process {jax.process_index()} holds non-contiguous batch rows; order the mesh so "
            "each process's devices are adjacent along the batch axes"
        )
    return slice(lo, hi)


def global_batch_from_local(
    local: dict[str, np.ndarray], sharding: NamedSharding, global_batch: int
) -> dict[str, jax.Array]:
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (global_batch,) + v.shape[1:]) for k, v in local.items()
    }
