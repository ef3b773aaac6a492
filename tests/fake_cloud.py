"""A fake Cloud TPU for tests/test_tpu_scripts.py: `gcloud`, the TPU workers it reaches over ssh, a bucket,
and a stand-in trainer. Remote commands are not matched as strings: each one is EXECUTED by bash in the
worker's own sandbox (its home directory, temp directory and TPU device file), so a command that kills its
own shell, or a `|| true` that hides a failure, fails like on a slice.

    python fake_cloud.py gcloud ARGS...      the `gcloud` on PATH (bin/gcloud wraps it)
    python fake_cloud.py uv ARGS...          the `uv` on the workers' PATH
    python fake_cloud.py trainer ARGS...     what the workers' `.venv/bin/gptjax` runs

Everything lives under $FAKE_CLOUD (`Cloud(root)` reads it): calls.jsonl (every gcloud call), cloud.json (queued
resources and TPU nodes), buckets/<bucket>/... (gs://), workers/<tpu>/<i>/ (each VM's disk: deleted with the
TPU, so a recreated slice starts empty), trainers.jsonl (every trainer start: argv, environment, pid), and
control files a test writes: fail_next.json ({"describe": 2}: the next two describes fail as a transient
error would), stall and crash (trainers started before the file stop their heartbeat, or exit 1), finish
(worker 0 writes DONE and all exit 0).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


class Cloud:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- state -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def state(self) -> Iterator[dict]:
        """cloud.json, locked for the block (workers' commands run gcloud in parallel) and saved after it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "cloud.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.root / "cloud.json"
            state = json.loads(path.read_text()) if path.exists() else {"queued": {}, "nodes": {}}
            yield state
            path.write_text(json.dumps(state, indent=1))

    def calls(self) -> list[list[str]]:
        path = self.root / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def trainers(self) -> list[dict]:
        path = self.root / "trainers.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def bucket_path(self, url: str) -> Path:
        return self.root / "buckets" / url.removeprefix("gs://")

    def worker_home(self, tpu: str, worker: int) -> Path:
        return self.root / "workers" / tpu / str(worker)

    def touch(self, name: str) -> None:
        """A control file (stall, crash, finish), dated now."""
        time.sleep(0.01)
        (self.root / name).write_text("")

    def fail_next(self, **counts: int) -> None:
        (self.root / "fail_next.json").write_text(json.dumps(counts))

    def preempt(self, tpu: str) -> None:
        """What a spot slice's preemption does: the VMs stop (their processes die), the node is PREEMPTED and
        its queued resource SUSPENDED."""
        with self.state() as state:
            state["nodes"][tpu]["state"] = "PREEMPTED"
            state["queued"][tpu]["state"] = "SUSPENDED"
            hosts = state["nodes"][tpu]["hosts"]
        for i in range(hosts):
            kill_processes_of(self.worker_home(tpu, i))

    # -- the fake gcloud ---------------------------------------------------------------------------------
    def gcloud(self, args: list[str]) -> int:
        with open(self.root / "calls.jsonl", "a") as f:
            f.write(json.dumps(args) + "\n")
        words = [a for a in args if not a.startswith("--")]
        flags = dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in args if a.startswith("--"))
        if self._transient_failure(words):
            print(
                f"ERROR: (gcloud.{'.'.join(words[:3])}) UNAVAILABLE: the service is currently unavailable",
                file=sys.stderr,
            )
            return 1
        if words[:1] == ["storage"]:
            return self._storage(words[1], words[2:], flags)
        if words[:1] == ["alpha"]:
            words = words[1:]
        if words[:3] == ["compute", "tpus", "queued-resources"]:
            return self._queued(words[3], words[4], flags)
        if words[:3] == ["compute", "tpus", "tpu-vm"]:
            return self._node(words[3], words[4], flags)
        print(f"fake gcloud: unsupported command {args}", file=sys.stderr)
        return 2

    def _transient_failure(self, words: list[str]) -> bool:
        path = self.root / "fail_next.json"
        with self.state():  # the lock
            counts = json.loads(path.read_text()) if path.exists() else {}
            verb = next((w for w in words if counts.get(w)), None)
            if verb is None:
                return False
            counts[verb] -= 1
            path.write_text(json.dumps(counts))
            return True

    def _queued(self, verb: str, name: str, flags: dict[str, str]) -> int:
        need = {"project", "zone"}
        with self.state() as state:
            queued = state["queued"].get(name)
            if verb == "create":
                need |= {"node-id", "accelerator-type", "runtime-version"}
                missing = need - flags.keys()
                capacity = [c for c in ("spot", "reserved", "best-effort") if c in flags]
                if missing or len(capacity) != 1 or queued is not None:
                    print(f"ERROR: bad create of {name}: missing {missing}, capacity {capacity}", file=sys.stderr)
                    return 1
                hosts = int(_facts(flags["accelerator-type"])["TPU_HOSTS"])
                state["queued"][name] = {"state": "PROVISIONING", "node": flags["node-id"], **flags}
                state["nodes"][flags["node-id"]] = {"state": "CREATING", "hosts": hosts}
                return 0
            if need - flags.keys():
                print(f"ERROR: {verb} {name} without --project/--zone", file=sys.stderr)
                return 1
            if queued is None:
                print(f"ERROR: NOT_FOUND: Resource 'queuedResources/{name}' was not found", file=sys.stderr)
                return 1
            if verb == "describe":
                print(queued["state"])
                if queued["state"] == "PROVISIONING":  # the next look finds it provisioned
                    queued["state"] = "ACTIVE"
                    state["nodes"][queued["node"]]["state"] = "READY"
                    self._boot(queued["node"], state["nodes"][queued["node"]]["hosts"])
                return 0
            if verb == "delete" and "force" in flags and "quiet" in flags:
                node = state["nodes"].pop(queued["node"], None)
                del state["queued"][name]
                if node is not None:
                    for i in range(node["hosts"]):
                        kill_processes_of(self.worker_home(queued["node"], i))
                    shutil.rmtree(self.root / "workers" / queued["node"], ignore_errors=True)
                return 0
        print(f"fake gcloud: unsupported queued-resources {verb} {flags}", file=sys.stderr)
        return 2

    def _boot(self, tpu: str, hosts: int) -> None:
        """A fresh VM per worker: an empty home with a TPU device file."""
        for i in range(hosts):
            home = self.worker_home(tpu, i)
            (home / "dev").mkdir(parents=True, exist_ok=True)
            (home / "dev" / "accel0").write_text("")
            (home / "tmp").mkdir(exist_ok=True)

    def _node(self, verb: str, name: str, flags: dict[str, str]) -> int:
        if not {"project", "zone"} <= flags.keys():
            print(f"ERROR: tpu-vm {verb} without --project/--zone", file=sys.stderr)
            return 1
        with self.state() as state:
            node = state["nodes"].get(name)
        if node is None:
            print(f"ERROR: NOT_FOUND: Resource 'nodes/{name}' was not found", file=sys.stderr)
            return 1
        if verb == "describe":
            print(node["state"])
            return 0
        if verb == "ssh":
            worker = int(flags["worker"])
            if node["state"] != "READY" or not 0 <= worker < node["hosts"]:
                print(f"ERROR: cannot ssh to worker {worker} of {name} ({node['state']})", file=sys.stderr)
                return 255
            home = self.worker_home(name, worker)
            env = {
                "HOME": str(home),
                "PATH": f"{self.root / 'bin'}:/usr/bin:/bin",
                "TMPDIR": str(home / "tmp"),
                "TPU_DEVICE_GLOBS": f"{home}/dev/accel*",
                "FAKE_CLOUD": str(self.root),
                "LANG": "C.UTF-8",
            }
            return subprocess.run(
                ["bash", "-c", flags["command"]], cwd=home, env=env, stdin=subprocess.DEVNULL
            ).returncode
        print(f"fake gcloud: unsupported tpu-vm {verb}", file=sys.stderr)
        return 2

    def _storage(self, verb: str, args: list[str], flags: dict[str, str]) -> int:
        local = lambda url: self.bucket_path(url) if url.startswith("gs://") else Path(url)  # noqa: E731
        if verb in ("cat", "ls"):
            path = local(args[0])
            if not path.exists():
                print(f"ERROR: (gcloud.storage.{verb}) One or more URLs matched no objects.", file=sys.stderr)
                return 1
            if verb == "cat":
                sys.stdout.write(path.read_text())
            else:
                print(args[0])
            return 0
        if verb in ("cp", "rsync"):
            source, target = local(args[0]), local(args[1])
            if not source.exists() or (verb == "rsync" and "recursive" not in flags):
                print(f"ERROR: (gcloud.storage.{verb}) matched no objects: {args[0]}", file=sys.stderr)
                return 1
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True)
            else:
                shutil.copyfile(source, target)
            return 0
        print(f"fake gcloud: unsupported storage {verb}", file=sys.stderr)
        return 2


