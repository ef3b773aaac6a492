"""gs:// run directories against a local GCS emulator (tests/gcs_emulator.py, started by the `gcs` fixture):
a run killed with SIGKILL and restarted on gs:// is bitwise identical to an uninterrupted one, with every
file in the bucket and none under a local `gs:` directory; the metrics file is buffered, not re-uploaded per
record; the heartbeat and a profiler trace land in the run directory; a gs:// data cache is mirrored
locally; eval reports and `gptjax data` corpora go to gs://."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from etils import epath

from gptjax import metrics, runs
from gptjax.rundir import RunDir

from gcs_emulator import no_local_gs_dir
from requirements import need_modules

need_modules("gcp_storage_emulator", "gcsfs", "google.cloud.storage")
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402 - after the check that TF is there

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "train_helpers.py"


def _script(cwd: Path, run_dir: str, cache_dir: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), run_dir, cache_dir, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _losses(run_dir: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics.read_metrics(RunDir(run_dir).metrics_file) if "loss" in r}


def test_a_gs_run_killed_and_restarted_is_bitwise_identical_and_never_local(gcs, tmp_path):
    root = gcs.prefix()
    straight, resumed, cache = f"{root}/straight", f"{root}/resumed", f"{root}/cache"
    n = 3
    common = ["steps=6", f"checkpoint.every={n}", "profile_steps=1:3", "logging.heartbeat_seconds=0.01"]
    a = _script(tmp_path, straight, str(tmp_path / "local_cache"), *common)
    b = _script(tmp_path, resumed, cache, "--kill-at", str(n), *common)  # the gs:// data cache, mirrored
    assert a.wait(timeout=600) == 0, a.stdout.read()
    assert b.wait(timeout=600) == -signal.SIGKILL, b.stdout.read()
    assert sorted(_losses(resumed)) == [1, 2, 3]  # flushed with the checkpoint, though buffered
    c = _script(tmp_path, resumed, cache, *common)
    assert c.wait(timeout=600) == 0, c.stdout.read()

    assert _losses(resumed) == _losses(straight) and sorted(_losses(straight)) == list(range(1, 7))  # exact
    x, _, _, _ = runs.load_for_inference(straight, 6)
    y, _, _, _ = runs.load_for_inference(resumed, 6)
    for p, q in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))

    files = gcs.objects(resumed)
    for name in ("config.json", "metrics.jsonl", "metrics_meta.json", "heartbeat.json", "DONE"):
        assert name in files, files
    assert any(f.startswith("checkpoints/6/") for f in files) and any(f.startswith("tb/events.") for f in files)
    assert [f.split(".")[-1] for f in gcs.objects(cache)] == ["npy", "npy"]  # uploaded by the host that built it
    beat = json.loads(epath.Path(resumed, "heartbeat.json").read_text())
    assert beat["step"] == 6 and beat["final"] is True
    assert no_local_gs_dir(tmp_path, Path.cwd()) == []

    # The profiler's trace, where TensorBoard's profile plugin looks: <logdir>/plugins/profile/<run>/<host>.
    (trace,) = [f for f in files if f.startswith("profile/plugins/profile/") and f.endswith(".xplane.pb")]
    space = xplane_pb2.XSpace.FromString(epath.Path(resumed, trace).read_bytes())
    names = {m.name for plane in space.planes for m in plane.event_metadata.values()}
    assert any("step_fn" in name for name in names), sorted(names)[:20]


def test_gs_metrics_are_buffered_and_uploaded_on_flush_not_per_record(gcs):
    path = f"{gcs.prefix()}/metrics.jsonl"
    sink = metrics.JsonlSink(path, flush_seconds=3600)
    for step in range(1, 51):
        sink.write(step, {"loss": 1.0 / step})
    assert sink.uploads == 0 and metrics.read_metrics(path) == []  # nothing uploaded per record
    sink.flush()
    assert sink.uploads == 1 and [r["step"] for r in metrics.read_metrics(path)] == list(range(1, 51))
    sink.close()
    assert sink.uploads == 1  # nothing new to upload
    resumed = metrics.JsonlSink(path, start_step=20, flush_seconds=0.0)  # replayed steps after 20 dropped
    resumed.write(21, {"loss": 0.5})
    assert [r["step"] for r in metrics.read_metrics(path)] == list(range(1, 22)) and resumed.uploads == 1
    resumed.close()


def test_eval_report_reads_results_from_gs_and_writes_there(gcs, tmp_path):
    from eval.report import report_command

    root = gcs.prefix()
    result = {"split": "validation", "fewshot_split": "train", "seed": 1, "num_docs": 2, "example_prompt": "Q"}
    doc = {
        "model": {"name": "m", "params": 10**6, "non_embedding_params": 10**5, "checkpoint": None, "step": 1},
        "tokenizer": "byte",
        "created": "2026-12-01T00:00:00+00:00",
        "gptjax_version": "0.1.0",
        "results": [{**result, "task": "piqa", "num_fewshot": 0, "metrics": {"acc": 0.5, "acc_norm": 0.5}}],
    }
    epath.Path(f"{root}/eval/1.json").write_text(json.dumps(doc))
    assert report_command([f"{root}/eval/1.json", "--out", f"{root}/report"]) == 0
    assert {"report.md", "report.html"} <= set(gcs.objects(f"{root}/report"))
    assert no_local_gs_dir(tmp_path, Path.cwd()) == []


@pytest.mark.parametrize("where", ["local", "gs"])
def test_the_data_cache_mirror_builds_once_and_downloads_elsewhere(gcs, tmp_path, monkeypatch, where):
    from gptjax.data import cache

    directory = str(tmp_path / "c") if where == "local" else f"{gcs.prefix()}/c"
    built = []
    build = lambda: built.append(1) or np.arange(5, dtype=np.uint16)  # noqa: E731
    path = cache.cache_file(directory, "t", "train", {"vocab": "byte"})
    np.testing.assert_array_equal(cache.load_or_build(path, build), np.arange(5))
    monkeypatch.setenv("GPTJAX_CACHE_DIR", str(tmp_path / "another_host"))  # a host with an empty mirror
    np.testing.assert_array_equal(cache.load_or_build(path, build), np.arange(5))
    assert built == [1]  # the second host downloaded (or, locally, found) what the first one built


def test_data_prep_reads_and_writes_gs_corpora(gcs, tmp_path, monkeypatch):
    """`gptjax data dedup` then `stats` on a gs:// corpus: outputs land in the bucket, nothing local."""
    from gptjax.cli import main
    from gptjax.rundir import CorpusDir

    monkeypatch.chdir(tmp_path)
    root = gcs.prefix()
    texts = [f"document {i} " + " ".join(f"w{i}_{j}" for j in range(40)) for i in range(6)]
    texts.append(texts[2])  # an exact duplicate
    epath.Path(f"{root}/raw.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    assert main(["data", "dedup", f"{root}/raw.jsonl", "--out", f"{root}/deduped"]) == 0
    corpus = CorpusDir(f"{root}/deduped")
    kept = [json.loads(line)["text"] for line in corpus.documents_file.read_text().splitlines()]
    assert kept == texts[:6]
    assert json.loads(corpus.report_file.read_text())["exact_duplicates"] == 1
    assert main(["data", "stats", f"{root}/deduped/documents.jsonl", "--out", f"{root}/stats.json"]) == 0
    assert json.loads(epath.Path(f"{root}/stats.json").read_text())["documents"] == 6
    assert {"documents.jsonl", "report.json"} <= {o.split("/")[-1] for o in gcs.objects(f"{root}/deduped")}
    assert no_local_gs_dir(tmp_path) == []
