"""tpu_scripts/ against a fake `gcloud` on PATH that records every call and plays back slice states."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "tpu_scripts"

FAKE_GCLOUD = r"""#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(args) + "\n")
if "describe" in args:
    states = open(os.environ["FAKE_STATES"]).read().split()
    if states:
        open(os.environ["FAKE_STATES"], "w").write("\n".join(states[1:]))
    print(states[0] if states else "READY")
    sys.exit(1 if states and states[0] == "NOT_FOUND" else 0)
command = next((a.split("=", 1)[1] for a in args if a.startswith("--command=")), "")
if command.startswith("test -f"):
    checks = int(open(os.environ["FAKE_CHECKS"]).read() or 0) + 1
    open(os.environ["FAKE_CHECKS"], "w").write(str(checks))
    sys.exit(0 if checks >= int(os.environ["FAKE_DONE_AT_CHECK"]) else 1)
"""


@pytest.fixture
def fake(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    (tmp_path / "states").write_text("")
    (tmp_path / "checks").write_text("0")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_LOG": str(tmp_path / "calls"),
        "FAKE_STATES": str(tmp_path / "states"),
        "FAKE_CHECKS": str(tmp_path / "checks"),
        "FAKE_DONE_AT_CHECK": "1",
        "PROJECT": "proj",
        "ZONE": "us-central2-b",
        "TPU_NAME": "slice",
        "POLL_SECONDS": "0",
    }

    def run(script: str, **extra: str) -> list[list[str]]:
        (tmp_path / "calls").write_text("")
        result = subprocess.run(
            [str(SCRIPTS / script)], env={**env, **extra}, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in (tmp_path / "calls").read_text().splitlines()]

    run.states = tmp_path / "states"
    return run


def _flags(call: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in call if a.startswith("--") and "=" in a)


def test_create_asks_for_the_configured_spot_slice(fake):
    [call] = fake("create.sh", ACCELERATOR_TYPE="v5litepod-16")
    assert call[:5] == ["compute", "tpus", "tpu-vm", "create", "slice"]
    flags = _flags(call)
    assert flags["accelerator-type"] == "v5litepod-16" and flags["project"] == "proj"
    assert flags["zone"] == "us-central2-b" and "--spot" in call


def test_launch_runs_on_every_worker_with_tpu_flags_and_auto_discovery(fake):
    [call] = fake("launch.sh", PRESET="gpt3-xl", RUN_NAME="xl", OVERRIDES="steps=10 mesh.fsdp=-1 mesh.data=1")
    flags = _flags(call)
    assert call[3] == "ssh" and flags["worker"] == "all"
    command = flags["command"]
    assert "GPTJAX_DISTRIBUTED=auto" in command and "LIBTPU_INIT_ARGS='--xla_tpu" in command
    assert "gptjax train --preset gpt3-xl --run-dir /mnt/gcs/xl steps=10 mesh.fsdp=-1 mesh.data=1" in command


def test_setup_mounts_bucket_and_installs_tpu_jax_everywhere(fake):
    [call] = fake("setup.sh", BUCKET="b")
    command = _flags(call)["command"]
    assert _flags(call)["worker"] == "all"
    assert "gcsfuse --implicit-dirs b /mnt/gcs" in command and "jax[tpu]==0.10.2" in command


def test_resume_loop_recreates_a_preempted_slice_and_stops_when_done(fake):
    fake.states.write_text("PREEMPTED\nCREATING\nREADY\nREADY\n")
    calls = fake("resume_loop.sh", FAKE_DONE_AT_CHECK="2")
    verbs = [c[3] for c in calls]
    # preempted -> delete, create, setup (ssh), launch (ssh); then wait while creating; READY not done; READY done
    assert verbs == ["describe", "delete", "create", "ssh", "ssh", "describe", "describe", "ssh", "describe", "ssh"]
    assert "gptjax train" in _flags(calls[4])["command"]


def test_teardown_deletes_without_prompting(fake):
    [call] = fake("teardown.sh")
    assert call[3:5] == ["delete", "slice"] and "--quiet" in call
