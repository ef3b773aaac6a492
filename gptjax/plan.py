"""Ahead-of-time plans: compile the real train step for a TPU slice (or the devices at hand) without running
it, and read what it needs per chip, whether it fits, the largest batch that fits, and its FLOPs.

XLA's TPU compiler (libtpu) runs on any machine against libtpu's description of a slice
(`gptjax.tpu.topology_devices`), so a plan made on a laptop is the program a pod would run: the same
`train.jit_train_step` with the Trainer's state and batch shardings, lowered on a mesh of those devices.
The compiler's buffer assignment (`memory_analysis`, per chip) is what to trust, and a step that does not fit
fails to compile with RESOURCE_EXHAUSTED and the sizes, which the plan reports.

FLOPs: `cost_analysis` counts a loop body once (the layer scan, the loss chunks, micro-batches, and the TPU
compiler's windowed FSDP matmuls) and does not see inside a Pallas kernel, so the plan compiles two shallow
unrolled copies of the step (one and two periods of the attention pattern, the loss in one chunk, one
micro-batch, windowed matmuls off, attention on the XLA path) and extrapolates linearly in depth, which is
exact for a program whose cost is linear in the number of layers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from gptjax import model, sharding, tpu, train
from gptjax.config import RunConfig
from gptjax.errors import ConfigError

GiB = tpu.GiB
log = logging.getLogger(__name__)
# The compile options of the FLOP-counting compiles: FSDP's windowed all-gather matmuls are loops too.
_NO_WINDOWED_EINSUM: dict[str, str | bool] = {
    "xla_tpu_enable_windowed_einsum_for_all_gather": False,
    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False,
}
_SIZE = r"([\d.]+)([KMGT]?)i?B?"
_OOM_PATTERNS = (
    re.compile(rf"\({_SIZE}\) exceeds available HBM \({_SIZE}\)"),  # "... HLO temporaries (18.25G) exceeds ..."
    re.compile(rf"Used {_SIZE} of {_SIZE} hbm"),
)


@dataclass(frozen=True)
class Memory:
    """Per-chip bytes of one compiled step. `peak` is what must fit: the most bytes live at once, arguments
    included. The temporaries are every buffer the step allocates, which are not all live at the same time
    (their sum exceeded the HBM in steps the compiler accepted), and the donated state's outputs alias its
    arguments."""

    arguments: int
    outputs: int
    temporaries: int
    aliased: int
    code: int
    peak: int


@dataclass(frozen=True)
class Attempt:
    """One compile of the step at `batch_size` (global sequences): its memory, or the compiler's refusal."""

    batch_size: int
    seconds: float
    memory: Memory | None = None
    oom: str = ""  # the compiler's out-of-memory message
    oom_required: int = 0  # bytes the compiler said it needed (0 = not stated)
    oom_available: int = 0

    @property
    def fits(self) -> bool:
        return self.memory is not None


