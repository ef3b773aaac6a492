"""The one owner of partitioning: the mesh, the logical-axis rules table, logical -> mesh shardings, the
batch rows each process loads, and `jax.distributed` set-up.

The model names its axes logically (`embed`, `heads`, `batch`, ...); `MeshConfig.rules` is the one table
that maps those names to the mesh axes `dcn`, `data`, `fsdp`, `tensor` (T5X's `standard_logical_axis_rules`).
Changing the parallelism layout means changing the table or the mesh sizes, never model or eval code:
the trainer, the eval scorer and Flax's `with_logical_constraint` all read the same table.

On TPU the mesh follows the physical torus (`jax.make_mesh` / `mesh_utils`), so the devices along the batch
axes belong to processes in an interleaved order (v4-32: 0,1,2,3,0,1,2,3,...). Each process therefore loads
exactly the rows its own devices hold, whatever their order (`process_rows`), and the batch at step k stays
a function of (seed, k) alone: the same global rows whatever the number of hosts. Several slices joined over
the data-centre network form a hybrid mesh whose outermost axis `dcn` has one entry per slice and carries
only data parallelism (slow links, one gradient all-reduce per step).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gptjax.errors import ConfigError

MESH_AXES = ("dcn", "data", "fsdp", "tensor")
Rules = tuple[tuple[str, tuple[str, ...]], ...]
log = logging.getLogger(__name__)

# Logical axis -> mesh axes. Parameters: vocab/embed/mlp/heads/kv/norm; activations: batch/length/act_*.
# FSDP shards the embed dimension of every weight; tensor parallelism splits heads, MLP width and vocab.
DEFAULT_RULES: Rules = (
    ("batch", ("dcn", "data", "fsdp")),
    ("length", ()),
    ("act_embed", ()),
    ("embed", ("fsdp",)),
    ("vocab", ("tensor",)),
    ("mlp", ("tensor",)),
    ("heads", ("tensor",)),
    ("kv", ()),
    ("norm", ()),
    ("layers", ()),  # the stacked axis of scanned layers (model.scan_layers)
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes within one slice (one of data/fsdp/tensor may be -1 = all remaining devices), the
    number of slices `dcn` (-1 = as many as the devices span), and the logical-axis rules."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    dcn: int = -1
    rules: Rules = DEFAULT_RULES

    def __post_init__(self) -> None:
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        if list(sizes.values()).count(-1) > 1:
            raise ConfigError(f"at most one of mesh.data/fsdp/tensor may be -1, got {sizes}")
        bad = {k: v for k, v in {**sizes, "dcn": self.dcn}.items() if v == 0 or v < -1}
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
    """The (data, fsdp, tensor) sizes over the `n_devices` devices of one slice, -1 resolved."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % known:
            raise ConfigError(
                f"mesh {dict(zip(MESH_AXES[1:], sizes))}: {n_devices} devices are not divisible by "
                f"the fixed axes' product {known}"
            )
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ConfigError(
            f"mesh {dict(zip(MESH_AXES[1:], sizes))} needs {math.prod(sizes)} devices but {n_devices} are available"
        )
    return tuple(sizes)  # type: ignore[return-value]


def slice_count(devices: list[jax.Device]) -> int:
    """How many slices `devices` span (TPU devices carry a `slice_index`; others are one slice)."""
    return len({getattr(d, "slice_index", None) or 0 for d in devices})


def make_mesh(cfg: MeshConfig, devices: list[jax.Device] | None = None) -> Mesh:
    """The mesh (dcn, data, fsdp, tensor) over `devices` (default: all), laid out along the physical torus
    of each slice, slices along `dcn`. ConfigError names the sizes when they do not fit the devices."""
    devices = list(devices) if devices is not None else jax.devices()
    slices = slice_count(devices)
    if cfg.dcn not in (-1, slices):
        raise ConfigError(f"mesh.dcn={cfg.dcn} but the {len(devices)} devices form {slices} slice(s)")
    shape = (1, *resolve_mesh_shape(cfg, len(devices) // slices))
    errors = []
    for split in (False, True):  # whole physical axes per mesh axis if possible, else split one (slower rings)
        try:
            if slices == 1 and not split:
                return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 4, devices=devices)
            if slices == 1:
                grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
            else:
                grid = mesh_utils.create_hybrid_device_mesh(
                    shape, (slices, 1, 1, 1), devices, allow_split_physical_axes=split
                )
            if split:
                log.info("mesh %s splits a physical axis of the TPU torus", dict(zip(MESH_AXES, grid.shape)))
            return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 4)
        except (ValueError, AssertionError, NotImplementedError) as err:  # mesh_utils' ways of saying "no layout"
            errors.append(err)
    raise ConfigError(
        f"mesh {dict(zip(MESH_AXES[1:], shape[1:]))} does not tile the {len(devices) // slices} "
        f"{devices[0].device_kind} devices of a slice ({errors[-1]})"
    ) from errors[-1]


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


def _device_rows(sharding: NamedSharding, global_batch: int, process: int | None) -> dict[jax.Device, np.ndarray]:
    """The global batch rows each device of `process` (default: this one) holds under `sharding`."""
    dp = data_parallel_size(sharding)
    if global_batch % dp:
        raise ConfigError(
            f"global batch_size={global_batch} is not divisible by the data-parallel size {dp} "
            f"(mesh {dict(sharding.mesh.shape)})"
        )
    process = jax.process_index() if process is None else process
    return {
        d: np.arange(global_batch)[index[0]]
        for d, index in sharding.devices_indices_map((global_batch, 1)).items()
        if d.process_index == process  # type: ignore[attr-defined]  # jaxlib Device has no stub
    }


def process_rows(sharding: NamedSharding, global_batch: int, process: int | None = None) -> np.ndarray:
    """The rows of a global batch that the devices of `process` (default: this one) hold under `sharding`,
    sorted: what the process loads (`PackedDataset.batch(step, n, rows=...)`). They need not be contiguous."""
    return np.unique(np.concatenate(list(_device_rows(sharding, global_batch, process).values())))


def device_shards(
    local: dict[str, np.ndarray],
    rows: np.ndarray,
    sharding: NamedSharding,
    global_batch: int,
    process: int | None = None,
) -> dict[jax.Device, dict[str, np.ndarray]]:
    """Each device's piece of the global batch, cut from the process-local rows `local` (global rows `rows`,
    as `process_rows` gives them)."""
    return {
        d: {k: v[np.searchsorted(rows, held)] for k, v in local.items()}
        for d, held in _device_rows(sharding, global_batch, process).items()
    }


def global_batch_from_local(
    local: dict[str, np.ndarray], rows: np.ndarray, sharding: NamedSharding, global_batch: int
) -> dict[str, jax.Array]:
    """The global batch as sharded arrays, built from this process's rows `rows` (loaded as `local`)."""
    shards = device_shards(local, rows, sharding, global_batch)
    devices = list(shards)
    return {
        k: jax.make_array_from_single_device_arrays(
            (global_batch,) + v.shape[1:], sharding, jax.device_put([shards[d][k] for d in devices], devices)
        )
        for k, v in local.items()
    }
