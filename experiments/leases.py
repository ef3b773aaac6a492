"""Leases on sweep points, so several TPU slices share one sweep directory: each takes the next point nobody
holds (`<sweep_dir>/leases/<point>.json`, `gptjax.rundir.SweepDir`).

A lease is taken by a conditional write: created only if absent, or replaced only if unchanged since it was
read (GCS's generation preconditions through tensorstore's kvstore, which also writes orbax's arrays; the
local file driver gives the same guarantee). So two slices racing for a point never both win it. A lease
is the holder's for good (its relaunch after a preemption finds its own lease and resumes the point), unless
the holder falls silent: its heartbeat (`<sweep_dir>/heartbeats/<holder>.json`, written while it trains the
point) and the lease itself both older than `stale_seconds`, when another holder may take it over.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import tensorstore as ts

from gptjax.rundir import SweepDir, is_local


def _kvstore(sweep_dir: SweepDir) -> ts.KvStore:
    directory = os.fspath(sweep_dir.leases_dir)
    if is_local(directory):
        spec: dict[str, Any] = {"driver": "file", "path": os.path.abspath(directory) + "/"}
    else:
        bucket, _, prefix = directory.removeprefix("gs://").partition("/")
        spec = {"driver": "gcs", "bucket": bucket, "path": prefix.rstrip("/") + "/"}
    return ts.KvStore.open(spec).result()


class Leases:
    """The leases of one sweep directory as seen by one holder (e.g. a slice's name)."""

    def __init__(self, sweep_dir: SweepDir, holder: str, stale_seconds: float = 1800.0) -> None:
        self.sweep_dir, self.holder, self.stale_seconds = sweep_dir, holder, stale_seconds
        self._store = _kvstore(sweep_dir)

    def _key(self, point: str) -> str:
        return f"{point}.json"

    def holder_of(self, point: str) -> str | None:
        read = self._store.read(self._key(point)).result()
        return json.loads(read.value)["holder"] if read.state == "value" else None

    def acquire(self, point: str) -> bool:
        """True if this holder holds `point` now: it was free, was already ours, or was stale and nobody
        else took it over first."""
        read = self._store.read(self._key(point)).result()
        if read.state == "value":
            lease = json.loads(read.value)
            if lease["holder"] == self.holder:
                return True
            if not self._stale(point, lease):
                return False
        value = json.dumps({"holder": self.holder, "time": time.time()}).encode()
        written = self._store.write(self._key(point), value, if_equal=read.stamp.generation).result()
        return bool(written.generation)  # empty: the condition failed, someone else wrote first

    def _stale(self, point: str, lease: dict[str, Any]) -> bool:
        last = lease["time"]
        beat = self.sweep_dir.heartbeat_file(lease["holder"])
        if beat.is_file():
            record = json.loads(beat.read_text())
            if record.get("point") == point:
                last = max(last, record["time"])
        return time.time() - last > self.stale_seconds


__all__ = ["Leases"]
