"""Run and sweep directories: the one module that names their files, writes them atomically, and compares a
saved run config with a new one.

```
<run_dir>/config.json          the fully resolved RunConfig
<run_dir>/metrics.jsonl        one JSON object per logged step
<run_dir>/metrics_meta.json    peak FLOPs, device kind, FLOP convention, one entry per (re)start
<run_dir>/tb/                  TensorBoard event files
<run_dir>/checkpoints/<step>/  orbax
<run_dir>/eval/<step>.json     eval results at that step
<run_dir>/icl/<step>.json      in-context-learning probe results at that step (eval/icl; same format)
<run_dir>/finetune.json        a fine-tuning run's validation accuracy (gptjax/finetune; eval's results format)
<run_dir>/align.json           an alignment stage's config and the runs it started from (gptjax/rlhf)
<run_dir>/align_result.json    that stage's held-out figures (the RM's also its centring shift)
<run_dir>/sweep_point.json     the wall time a sweep runner spent on this run
<run_dir>/heartbeat.json       {"step", "time", "host"}: rewritten while training (tpu_scripts' keep-alive
                               loop relaunches a slice whose heartbeat goes stale)
<run_dir>/profile/             jax.profiler traces (`profile_steps`), for TensorBoard's profile plugin
<run_dir>/logs/<tpu>-worker-<i>.log  each TPU worker's output, copied there by tpu_scripts/worker.sh
<run_dir>/DONE                 written once the last step is complete

<sweep_dir>/sweep.toml         the sweep file as last run
<sweep_dir>/runs/<point>/      one run directory per point
<sweep_dir>/registry.jsonl     one record per finished point
<sweep_dir>/failures.jsonl     the points that failed in the last invocation (absent when none did)
<sweep_dir>/report/            the sweep report
<sweep_dir>/leases/<point>.json which slice trains that point ({"holder", "time"}), when several share a sweep
<sweep_dir>/heartbeats/<holder>.json  {"point", "step", "time", ...}: that holder's training heartbeat
<sweep_dir>/DONE               written once every point is done and the report is built

<corpus_dir>/documents.jsonl   a prepared corpus (`gptjax data filter|dedup|decontaminate`), one JSON
                               object per line: {"id", "text", ...}; a training source (gptjax.data.tasks)
<corpus_dir>/clusters.jsonl    dedup: one duplicate cluster per line
<corpus_dir>/dirty/<task>.json decontaminate: the eval task's documents found in the corpus
<corpus_dir>/report.json       what the command did and found; written last, so its presence marks a
                               complete directory
```

Paths are `etils.epath.Path`s, so a directory may be local or a `gs://` URL; orbax, which writes the
checkpoints, takes the same path type. gs:// is reached through gcsfs (fsspec) rather than tf.io.gfile, for
gptjax's files and orbax's alike: TensorFlow's GCS client has a fixed endpoint, so only gcsfs (and
tensorstore, which writes the arrays) can be pointed at a local emulator, and tests run what pods run.
gcsfs's zonal/HNS bucket support is off: it first probes the bucket type over gRPC, which an emulator never
answers (a minute per call). Its directory-listing cache is off too: it never expires, so a long-running
process (a sweep waiting for other slices' points) would never see what other hosts wrote. These are
defaults set here; the environment (and fsspec's configuration) may override them.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

import fsspec.config
from etils import epath

from gptjax.config import RunConfig, changed_fields, dumps, from_dict
from gptjax.errors import ConfigError, InputNotFoundError
from gptjax.paths import local_cache_dir

os.environ.setdefault("EPATH_USE_TF", "false")  # read once, at the first gs:// path's first use
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # read when gcsfs is imported
fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)

PathLike: TypeAlias = str | os.PathLike[str] | epath.Path


def as_path(path: PathLike) -> epath.Path:
    """A local path or a `gs://` URL as one path type."""
    return path if isinstance(path, epath.Path) else epath.Path(path)


def is_local(path: PathLike) -> bool:
    return "://" not in os.fspath(path)


def write_atomic(path: PathLike, data: str | bytes | Callable[[BinaryIO], None]) -> None:
    """Write `data` (text, bytes, or a function that writes to a binary file) so a reader sees the old file
    or the new one, never a part. A local file is written under a temporary name in the same directory,
    flushed to disk and renamed, so concurrent writers each install a complete file; a cloud object is
    replaced whole by its single upload."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write = data if callable(data) else (lambda f: f.write(data.encode("utf-8") if isinstance(data, str) else data))
    if not is_local(path):
        with path.open("wb") as f:
            write(f)
        return
    tmp = Path(os.fspath(path)).with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.fspath(path))
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: PathLike, value: Any, indent: int | None = 2) -> None:
    write_atomic(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def staged_dir(path: PathLike) -> Iterator[Path]:
    """A local directory to write the files of directory `path` into (reports: matplotlib and Markdown
    writers need local files): `path` itself when local; for gs:// a temporary directory whose files are
    uploaded to `path` when the block ends without an error."""
    if is_local(path):
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="gptjax-staged-") as tmp:
        yield Path(tmp)
        for file in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
            write_atomic(as_path(path) / file.relative_to(tmp).as_posix(), file.read_bytes())


def read_json(path: PathLike) -> Any:
    path = as_path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path} does not exist")
    return json.loads(path.read_text())