@dataclass(frozen=True)
class Plan:
    """What `gptjax plan` reports (all memory per chip)."""

    model: str
    target: str  # a slice name, or the local device kind
    chips: int
    hosts: int
    mesh: dict[str, int]
    seq_len: int
    hbm_bytes: int | None  # per chip; None = unknown (e.g. CPU)
    attempt: Attempt  # at the run's batch size
    largest_batch: Attempt | None  # the largest batch that compiled (None: no search)
    first_too_large: Attempt | None  # the smallest batch found not to fit (None: none tried, or the cap)
    search_compiles: int
    search_seconds: float
    flops_per_step: float | None  # from the compiled program (all chips), extrapolated in depth
    model_flops_per_step: float  # model.flops_per_token x tokens
    settings: dict[str, Any]  # the run's memory knobs (remat, scan_layers, attention_impl, loss_chunk, ...)

    @property
    def per_chip_batch(self) -> float:
        return self.attempt.batch_size / self.chips

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["per_chip_batch"] = self.per_chip_batch
        data["fits"] = self.attempt.fits
        return data

    def format(self) -> str:
        """The human-readable report."""
        a = self.attempt
        hbm = f", {_gib(self.hbm_bytes)} HBM per chip" if self.hbm_bytes else ""
        mesh = " ".join(f"{k}={v}" for k, v in self.mesh.items())
        knobs = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        n_micro = self.settings["micro_batches"]
        micro = f", {_batch(self.per_chip_batch / n_micro)} per micro-batch" if n_micro > 1 else ""
        lines = [
            f"{self.model} on {self.target} ({self.chips} chips on {self.hosts} host(s){hbm}), mesh {mesh}",
            f"batch {a.batch_size} sequences of {self.seq_len} ({_batch(self.per_chip_batch)} per chip{micro});"
            f" {knobs}",
            f"per chip: {_memory_line(a, self.hbm_bytes)}",
        ]
        if self.largest_batch is not None:
            best = self.largest_batch
            line = f"largest batch that fits: {_batch(best.batch_size / self.chips)} per chip ({best.batch_size}"
            line += f" sequences, peak {_gib(best.memory.peak) if best.memory else '?'} per chip)"
            if self.first_too_large is not None:
                bad = self.first_too_large
                line += f"; {_batch(bad.batch_size / self.chips)} per chip does not fit ({_oom_sizes(bad)})"
            else:
                line += "; the search cap"
            lines.append(line + f" [{self.search_compiles} compiles, {self.search_seconds:.0f} s]")
        elif self.hbm_bytes is not None and a.fits:
            lines.append("largest batch: not searched")
        model_flops = f"model (6N + attention) {self.model_flops_per_step:.3e}"
        if self.flops_per_step is not None:
            ratio = self.flops_per_step / self.model_flops_per_step
            lines.append(f"FLOPs per step: compiled {self.flops_per_step:.3e}, {model_flops} (x{ratio:.2f})")
        else:
            lines.append(f"FLOPs per step: {model_flops}")
        lines.append(f"compile {a.seconds:.1f} s")
        return "\n".join(lines)


def _gib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / GiB:.2f} GiB"


def _batch(x: float) -> str:
    return f"{x:g}"


def _oom_sizes(a: Attempt) -> str:
    if a.oom_required:
        return f"needs {_gib(a.oom_required)} of {_gib(a.oom_available)}"
    return a.oom.splitlines()[0][:200]


def _memory_line(a: Attempt, hbm: int | None) -> str:
    if a.memory is None:
        return f"does not fit: {_oom_sizes(a)}"
    m = a.memory
    verdict = "" if hbm is None else f" of {_gib(hbm)}: fits"
    return (
        f"peak {_gib(m.peak)}{verdict} (arguments {_gib(m.arguments)}, outputs {_gib(m.outputs)} of which "
        f"{_gib(m.aliased)} alias arguments, temporaries {_gib(m.temporaries)} in all, code {_gib(m.code)})"
    )


def _bytes(number: str, unit: str) -> int:
    return int(float(number) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit])


def _oom_attempt(batch_size: int, seconds: float, message: str) -> Attempt:
    for pattern in _OOM_PATTERNS:
        match = pattern.search(message)
        if match:
            required, available = _bytes(*match.group(1, 2)), _bytes(*match.group(3, 4))
            return Attempt(batch_size, seconds, oom=message, oom_required=required, oom_available=available)
    return Attempt(batch_size, seconds, oom=message)


def abstract_batch(run: RunConfig, batch_sharding: NamedSharding) -> train.Batch:
    """The shapes, dtypes and sharding of a training batch (gptjax.data's packed rows)."""
    shape = (run.batch_size, run.sequence_length)
    ints = ("inputs", "targets", "segment_ids", "positions")
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sharding) for k in ints}
    batch["loss_mask"] = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=batch_sharding)
    return batch  # type: ignore[return-value]


def lower_train_step(run: RunConfig, devices: list[jax.Device]) -> jax.stages.Lowered:
    """The Trainer's jitted step for `run` on a mesh of `devices`, lowered on abstract arguments."""
    mesh = sharding.make_mesh(run.mesh, devices)
    tx = train.make_optimizer(run)
    state_shardings = train.state_shardings(run, tx, mesh)
    batch_sharding = sharding.batch_sharding(mesh, run.mesh.rules)
    dp = sharding.data_parallel_size(batch_sharding)
    if (run.batch_size // run.micro_batches) % dp:
        raise ConfigError(
            f"micro-batch size {run.batch_size // run.micro_batches} (batch_size={run.batch_size} / "
            f"micro_batches={run.micro_batches}) is not divisible by the data-parallel size {dp}"
        )
    step = train.jit_train_step(run, tx, state_shardings, batch_sharding)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.flax_rules(run.mesh.rules)):
        return step.lower(train.restore_target(run, tx, state_shardings), abstract_batch(run, batch_sharding))


