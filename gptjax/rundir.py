"""Run and sweep directories: the one module that names their files, writes them atomically, and compares a
saved run config with a new one.

```
<run_dir>/config.json          the fully resolved RunConfig
<run_dir>/metrics.jsonl        one JSON object per logged step
<run_dir>/metrics_meta.json    peak FLOPs, device kind, FLOP convention, one entry per (re)start
<run_dir>/tb/                  TensorBoard event files
<run_dir>/checkpoints/<step>/  orbax
<run_dir>/eval/<step>.json     eval results at that step
<run_dir>/sweep_point.json     the wall time a sweep runner spent on this run
<run_dir>/DONE                 written once the last step is complete

<sweep_dir>/sweep.toml         the sweep file as last run
<sweep_dir>/runs/<point>/      one run directory per point
<sweep_dir>/registry.jsonl     one record per finished point
<sweep_dir>/failures.jsonl     the points that failed in the last invocation (absent when none did)
<sweep_dir>/report/            the sweep report
```

Paths are `etils.epath.Path`s, so a directory may be local or a `gs://` URL; orbax, which writes the
checkpoints, takes the same path type.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

from etils import epath

from gptjax.config import RunConfig, changed_fields, dumps, from_dict
from gptjax.errors import ConfigError, InputNotFoundError

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


class RunDir(_Directory):
    """One training run's directory."""

    config_file = _Entry("config.json")
    metrics_file = _Entry("metrics.jsonl")
    metrics_meta_file = _Entry("metrics_meta.json")
    tensorboard_dir = _Entry("tb")
    checkpoints_dir = _Entry("checkpoints")
    eval_dir = _Entry("eval")
    sweep_point_file = _Entry("sweep_point.json")
    done_file = _Entry("DONE")

    def eval_results(self, step: int) -> epath.Path:
        return self.eval_dir / f"{step}.json"

    def eval_results_files(self) -> list[epath.Path]:
        """Every eval/<step>.json, by step."""
        if not self.eval_dir.is_dir():
            return []
        files = [p for p in self.eval_dir.glob("*.json") if p.stem.isdigit()]
        return sorted(files, key=lambda p: int(p.stem))

    @property
    def default_data_cache(self) -> epath.Path:
        """Where tokenised data is cached unless `data.cache_dir` says otherwise: beside the run, so runs
        of one sweep share it."""
        return self.path.parent / ".data_cache"

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


__all__ = ["PathLike", "RunDir", "SweepDir", "as_path", "is_local", "read_json", "write_atomic", "write_json"]