class _Entry:
    """A named file or directory of a layout: on an instance, its path (`RunDir(p).config_file` is
    `p / "config.json"`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, directory: _Directory | None, owner: type) -> Any:
        return self if directory is None else directory.path / self.name


class _Directory:
    """A directory whose layout a subclass names; usable wherever a path is (os.fspath)."""

    def __init__(self, path: PathLike) -> None:
        self.path = as_path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({os.fspath(self.path)!r})"

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    @property
    def name(self) -> str:
        return self.path.name


def _by_step(directory: epath.Path) -> list[epath.Path]:
    """The <step>.json files of `directory`, by step."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.glob("*.json") if p.stem.isdigit()), key=lambda p: int(p.stem))


class RunDir(_Directory):
    """One training run's directory."""

    config_file = _Entry("config.json")
    metrics_file = _Entry("metrics.jsonl")
    metrics_meta_file = _Entry("metrics_meta.json")
    tensorboard_dir = _Entry("tb")
    checkpoints_dir = _Entry("checkpoints")
    eval_dir = _Entry("eval")
    icl_dir = _Entry("icl")
    finetune_file = _Entry("finetune.json")
    align_file = _Entry("align.json")
    align_result_file = _Entry("align_result.json")
    sweep_point_file = _Entry("sweep_point.json")
    heartbeat_file = _Entry("heartbeat.json")
    profile_dir = _Entry("profile")
    logs_dir = _Entry("logs")
    done_file = _Entry("DONE")

    def eval_results(self, step: int) -> epath.Path:
        return self.eval_dir / f"{step}.json"

    def eval_results_files(self) -> list[epath.Path]:
        """Every eval/<step>.json, by step."""
        return _by_step(self.eval_dir)

    def icl_results(self, step: int) -> epath.Path:
        return self.icl_dir / f"{step}.json"

    def icl_results_files(self) -> list[epath.Path]:
        """Every icl/<step>.json, by step."""
        return _by_step(self.icl_dir)

    @property
    def default_data_cache(self) -> epath.Path:
        """Where tokenised data is cached unless `data.cache_dir` says otherwise: beside a local run, so
        runs of one sweep share it; for a gs:// run, a local directory of each host (memory-mapped files)."""
        if is_local(self.path):
            return self.path.parent / ".data_cache"
        return as_path(local_cache_dir() / "data")

    # -- the saved config ---------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.config_file.is_file()

    def read_config(self) -> RunConfig:
        if not self.config_file.is_file():
            raise InputNotFoundError(f"{self.config_file} not found: {self.path} is not a gptjax run directory")
        return from_dict(RunConfig, json.loads(self.config_file.read_text()))

    def check_same_run(self, run: RunConfig, advice: str = "use a new run_dir") -> None:
        """Raise ConfigError if the saved config describes a different run than `run` (a field that is not
        `resumable` differs); nothing to compare with when no config was saved."""
        if not self.exists():
            return
        changed = changed_fields(self.read_config(), run)
        if changed:
            detail = "; ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in sorted(changed.items()))
            raise ConfigError(f"{self.config_file} describes a different run ({detail}); {advice}")

    def write_config(self, run: RunConfig) -> None:
        write_atomic(self.config_file, dumps(run) + "\n")

    # -- completion ---------------------------------------------------------------------------------------

    def is_done(self) -> bool:
        return self.done_file.exists()

    def mark_done(self) -> None:
        write_atomic(self.done_file, "")

    def clear_done(self) -> None:
        if self.done_file.exists():
            self.done_file.unlink()


class SweepDir(_Directory):
    """A sweep's directory: one run directory per point, the registry, failures and the report."""

    sweep_file = _Entry("sweep.toml")
    runs_dir = _Entry("runs")
    registry_file = _Entry("registry.jsonl")
    failures_file = _Entry("failures.jsonl")
    report_dir = _Entry("report")
    leases_dir = _Entry("leases")
    heartbeats_dir = _Entry("heartbeats")
    done_file = _Entry("DONE")

    def lease_file(self, point: str) -> epath.Path:
        return self.leases_dir / f"{point}.json"

    def heartbeat_file(self, holder: str) -> epath.Path:
        return self.heartbeats_dir / f"{holder}.json"

    def run(self, point: str) -> RunDir:
        return RunDir(self.runs_dir / point)

    def finished_runs(self) -> list[RunDir]:
        """The run directories whose run is complete (DONE), by name."""
        if not self.runs_dir.is_dir():
            return []
        runs = [RunDir(p) for p in self.runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted((r for r in runs if r.is_done()), key=lambda r: r.name)

    def relative(self, path: PathLike) -> str:
        """`path` relative to the sweep directory, so a registry stays valid when the directory moves."""
        return os.path.relpath(os.fspath(path), os.fspath(self.path))


class CorpusDir(_Directory):
    """A prepared corpus: the documents a `gptjax data` command kept, its findings and its report."""

    documents_file = _Entry("documents.jsonl")
    clusters_file = _Entry("clusters.jsonl")
    dirty_dir = _Entry("dirty")
    report_file = _Entry("report.json")

    def dirty_file(self, task: str) -> epath.Path:
        return self.dirty_dir / f"{task}.json"

    def dirty_files(self) -> list[epath.Path]:
        """Every dirty/<task>.json, by task name."""
        return sorted(self.dirty_dir.glob("*.json")) if self.dirty_dir.is_dir() else []

    def exists(self) -> bool:
        return self.report_file.is_file()


__all__ = [
    "CorpusDir",
    "PathLike",
    "RunDir",
    "SweepDir",
    "as_path",
    "is_local",
    "read_json",
    "staged_dir",
    "write_atomic",
    "write_json",
]