def compile_step(run: RunConfig, devices: list[jax.Device], options: dict[str, Any] | None = None) -> Attempt:
    """Compile the step; an out-of-memory refusal is a result (an Attempt without memory), not an error."""
    start = time.perf_counter()
    try:
        compiled = lower_train_step(run, devices).compile(options)
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        attempt = _oom_attempt(run.batch_size, time.perf_counter() - start, str(err))
        log.info("batch %d: does not fit (%s; %.0f s)", run.batch_size, _oom_sizes(attempt), attempt.seconds)
        return attempt
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    assert m is not None, "XLA reports memory for TPU, GPU and CPU programs"
    memory = Memory(
        arguments=m.argument_size_in_bytes,
        outputs=m.output_size_in_bytes,
        temporaries=m.temp_size_in_bytes,
        aliased=m.alias_size_in_bytes,
        code=m.generated_code_size_in_bytes,
        peak=m.peak_memory_in_bytes,
    )
    log.info("batch %d: peak %s per chip (%.0f s)", run.batch_size, _gib(memory.peak), seconds)
    return Attempt(run.batch_size, seconds, memory=memory)


def _with_batch(run: RunConfig, batch_size: int) -> RunConfig:
    return dataclasses.replace(run, batch_size=batch_size)


def search_largest_batch(
    run: RunConfig, devices: list[jax.Device], known: Attempt, max_per_chip: int
) -> tuple[Attempt | None, Attempt | None, int, float]:
    """(largest fitting attempt, smallest failing attempt, compiles, seconds) over global batches that are
    multiples of the data-parallel size times the micro-batches: doubling from `known` (halving if it does not
    fit), then bisecting; starting from a batch near the answer saves the compiles below it."""
    mesh = sharding.make_mesh(run.mesh, devices)
    unit = sharding.data_parallel_size(sharding.batch_sharding(mesh, run.mesh.rules)) * run.micro_batches
    limit = max(1, max_per_chip * len(devices) // unit)
    tried: dict[int, Attempt] = {known.batch_size // unit: known} if known.batch_size % unit == 0 else {}
    compiles, seconds = 0, 0.0

    def attempt(k: int) -> Attempt:
        nonlocal compiles, seconds
        if k not in tried:
            tried[k] = compile_step(_with_batch(run, k * unit), devices)
            compiles, seconds = compiles + 1, seconds + tried[k].seconds
        return tried[k]

    good, bad = 0, 0  # the largest multiple known to fit; the smallest known not to (0 = none yet)
    k = min(max(1, known.batch_size // unit), limit)
    if attempt(k).fits:
        good = k
        while not bad and good < limit:
            k = min(2 * good, limit)
            good, bad = (k, 0) if attempt(k).fits else (good, k)
    else:
        bad = k
        while not good and bad > 1:
            k = bad // 2
            good, bad = (k, bad) if attempt(k).fits else (0, k)
    while bad and bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if attempt(mid).fits else (good, mid)
    return tried.get(good), tried.get(bad), compiles, seconds


def _shallow(run: RunConfig, periods: int) -> RunConfig:
    """`run` with `periods` periods of the attention pattern, unrolled, one loss chunk, one micro-batch and
    XLA attention: the same arithmetic, in a program whose cost analysis counts all of it."""
    m = run.model
    shallow = dataclasses.replace(
        m,
        n_layer=periods * len(m.attention_pattern),
        scan_layers=False,
        loss_chunk=run.sequence_length if m.loss_chunk else 0,
        attention_impl="xla",
    )
    return dataclasses.replace(run, model=shallow, batch_size=run.batch_size // run.micro_batches, micro_batches=1)


def compiled_flops_per_step(run: RunConfig, devices: list[jax.Device]) -> float | None:
    """FLOPs of one step on all chips from the compiler's cost analysis of two shallow copies (see the module
    docstring); None if the compiler reports none."""
    options = _NO_WINDOWED_EINSUM if devices[0].platform == "tpu" else None

    def flops(periods: int) -> float | None:
        cost = lower_train_step(_shallow(run, periods), devices).compile(options).cost_analysis()
        value = (cost or {}).get("flops")
        return None if value is None else float(value) * len(devices)

    periods = run.model.n_layer // len(run.model.attention_pattern)
    one = flops(1)
    two = flops(2) if periods > 1 else one
    if one is None or two is None:
        return None
    return (one + (periods - 1) * (two - one)) * run.micro_batches


def plan(
    run: RunConfig,
    devices: list[jax.Device],
    *,
    target: str,
    hbm_bytes: int | None,
    search: bool = True,
    max_per_chip: int = 64,
    flops: bool = True,
) -> Plan:
    """Compile `run`'s train step on `devices` and report; with `search` (and a known HBM size), also the
    largest batch that fits, at most `max_per_chip` sequences per chip."""
    mesh = sharding.make_mesh(run.mesh, devices)
    m = run.model
    with jax.set_mesh(mesh):
        attention = model.attention_impl(m, run.sequence_length, general_masks=False)
    if attention == "xla" and devices[0].platform == "tpu" and m.attn_dropout > 0:
        log.warning(
            "%s: model.attn_dropout=%g keeps attention on the XLA path (splash has no dropout), which libtpu's "
            "compiler has crashed on with a stack overflow; model.attn_dropout=0 selects splash attention",
            m.name,
            m.attn_dropout,
        )
    attempt = compile_step(run, devices)
    best = too_large = None
    compiles, seconds = 0, 0.0
    if search and hbm_bytes is not None:
        best, too_large, compiles, seconds = search_largest_batch(run, devices, attempt, max_per_chip)
    return Plan(
        model=m.name,
        target=target,
        chips=len(devices),
        hosts=len({d.process_index for d in devices}),
        mesh={k: int(v) for k, v in mesh.shape.items()},
        seq_len=run.sequence_length,
        hbm_bytes=hbm_bytes,
        attempt=attempt,
        largest_batch=best,
        first_too_large=too_large,
        search_compiles=compiles,
        search_seconds=seconds,
        flops_per_step=compiled_flops_per_step(run, devices) if flops else None,
        model_flops_per_step=model.flops_per_token(m, run.sequence_length) * run.batch_size * run.sequence_length,
        settings={
            "remat": m.remat,
            "scan_layers": m.scan_layers,
            "attention_impl": m.attention_impl,
            "attention": attention,  # the kernel `auto` resolved to for this target
            "loss_chunk": m.loss_chunk,
            "dtype": m.dtype,
            "micro_batches": run.micro_batches,
        },
    )


def tpu_environment(slice_: tpu.SliceType) -> None:
    """Environment libtpu reads when it loads (before the first topology): several processes may compile at
    once, and the accelerator type quiets its start-up probe. Values already set are kept."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", slice_.accelerator_type)


def plan_slice(run: RunConfig, slice_name: str, **options: Any) -> Plan:
    """`plan` for a named TPU slice (e.g. "v5e-64"), on libtpu's description of its devices."""
    slice_ = tpu.slice_type(slice_name)
    tpu_environment(slice_)
    devices = tpu.topology_devices(slice_)
    return plan(run, devices, target=slice_.name, hbm_bytes=slice_.generation.hbm_bytes, **options)


def local_hbm_bytes(devices: list[jax.Device]) -> int | None:
    """Per-device memory of the devices at hand, if they report it (TPUs and GPUs do, CPUs do not)."""
    stats = devices[0].memory_stats()
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def plan_local(run: RunConfig, **options: Any) -> Plan:
    """`plan` for the devices at hand (`gptjax train --dry-run`)."""
    devices = jax.devices()
    return plan(run, devices, target=devices[0].device_kind, hbm_bytes=local_hbm_bytes(devices), **options)


def report(result: Plan, as_json: bool) -> str:
    """The plan as the CLI prints it: the human-readable report, or JSON for scripts."""
    return json.dumps(result.to_json(), indent=2, sort_keys=True) if as_json else result.format()


__all__ = [
    "Attempt",
    "Memory",
    "Plan",
    "compile_step",
    "compiled_flops_per_step",
    "lower_train_step",
    "plan",
    "plan_local",
    "plan_slice",
    "report",
    "search_largest_batch",
]
