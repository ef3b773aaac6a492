"""Throughput and model-FLOPs utilisation (MFU) arithmetic, and the sinks training metrics are written to.

MFU = achieved model FLOP/s per device / peak FLOP/s per device, with model FLOPs counted by
`gptjax.model.flops_per_token` (convention `model.FLOPS_CONVENTION`, recorded in the run's metadata so
numbers from different conventions are never compared silently). Peaks come from a table of published
per-chip figures keyed by `jax.Device.device_kind`, are measured on CPU, or are given explicitly.

Only the writer process (process 0 by default) creates files; other processes get a no-op sink. A local
metrics file is appended and flushed line by line. A cloud object cannot be appended to, so on gs:// the
records are buffered and the whole file is uploaded at most every `flush_seconds`, at every `flush()` (the
checkpoint hook calls it, so the file always covers the latest checkpoint) and at the end; TensorBoard's
event file likewise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import jax
import jax.numpy as jnp
from tensorboardX import SummaryWriter
from tqdm import tqdm

from gptjax import model
from gptjax.config import RunConfig
from gptjax.errors import ConfigError
from gptjax.rundir import PathLike, RunDir, as_path, is_local, write_atomic

PeakSource = Literal["table", "measured", "override"]

# Dense (non-sparse) peak FLOP/s per JAX device, by dtype of the matmul inputs. "float32" is the rate at
# JAX's default matmul precision, which computes fp32 dots as one bf16 pass on TPU and as TF32 on Ampere
# and Hopper GPUs (docs.jax.dev/en/latest/201/precision.html), so it equals the bf16 peak on TPU and the
# TF32 tensor-core peak on GPU. Keys are device_kind strings as JAX reports them (jax._src.tpu_info and
# the CUDA device name); some generations report two spellings. TPU v4/v5p run as megacore, one JAX
# device per chip; v2/v3 expose each of a chip's two TensorCores as a device, hence half the chip peak.
_TPU_V4 = {"bfloat16": 275e12, "float32": 275e12}
_TPU_V5E = {"bfloat16": 197e12, "float32": 197e12}
_TPU_V5P = {"bfloat16": 459e12, "float32": 459e12}
_TPU_V6E = {"bfloat16": 918e12, "float32": 918e12}  # Trillium
_A100 = {"bfloat16": 312e12, "float32": 156e12}
_H100_SXM = {"bfloat16": 989e12, "float32": 494.5e12}
_H100_PCIE = {"bfloat16": 756e12, "float32": 378e12}
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "TPU v2": {"bfloat16": 22.5e12, "float32": 22.5e12},  # 45 TFLOP/s per chip
    "TPU v3": {"bfloat16": 61.5e12, "float32": 61.5e12},  # 123 TFLOP/s per chip
    "TPU v4": _TPU_V4,
    "TPU v5 lite": _TPU_V5E,
    "TPU v5e": _TPU_V5E,
    "TPU v5": _TPU_V5P,
    "TPU v5p": _TPU_V5P,
    "TPU v6 lite": _TPU_V6E,
    "TPU v6e": _TPU_V6E,
    "NVIDIA A100-SXM4-40GB": _A100,
    "NVIDIA A100-SXM4-80GB": _A100,
    "NVIDIA A100-PCIE-40GB": _A100,
    "NVIDIA A100 80GB PCIe": _A100,
    "NVIDIA H100 80GB HBM3": _H100_SXM,
    "NVIDIA H100 PCIe": _H100_PCIE,
}
_BY_LOWER = {kind.lower(): peaks for kind, peaks in PEAK_FLOPS.items()}


def measure_matmul_peak(
    n: int = 1024, dtype: Any = jnp.float32, seconds: float = 0.5, device: jax.Device | None = None
) -> float:
    """FLOP/s of a jitted n x n matmul on one local device: the median of >= 3 timed runs after warm-up.

    On CPU no published peak fits the host, so this is what MFU is measured against; repeats continue
    for about `seconds` so a noisy neighbour does not set the figure.
    """
    device = device or jax.local_devices()[0]
    x = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), dtype), device)
    matmul = jax.jit(jnp.matmul)
    for _ in range(2):  # compile, then one run with warm caches
        matmul(x, x).block_until_ready()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        matmul(x, x).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2.0 * n**3 / statistics.median(times)


@functools.cache
def _measured_cpu_peak(dtype: str) -> float:
    # Emulated host devices (--xla_force_host_platform_device_count) share one set of cores.
    return measure_matmul_peak(dtype=dtype) / jax.local_device_count()


def _peak(device_kind: str, dtype: Any, override: float) -> tuple[float, PeakSource]:
    if override < 0:
        raise ConfigError(f"logging.peak_flops_per_device must be positive (or 0 = automatic), got {override}")
    if override > 0:
        return override, "override"
    name = jnp.dtype(dtype).name
    if device_kind.lower() == "cpu":
        return _measured_cpu_peak(name), "measured"
    peaks = _BY_LOWER.get(device_kind.lower())
    if peaks is None:
        raise ConfigError(
            f"no peak FLOP/s known for device kind {device_kind!r}; set logging.peak_flops_per_device=<dense "
            f"{name} FLOP/s of one device> in the run config. Known kinds: {', '.join(PEAK_FLOPS)}"
        )
    if name not in peaks:
        raise ConfigError(
            f"no {name} peak known for device kind {device_kind!r} (known: {', '.join(peaks)}); "
            f"set logging.peak_flops_per_device=<dense {name} FLOP/s of one device> in the run config"
        )
    return peaks[name], "table"


def peak_flops_per_device(device_kind: str, dtype: Any, override: float = 0.0) -> float:
    """Peak FLOP/s of one device: `override` if positive, else measured on CPU, else the table."""
    return _peak(device_kind, dtype, override)[0]


# ---------------------------------------------------------------------------------------------------------
# MFU arithmetic.


@dataclass(frozen=True)
class StepMetrics:
    """Throughput over a logging interval, and totals at its end."""

    tokens_per_s: float
    tflops_per_device: float  # achieved model TFLOP/s per device
    mfu: float
    tokens_seen: int
    flops_seen: float

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Throughput:
    """Constants of one run that turn wall-clock time per step into tokens/s, TFLOP/s and MFU."""

    tokens_per_step: int  # global batch size * sequence length
    flops_per_token: float
    n_devices: int
    peak_flops_per_device: float
    device_kind: str
    dtype: str
    peak_source: PeakSource

    def __post_init__(self) -> None:
        for name in ("tokens_per_step", "flops_per_token", "n_devices", "peak_flops_per_device"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"Throughput.{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def for_run(cls, run: RunConfig, device_kind: str, n_devices: int) -> Throughput:
        """The run's constants on `n_devices` devices of `device_kind` (peak per `peak_flops_per_device`)."""
        peak, source = _peak(device_kind, run.model.dtype, run.logging.peak_flops_per_device)
        return cls(
            tokens_per_step=run.batch_size * run.sequence_length,
            flops_per_token=model.flops_per_token(run.model, run.sequence_length),
            n_devices=n_devices,
            peak_flops_per_device=peak,
            device_kind=device_kind,
            dtype=run.model.dtype,
            peak_source=source,
        )

    def measure(self, step: int, steps: int, seconds: float) -> StepMetrics:
        """Metrics for `steps` optimizer steps that took `seconds`, ending after step number `step`."""
        if steps <= 0 or not seconds > 0:
            raise ValueError(f"need steps > 0 and seconds > 0 to measure throughput, got {steps=}, {seconds=}")
        tokens_per_s = steps * self.tokens_per_step / seconds
        flops_per_s_per_device = tokens_per_s * self.flops_per_token / self.n_devices
        tokens_seen = step * self.tokens_per_step
        return StepMetrics(
            tokens_per_s=tokens_per_s,
            tflops_per_device=flops_per_s_per_device / 1e12,
            mfu=flops_per_s_per_device / self.peak_flops_per_device,
            tokens_seen=tokens_seen,
            flops_seen=tokens_seen * self.flops_per_token,
        )

    def metadata(self) -> dict[str, Any]:
        """What a reader needs to interpret the MFU numbers, including the FLOP-counting convention."""
        return {**dataclasses.asdict(self), "flops_convention": model.FLOPS_CONVENTION}


