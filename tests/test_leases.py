"""Sweep leases (experiments/leases.py): a point is held by one holder; another takes it over only once the
holder's heartbeat and lease are stale, and only if nobody wrote the lease since it was read (a conditional
write, on a local directory and on the GCS emulator alike); a sweep run by one holder trains what is free,
waits for what another holds, and takes over a point whose holder fell silent."""

from __future__ import annotations

import json
import threading
import time

import pytest

from experiments import leases as leases_lib
from experiments import runner
from experiments.leases import Leases
from gptjax.rundir import RunDir, SweepDir, write_json


def _go_stale(sweep: SweepDir, point: str, holder: str) -> None:
    """What a holder that stopped an hour ago leaves behind."""
    write_json(sweep.lease_file(point), {"holder": holder, "time": time.time() - 3600})
    write_json(sweep.heartbeat_file(holder), {"point": point, "step": 1, "time": time.time() - 3600})


@pytest.fixture(params=["local", "gs"])
def sweep(request, tmp_path):
    if request.param == "local":
        return SweepDir(tmp_path / "sweep")
    return SweepDir(f"{request.getfixturevalue('gcs').prefix()}/sweep")


def test_a_point_has_one_holder_until_the_holder_goes_stale(sweep):
    a, b = Leases(sweep, "a"), Leases(sweep, "b")
    assert a.acquire("p1") and a.acquire("p1")  # free, then already ours
    assert not b.acquire("p1") and b.acquire("p2")
    write_json(sweep.heartbeat_file("a"), {"point": "p1", "step": 5, "time": time.time()})
    assert not b.acquire("p1")  # a beats for p1
    _go_stale(sweep, "p1", "a")
    assert b.acquire("p1") and b.holder_of("p1") == "b"
    assert not a.acquire("p1")  # a, back from the dead, finds p1 taken


def test_a_takeover_loses_to_a_write_after_its_read(sweep, monkeypatch):
    a, b = Leases(sweep, "a"), Leases(sweep, "b")
    assert a.acquire("p")
    _go_stale(sweep, "p", "a")
    stale = Leases._stale

    def c_takes_it_meanwhile(self, point, lease):  # between b's read of the lease and b's write
        write_json(sweep.lease_file(point), {"holder": "c", "time": time.time()})
        return stale(self, point, lease)

    monkeypatch.setattr(leases_lib.Leases, "_stale", c_takes_it_meanwhile)
    assert not b.acquire("p") and b.holder_of("p") == "c"


def test_a_holder_trains_free_points_waits_for_held_ones_and_takes_over_stale_ones(tmp_path, monkeypatch):
    # The scheduling alone: training is a stub that marks the run done (tests/test_pod_workers.py trains a
    # sweep under leases for real, on the GCS emulator).
    sweep_file = tmp_path / "two.toml"
    sweep_file.write_text(
        'name = "two"\n[base]\noptim.warmup_steps = 1\n[axes]\npresets = ["tiny-25k"]\nsteps = [2, 3]\n'
    )
    sweep = SweepDir(tmp_path / "sweep")
    free, held = "tiny-25k_2steps_seed0", "tiny-25k_3steps_seed0"
    trained, seen = [], {}

    def train(run, progress, heartbeat):
        trained.append((RunDir(run.run_dir).name, heartbeat))
        RunDir(run.run_dir).mark_done()
        return True

    monkeypatch.setattr(runner, "_train", train)
    monkeypatch.setattr(runner, "rebuild_registry", lambda sweep_dir: [])
    assert Leases(sweep, "b").acquire(held)
    write_json(sweep.heartbeat_file("b"), {"point": held, "step": 1, "time": time.time()})

    def b_falls_silent_once_a_waits() -> None:  # the sweep runs in the main thread, as it would
        deadline = time.monotonic() + 60  # then the sweep ends (and the asserts below say what went wrong)
        while not sweep.run(free).is_done() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a few polls of a, which must leave the held point alone
        seen["held point trained while b was alive"] = sweep.run(held).is_done()
        _go_stale(sweep, held, "b")

    silence = threading.Thread(target=b_falls_silent_once_a_waits)
    silence.start()
    result = runner.run_sweep(sweep_file, sweep.path, progress=False, report=False, holder="a", poll_seconds=0.1)
    silence.join()
    assert seen == {"held point trained while b was alive": False}
    assert result.trained == [free, held] and [t[0] for t in trained] == [free, held]
    assert trained[1][1] == (sweep.heartbeat_file("a"), held)  # a beats for the point it took over
    assert Leases(sweep, "b").holder_of(held) == "a"
    assert json.loads(sweep.heartbeat_file("a").read_text())["waiting"] is True  # beat while it waited
