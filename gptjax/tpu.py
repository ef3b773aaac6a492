"""Cloud TPU slice types: what an accelerator-type name (`v4-32`, `v5litepod-16`, `v5p-128`, `v6e-64`)
means in chips, hosts, HBM and torus shape, and the libtpu description of its devices.

Accelerator-type names count TensorCores for v4 and v5p (two per chip, which JAX drives as one megacore
device) and chips for v5e and v6e. `topology_devices` asks libtpu (the `tpu` extra) to describe a slice's
devices with their real coordinates and process indices, on any machine: meshes, batch placement and
ahead-of-time compiles (`jax.jit(...).lower(...).compile()`) then see what a real slice would.

Per generation it also holds what a launch needs: the TPU VM runtime image, the libtpu flags training runs
with (overlap of collectives with compute; every one is checked against the installed libtpu by
tests/test_tpu.py), the recommended mesh for a model size (`recommended_mesh`), and `validate_mesh`, which
builds a run's mesh on the slice's real device layout and names what does not fit.
`python -m gptjax.tpu v5e-16` prints a slice's facts as shell assignments for tpu_scripts/.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
from dataclasses import dataclass

import jax
from jax.experimental import topologies
from jax.sharding import Mesh

from gptjax.errors import ConfigError
from gptjax.sharding import MeshConfig, batch_sharding, make_mesh, process_rows

GiB = 1 << 30


@dataclass(frozen=True)
class Generation:
    name: str  # as users write it: "v5e"
    accelerator_prefix: str  # as gcloud writes it: "v5litepod"
    device_kind: str  # jax.Device.device_kind
    cores_per_chip: int  # TensorCores per chip, as counted in the accelerator-type number
    chip_config: str  # libtpu chip config with one JAX device per chip
    hbm_bytes: int  # per chip
    torus_dims: int  # 2 (v5e, v6e) or 3 (v4, v5p)
    max_chips_per_host: int  # a slice this small is one host; larger ones have 4 chips per host
    runtime_version: str  # the TPU VM image gcloud creates its slices with (--runtime-version)
    libtpu_flags: tuple[str, ...]  # LIBTPU_INIT_ARGS for training

    @property
    def libtpu_init_args(self) -> str:
        return " ".join(self.libtpu_flags)


# Collective matmuls and all-gathers overlapped with compute ("continuation fusion"), and the data-parallel
# gradient all-reduce pipelined across steps: the flag groups MaxText trains with on every generation.
_OVERLAP_COLLECTIVES = (
    "--xla_tpu_enable_async_collective_fusion=true",
    "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
    "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
    "--xla_tpu_overlap_compute_collective_tc=true",
    "--xla_enable_async_all_gather=true",
)
_DATA_PARALLEL_OVERLAP = (
    "--xla_tpu_enable_data_parallel_all_reduce_opt=true",
    "--xla_tpu_data_parallel_opt_different_sized_ops=true",
)
_TRAINING_FLAGS = _OVERLAP_COLLECTIVES + _DATA_PARALLEL_OVERLAP
# Trillium's larger vector memory: more of it per fused op for dense compute-bound models.
_V6E_SCOPED_VMEM = ("--xla_tpu_scoped_vmem_limit_kib=98304",)

GENERATIONS: dict[str, Generation] = {
    g.name: g
    for g in (
        Generation("v4", "v4", "TPU v4", 2, "megacore", 32 * GiB, 3, 4, "tpu-ubuntu2204-base", _TRAINING_FLAGS),
        Generation(
            "v5e", "v5litepod", "TPU v5 lite", 1, "default", 16 * GiB, 2, 8, "v2-alpha-tpuv5-lite", _TRAINING_FLAGS
        ),
        Generation("v5p", "v5p", "TPU v5", 2, "megacore", 95 * GiB, 3, 4, "v2-alpha-tpuv5", _TRAINING_FLAGS),
        Generation(
            "v6e",
            "v6e",
            "TPU v6 lite",
            1,
            "default",
            32 * GiB,
            2,
            8,
            "v2-alpha-tpuv6e",
            _TRAINING_FLAGS + _V6E_SCOPED_VMEM,
        ),
    )
}
_NAME = re.compile(r"^(v4|v5e|v5litepod|v5p|v6e)-(\d+)$")


@dataclass(frozen=True)
class SliceType:
    """One slice: `chips` chips on `hosts` hosts in a `topology` torus (e.g. "4x4", "2x2x4")."""

    generation: Generation
    chips: int
    topology: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.generation.name}-{self.chips * self.generation.cores_per_chip}"

    @property
    def accelerator_type(self) -> str:
        """The name gcloud takes (`--accelerator-type`)."""
        return f"{self.generation.accelerator_prefix}-{self.chips * self.generation.cores_per_chip}"

    @property
    def chips_per_host(self) -> int:
        return min(self.chips, 4 if self.chips > self.generation.max_chips_per_host else self.chips)

    @property
    def hosts(self) -> int:
        return self.chips // self.chips_per_host

    @property
    def topology_name(self) -> str:
        return f"{self.generation.name}:{'x'.join(map(str, self.topology))}"

    @property
    def host_bounds(self) -> tuple[int, int, int]:
        """The chips of one host as a box of the torus (libtpu's `chips_per_host_bounds`)."""
        if self.hosts == 1:
            return (*self.topology, 1, 1)[:3]  # type: ignore[return-value]
        return (2, 2, 1)


def _torus(chips: int, dims: int) -> tuple[int, ...]:
    """The standard torus of a power-of-two chip count. 2-D (v5e, v6e): as square as possible, the longer
    side last (16 -> 4x4, 32 -> 4x8). 3-D (v4, v5p): 2x2x1, 2x2x2, then doubling z, y, x in turn
    (16 -> 2x2x4, 32 -> 2x4x4, 64 -> 4x4x4, 128 -> 4x4x8)."""
    k = int(math.log2(chips))
    if dims == 2:
        return (1 << (k // 2), 1 << (k - k // 2))
    if chips < 8:
        return (2, 2, 1) if chips == 4 else (1, 1, chips)
    shape = [2, 2, 2]
    for i in range(k - 3):
        shape[2 - i % 3] *= 2
    return tuple(shape)


def slice_type(name: str) -> SliceType:
    """A slice from its name: users' (`v5e-16`) or gcloud's (`v5litepod-16`); ConfigError for anything else."""
    match = _NAME.match(name.strip())
    if not match:
        raise ConfigError(
            f"unknown TPU slice {name!r}; write <generation>-<size> with generation one of "
            f"{', '.join(GENERATIONS)} (v5e is also v5litepod), e.g. v4-32, v5e-16, v5p-128, v6e-64"
        )
    prefix, count = match.group(1), int(match.group(2))
    generation = GENERATIONS["v5e" if prefix == "v5litepod" else prefix]
    chips, rest = divmod(count, generation.cores_per_chip)
    if rest or chips < 1 or chips & (chips - 1):
        unit = "TensorCores (2 per chip)" if generation.cores_per_chip == 2 else "chips"
        raise ConfigError(f"TPU slice {name!r}: the number counts {unit}; it must give a power-of-two chip count")
    return SliceType(generation, chips, _torus(chips, generation.torus_dims))


def topology_devices(slice_: SliceType | str, num_slices: int = 1) -> list[jax.Device]:
    """libtpu's description of every device of `num_slices` slices joined over the data-centre network
    (needs the `tpu` extra; no TPU is needed)."""
    s = slice_type(slice_) if isinstance(slice_, str) else slice_
    if num_slices < 1:
        raise ConfigError(f"num_slices must be >= 1, got {num_slices}")
    description = topologies.get_topology_desc(
        platform="tpu",
        topology_name=s.topology_name,
        chip_config_name=s.generation.chip_config,
        chips_per_host_bounds=s.host_bounds,
        num_slices=num_slices,
    )
    return list(description.devices)


# fp32 parameters, Adam's two moments and the gradients: bytes of train state per parameter.
TRAIN_STATE_BYTES_PER_PARAM = 16
# The share of a chip's HBM the train state may take; the rest is for activations and XLA's buffers.
_STATE_SHARE_OF_HBM = 0.5


def recommended_mesh(
    slice_: SliceType | str, n_params: int, batch_size: int | None = None, num_slices: int = 1
) -> MeshConfig:
    """The mesh to start from for a model of `n_params` parameters (and a global batch of `batch_size`
    sequences) on `num_slices` such slices.

    Pure data parallelism while the whole train state fits in half a chip's HBM (the fastest layout: one
    gradient all-reduce per step), else FSDP over the slice's chips (the state sharded chips-fold). Both
    split the batch over every chip; when the batch has fewer rows per slice than the slice has chips, the
    rest is tensor parallelism over the chips of one host (ICI neighbours). Slices are always joined by data
    parallelism (`dcn`). ConfigError when the state does not fit this generation's HBM even fully sharded,
    or the batch cannot be split.
    """
    s = slice_type(slice_) if isinstance(slice_, str) else slice_
    state = TRAIN_STATE_BYTES_PER_PARAM * n_params
    budget = _STATE_SHARE_OF_HBM * s.generation.hbm_bytes
    if state / s.chips > budget:
        raise ConfigError(
            f"a model of {n_params:,} parameters has {state / GiB:.1f} GiB of train state: "
            f"{state / s.chips / GiB:.1f} GiB per chip even fully sharded over the {s.chips} chips of {s.name}, "
            f"more than half of a {s.generation.name} chip's {s.generation.hbm_bytes / GiB:.0f} GiB HBM; "
            "take a larger slice"
        )
    tensor = 1
    if batch_size is not None:
        per_slice = batch_size // num_slices if batch_size % num_slices == 0 else 0
        candidates = [
            t for t in (1, 2, 4, 8) if t <= s.chips_per_host and per_slice and per_slice % (s.chips // t) == 0
        ]
        if not candidates:
            raise ConfigError(
                f"batch_size={batch_size} does not split over {num_slices} x {s.name} ({s.chips} chips per slice, "
                f"tensor parallelism up to {s.chips_per_host}); "
                f"use a multiple of {num_slices * s.chips // s.chips_per_host}"
            )
        tensor = candidates[0]
    if state <= budget:
        return MeshConfig(data=-1, fsdp=1, tensor=tensor, dcn=num_slices)
    return MeshConfig(data=1, fsdp=-1, tensor=tensor, dcn=num_slices)


def validate_mesh(
    slice_: SliceType | str, mesh: MeshConfig, batch_size: int | None = None, num_slices: int = 1
) -> Mesh:
    """`mesh` built on the real device layout of `num_slices` such slices; ConfigError naming the slice and
    the sizes when the mesh does not fit it, or when `batch_size` does not split over its data axes."""
    s = slice_type(slice_) if isinstance(slice_, str) else slice_
    where = f"{num_slices} x {s.name}" if num_slices > 1 else s.name
    try:
        built = make_mesh(mesh, topology_devices(s, num_slices))
        if batch_size is not None:
            process_rows(batch_sharding(built, mesh.rules), batch_size, process=0)
    except ConfigError as err:
        raise ConfigError(f"on {where} ({s.chips * num_slices} chips, torus {s.topology_name}): {err}") from err
    return built


def shell_facts(slice_: SliceType | str) -> dict[str, str]:
    """What tpu_scripts/ needs to know about a slice, as shell variable names and values."""
    s = slice_type(slice_) if isinstance(slice_, str) else slice_
    return {
        "TPU_SLICE": s.name,
        "TPU_ACCELERATOR_TYPE": s.accelerator_type,
        "TPU_GENERATION": s.generation.name,
        "TPU_CHIPS": str(s.chips),
        "TPU_HOSTS": str(s.hosts),
        "TPU_TOPOLOGY": "x".join(map(str, s.topology)),
        "TPU_RUNTIME_VERSION": s.generation.runtime_version,
        "TPU_LIBTPU_INIT_ARGS": s.generation.libtpu_init_args,
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m gptjax.tpu SLICE`: the slice's facts as `NAME=value` lines a shell can `eval`; exit 2 with
    one line naming the value for an unknown slice."""
    parser = argparse.ArgumentParser(prog="python -m gptjax.tpu", description="Facts about a Cloud TPU slice type")
    parser.add_argument("slice", help="e.g. v4-32, v5e-16 (or v5litepod-16), v5p-128, v6e-64")
    args = parser.parse_args(argv)
    try:
        facts = shell_facts(args.slice)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(f"{k}={shlex.quote(v)}" for k, v in facts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "GENERATIONS",
    "GiB",
    "Generation",
    "SliceType",
    "TRAIN_STATE_BYTES_PER_PARAM",
    "recommended_mesh",
    "shell_facts",
    "slice_type",
    "topology_devices",
    "validate_mesh",
]