# ---------------------------------------------------------------------------------------------------------
# Sinks. `start_step` is the optimizer step a (re)started run continues from: records after it were
# written by the previous attempt and are replayed by this one, so they are dropped.


class Sink(Protocol):
    def write(self, step: int, scalars: Mapping[str, Any]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class _Interval:
    """Whether `seconds` have passed since the last time it said so."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self._last = seconds, time.monotonic()

    def due(self) -> bool:
        if time.monotonic() - self._last < self.seconds:
            return False
        self._last = time.monotonic()
        return True


def _plain(value: Any) -> Any:
    """numpy/JAX scalars -> Python numbers, so JSON and TensorBoard accept them."""
    return value.item() if hasattr(value, "item") else value


def read_metrics(path: PathLike) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a torn last line (a crash mid-write) is skipped."""
    records = []
    for line in as_path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class JsonlSink:
    """One JSON object per `write` ({"step", "time", **scalars}): appended and flushed line by line to a
    local file; buffered and uploaded whole (module docstring) to a gs:// one."""

    def __init__(self, path: PathLike, start_step: int = 0, flush_seconds: float = 60.0):
        self.path = as_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r["step"] <= start_step] if self.path.exists() else []
        self._text = "".join(json.dumps(r) + "\n" for r in kept)
        write_atomic(self.path, self._text)
        self._file = self.path.open("a") if is_local(self.path) else None
        self._unflushed = False
        self._interval = _Interval(flush_seconds)
        self.uploads = 0  # whole-file uploads of a gs:// file (tests check they are not one per record)

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        record = {"step": int(step), "time": time.time(), **{k: _plain(v) for k, v in scalars.items()}}
        line = json.dumps(record) + "\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
            return
        self._text += line
        self._unflushed = True
        if self._interval.due():
            self.flush()

    def flush(self) -> None:
        if self._file is None and self._unflushed:
            write_atomic(self.path, self._text)
            self._unflushed = False
            self.uploads += 1

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()


