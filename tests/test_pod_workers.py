"""Two local processes started exactly as launch.sh starts the workers of a slice: the commands are taken from
`launch.sh --dry-run` and run, as they would be over ssh, by `tpu_scripts/worker.sh start` in a home of their
own per worker, with the same environment; only the platform (CPU instead of JAX_PLATFORMS=tpu) and JAX's
worker discovery (an explicit coordinator instead of the TPU metadata) are preset, as worker.sh allows.
They train and checkpoint to the GCS emulator's bucket and resume together; `gptjax sweep` runs the same way,
with the sweep's registry and report in the bucket."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

from gptjax import metrics
from gptjax.paths import data_dir
from gptjax.rundir import RunDir, SweepDir

from gcs_emulator import BUCKET, free_port, no_local_gs_dir
from requirements import need_data

need_data("corpora/tinyshakespeare/input.txt")

REPO = Path(__file__).resolve().parents[1]
COMMIT = "c0ffee" * 6 + "c0ff"  # a 40-hex commit, as resolve_commit records it


def _launch_commands(tmp: Path, **job: str) -> list[str]:
    """The remote command of each worker, as `launch.sh --dry-run` prints it for a 2-host slice (v4-16)."""
    env = {
        **os.environ,
        "PROJECT": "p",
        "ZONE": "z",
        "BUCKET": BUCKET,
        "TPU_NAME": "slice",
        "ACCELERATOR_TYPE": "v4-16",
        "GPTJAX_PYTHON": sys.executable,
        "STATE_DIR": str(tmp / "state"),
        "COMMIT": COMMIT,
        **job,
    }
    out = subprocess.run(
        [str(REPO / "tpu_scripts" / "launch.sh"), "--dry-run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    commands = []
    for i, line in enumerate(out.stdout.splitlines()):
        prefix, ssh = line.split(": ", 1)
        words = shlex.split(ssh)
        assert prefix == f"worker {i}" and f"--worker={i}" in words
        commands.append(words[-1].removeprefix("--command="))
    assert len(commands) == 2
    return commands


def _start_workers(tmp: Path, commands: list[str]) -> list[Path]:
    """Run each worker's command with bash in its own home (the checkout and the staged data linked in);
    returns the pid files of the trainers worker.sh started in the background."""
    port = free_port()
    stub = tmp / "bin"  # worker.sh copies logs with gcloud: a stub here, never the real one
    stub.mkdir(exist_ok=True)
    (stub / "gcloud").write_text(f'#!/bin/sh\necho "$@" >> {tmp}/gcloud_calls\n')
    (stub / "gcloud").chmod(0o755)
    pidfiles = []
    for i, command in enumerate(commands):
        home = tmp / f"worker{i}"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        for name, target in (("gptjax", REPO), ("gptjax-data", data_dir())):
            if not (home / name).exists():
                (home / name).symlink_to(target)
        env = {
            **os.environ,
            "HOME": str(home),
            "TMPDIR": str(home / "tmp"),
            "PATH": f"{stub}:{os.environ['PATH']}",
            "GPTJAX_CACHE_DIR": str(home / "cache"),
            "LOG_COPY_SECONDS": "3600",
            # What a TPU VM has that this machine has not: the platform and the slice's worker list.
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
            "GPTJAX_COORDINATOR": f"127.0.0.1:{port}",
            "GPTJAX_NUM_PROCESSES": "2",
            "GPTJAX_PROCESS_ID": str(i),
        }
        started = subprocess.run(["bash", "-c", command], cwd=home, env=env, capture_output=True, text=True, timeout=60)
        assert started.returncode == 0, started.stdout + started.stderr
        pidfiles.append(home / ".gptjax" / "trainer.pid")
    return pidfiles


def _wait(pidfiles: list[Path], timeout: float = 600) -> None:
    pids = [int(p.read_text()) for p in pidfiles]
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, "the workers did not finish"
        time.sleep(0.5)
    for pidfile in pidfiles:
        log = (pidfile.parent / "trainer.log").read_text()
        assert "Traceback" not in log, log[-3000:]


def test_two_workers_launched_like_a_slice_train_checkpoint_and_resume_on_gcs(gcs, tmp_path):
    name = f"{uuid.uuid4().hex[:8]}/run"
    run_url = f"gs://{BUCKET}/runs/{name}"
    common = "batch_size=8 seq_len=32 optim.warmup_steps=1 optim.decay_steps=6 logging.every=1 checkpoint.every=3"
    job = {"JOB": "train", "RUN_NAME": name, "PRESET": "tiny-25k"}
    _wait(_start_workers(tmp_path, _launch_commands(tmp_path, **job, OVERRIDES=f"steps=3 {common}")))
    assert RunDir(run_url).is_done() and gcs.objects(f"{run_url}/checkpoints")[0].startswith("3/")
    _wait(_start_workers(tmp_path, _launch_commands(tmp_path, **job, OVERRIDES=f"steps=6 {common}")))  # resumes

    run = RunDir(run_url)
    assert [r["step"] for r in metrics.read_metrics(run.metrics_file) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    meta = json.loads(run.metrics_meta_file.read_text())
    assert [(m["start_step"], m["process_count"], m["code_commit"]) for m in meta] == [(0, 2, COMMIT), (3, 2, COMMIT)]
    assert {f.split("/")[0] for f in gcs.objects(f"{run_url}/checkpoints")} >= {"3", "6"}
    assert run.read_config().code_commit == COMMIT and run.is_done()
    assert no_local_gs_dir(tmp_path, Path.cwd()) == []


def test_two_workers_launched_like_a_slice_run_a_sweep_into_gcs(gcs, tmp_path):
    sweep_file = tmp_path / "pod.toml"
    sweep_file.write_text(
        'name = "pod"\n[base]\nbatch_size = 8\nseq_len = 32\noptim.warmup_steps = 1\nlogging.every = 1\n'
        'held_out = { every = 100, batches = 1 }\ncheckpoint.every = 100\n[axes]\npresets = ["tiny-25k"]\n'
        "steps = [2]\n"
    )
    name = f"{uuid.uuid4().hex[:8]}/pod"
    sweep_url = f"gs://{BUCKET}/sweeps/{name}"
    commands = _launch_commands(tmp_path, JOB="sweep", SWEEP_FILE=str(sweep_file), SWEEP_NAME=name)
    _wait(_start_workers(tmp_path, commands))

    sweep = SweepDir(sweep_url)
    registry = [json.loads(line) for line in sweep.registry_file.read_text().splitlines()]
    assert [r["steps"] for r in registry] == [2] and registry[0]["run_dir"] == "runs/tiny-25k_2steps_seed0"
    assert {"report.md", "report.html"} <= set(gcs.objects(str(sweep.report_dir))) and sweep.done_file.exists()
    leases = [json.loads(p.read_text()) for p in sweep.leases_dir.iterdir()]
    assert [lease["holder"] for lease in leases] == ["slice"]
    assert json.loads(sweep.heartbeat_file("slice").read_text())["final"] is True
    logs = [(tmp_path / f"worker{i}" / ".gptjax" / "trainer.log").read_text() for i in range(2)]
    assert "[sweep pod] report:" in logs[0] and "report:" not in logs[1]  # only process 0 writes the sweep's files
    assert no_local_gs_dir(tmp_path, Path.cwd()) == []