def _facts(accelerator: str) -> dict[str, str]:
    """`python -m gptjax.tpu ACCELERATOR`, or what the calling script already exported about it."""
    if os.environ.get("TPU_ACCELERATOR_TYPE") == accelerator:
        return {k: v for k, v in os.environ.items() if k.startswith("TPU_")}
    return slice_facts(accelerator)


def slice_facts(accelerator: str) -> dict[str, str]:
    """What tpu_scripts/common.sh exports about a slice (so the scripts a test runs need not ask gptjax.tpu)."""
    out = subprocess.run([sys.executable, "-m", "gptjax.tpu", accelerator], capture_output=True, text=True, check=True)
    facts = {k: shlex.split(v)[0] for k, v in (line.split("=", 1) for line in out.stdout.splitlines())}
    return {**facts, "TPU_FACTS_FOR": accelerator}


def kill_processes_of(home: Path) -> None:
    """SIGKILL the process groups whose pid files live under `home` (the trainer worker.sh started)."""
    for pidfile in home.glob(".gptjax/*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(pidfile.read_text()), signal.SIGKILL)


# -- uv on the workers ------------------------------------------------------------------------------------
def uv(args: list[str]) -> int:
    """`uv venv --python 3.11 DIR`: a venv whose python is this test's; `uv pip sync --python P LOCK`: checks
    the lock pins jax; `uv pip install --python P --no-deps -e DIR`: installs the stand-in trainer."""
    cloud = Cloud(os.environ["FAKE_CLOUD"])
    with open(cloud.root / "uv.jsonl", "a") as f:
        f.write(json.dumps({"args": args, "home": os.environ["HOME"]}) + "\n")
    words = [a for a in args if a != "--quiet"]
    if words[:1] == ["venv"]:
        assert words[1:3] == ["--python", "3.11"], words
        bin_dir = Path(words[3]) / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        (bin_dir / "python").symlink_to(sys.executable)
        return 0
    if words[:2] == ["pip", "sync"]:
        lock = Path(words[-1]).read_text()
        return 0 if "\njax==" in lock and "\nlibtpu==" in lock else 1
    if words[:2] == ["pip", "install"] and words[-2:] == ["-e", "."]:
        gptjax = Path(words[3]).parent / "gptjax"  # --python .venv/bin/python
        gptjax.write_text(f'#!/bin/sh\nexec {sys.executable} {HERE} trainer "$@"\n')
        gptjax.chmod(0o755)
        return 0
    print(f"fake uv: unsupported {args}", file=sys.stderr)
    return 2


# -- the stand-in trainer ---------------------------------------------------------------------------------
def trainer(args: list[str]) -> int:
    """Holds the TPU device and libtpu's lockfile like a real trainer, records how it was started, beats a
    heartbeat into the run (or sweep) directory every 0.1 s (worker 0), and obeys the control files."""
    cloud = Cloud(os.environ["FAKE_CLOUD"])
    started = time.time()
    devices = [open(p) for p in Path(os.environ["HOME"], "dev").glob("accel*")]  # noqa: SIM115 - held
    lock = open(Path(os.environ["TMPDIR"], "libtpu_lockfile"), "w")  # noqa: SIM115 - held, never deleted
    env = {k: os.environ.get(k) for k in ("JAX_PLATFORMS", "GPTJAX_DISTRIBUTED", "LIBTPU_INIT_ARGS", "WORKER_ID")}
    with open(cloud.root / "trainers.jsonl", "a") as f:
        f.write(json.dumps({"args": args, "env": env, "pid": os.getpid(), "home": os.environ["HOME"]}) + "\n")
    job_url = args[args.index("--run-dir" if args[0] == "train" else "--out") + 1]
    heartbeat = cloud.bucket_path(job_url) / (
        "heartbeat.json" if args[0] == "train" else f"heartbeats/{args[args.index('--holder') + 1]}.json"
    )
    worker0 = os.environ.get("WORKER_ID") == "0"
    newer = lambda name: (cloud.root / name).exists() and (cloud.root / name).stat().st_mtime > started  # noqa: E731
    while True:
        if newer("crash"):
            return 1
        if (cloud.root / "finish").exists():
            if worker0:
                cloud.bucket_path(f"{job_url}/DONE").parent.mkdir(parents=True, exist_ok=True)
                cloud.bucket_path(f"{job_url}/DONE").write_text("")
            return 0
        if worker0 and not newer("stall"):
            heartbeat.parent.mkdir(parents=True, exist_ok=True)
            heartbeat.write_text(json.dumps({"step": 1, "time": time.time()}))
        print(f"step at {time.time():.1f} {devices and lock.name}", flush=True)
        time.sleep(0.1)


def install(root: Path) -> dict[str, str]:
    """Create the fake cloud under `root`; returns the environment that puts its gcloud first on PATH."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("gcloud", "uv"):
        (bin_dir / tool).write_text(f'#!/bin/sh\nexec {sys.executable} {HERE} {tool} "$@"\n')
        (bin_dir / tool).chmod(0o755)
    return {"FAKE_CLOUD": str(root), "PATH": f"{bin_dir}:{os.environ['PATH']}"}


if __name__ == "__main__":
    tool, rest = sys.argv[1], sys.argv[2:]
    if tool == "gcloud":
        sys.exit(Cloud(os.environ["FAKE_CLOUD"]).gcloud(rest))
    sys.exit({"uv": uv, "trainer": trainer}[tool](rest))