class TensorBoardSink:
    """Scalars to a tensorboardX event file in `logdir` (gs:// through google-cloud-storage, which uploads
    the whole file at each flush: so flushed on the module's schedule there, after every write locally);
    TensorBoard hides the previous attempt's steps."""

    def __init__(self, logdir: PathLike, start_step: int = 0, flush_seconds: float = 60.0):
        # Event files are named by the second they were opened in; the suffix keeps a quick restart from
        # overwriting the previous attempt's file.
        self._writer = SummaryWriter(
            os.fspath(logdir),
            purge_step=start_step + 1,
            filename_suffix=f".{os.getpid()}.{start_step}",
            flush_secs=int(flush_seconds) or 1,
        )
        self._interval = _Interval(0.0 if is_local(logdir) else flush_seconds)

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(key, _plain(value), int(step))
        if self._interval.due():
            self._writer.flush()

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class ProgressBar:
    """A tqdm bar over optimizer steps showing the latest loss, tokens/s and MFU."""

    _SHOWN = {"loss": ("loss", "{:.4f}"), "tokens_per_s": ("tok/s", "{:,.0f}"), "mfu": ("mfu", "{:.1%}")}

    def __init__(self, total_steps: int, start_step: int = 0):
        self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self._postfix: dict[str, str] = {}

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        for key, (label, fmt) in self._SHOWN.items():
            if key in scalars:  # eval-only records keep the last training numbers on screen
                self._postfix[label] = fmt.format(_plain(scalars[key]))
        self._bar.set_postfix(self._postfix, refresh=False)
        self._bar.update(int(step) - self._bar.n)

    def flush(self) -> None:
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


class MultiSink:
    """Fans each record out to several sinks; usable as a context manager that closes them all."""

    def __init__(self, sinks: Sequence[Sink]):
        self.sinks = list(sinks)

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(step, scalars)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> MultiSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _writer(is_writer: bool | None) -> bool:
    return jax.process_index() == 0 if is_writer is None else is_writer


def open_sinks(
    run_dir: RunDir,
    total_steps: int,
    start_step: int = 0,
    is_writer: bool | None = None,
    progress: bool = True,
    flush_seconds: float = 60.0,
) -> MultiSink:
    """The run's metrics.jsonl, TensorBoard directory and (optionally) a progress bar; a no-op off the writer.

    `is_writer` defaults to "this is process 0", so every host can call this unconditionally.
    """
    if not _writer(is_writer):
        return MultiSink([])
    sinks: list[Sink] = [
        JsonlSink(run_dir.metrics_file, start_step, flush_seconds),
        TensorBoardSink(run_dir.tensorboard_dir, start_step, flush_seconds),
    ]
    if progress:
        sinks.append(ProgressBar(total_steps, start_step))
    return MultiSink(sinks)


def write_metadata(
    path: PathLike, metadata: Mapping[str, Any], start_step: int = 0, is_writer: bool | None = None
) -> None:
    """Record `metadata` (e.g. `Throughput.metadata()`) for the attempt starting at `start_step` in `path`
    (a run's metrics_meta.json).

    The file is a list with one entry per (re)start, because a resumed run may land on other hardware; an
    entry covers the steps after its start_step, up to the next entry's.
    """
    if not _writer(is_writer):
        return
    path = as_path(path)
    entries = json.loads(path.read_text()) if path.exists() else []
    entries = [e for e in entries if e["start_step"] < start_step]
    entries.append({"start_step": start_step, **{k: _plain(v) for k, v in metadata.items()}})
    write_atomic(path, json.dumps(entries, indent=2))


__all__ = [
    "PEAK_FLOPS",
    "measure_matmul_peak",
    "peak_flops_per_device",
    "StepMetrics",
    "Throughput",
    "Sink",
    "JsonlSink",
    "TensorBoardSink",
    "ProgressBar",
    "MultiSink",
    "open_sinks",
    "write_metadata",
    "read_metrics",
]
