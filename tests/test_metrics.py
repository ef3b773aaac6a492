import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from gptjax import metrics, model
from gptjax.config import ConfigError, LoggingConfig, ModelConfig, RunConfig
from gptjax.rundir import RunDir


def _throughput(**overrides):
    fields = dict(
        tokens_per_step=1000,
        flops_per_token=6e6,
        n_devices=4,
        peak_flops_per_device=1e12,
        device_kind="TPU v4",
        dtype="bfloat16",
        peak_source="table",
    )
    return metrics.Throughput(**{**fields, **overrides})


def test_mfu_arithmetic_on_hand_computed_numbers():
    # 10 steps of 1000 tokens in 2 s = 5000 tokens/s; * 6e6 FLOPs/token / 4 devices = 7.5e9 FLOP/s/device.
    m = _throughput().measure(step=50, steps=10, seconds=2.0)
    assert m.tokens_per_s == pytest.approx(5000.0)
    assert m.tflops_per_device == pytest.approx(7.5e-3)
    assert m.mfu == pytest.approx(7.5e-3)  # 7.5e9 / 1e12
    assert m.tokens_seen == 50_000
    assert m.flops_seen == pytest.approx(50_000 * 6e6)
    assert set(m.as_dict()) == {"tokens_per_s", "tflops_per_device", "mfu", "tokens_seen", "flops_seen"}


def test_measure_rejects_empty_intervals():
    with pytest.raises(ValueError, match="seconds=0"):
        _throughput().measure(step=1, steps=1, seconds=0.0)
    with pytest.raises(ConfigError, match="n_devices must be positive, got 0"):
        _throughput(n_devices=0)


def test_throughput_for_run_uses_model_flops_and_records_the_convention():
    run = RunConfig(
        model=ModelConfig(n_layer=2, n_head=2, d_model=32, n_ctx=64),
        batch_size=8,
        seq_len=32,
        logging=LoggingConfig(peak_flops_per_device=2e12),
    )
    tp = metrics.Throughput.for_run(run, "TPU v9 imaginary", n_devices=2)  # override: no table lookup
    assert tp.tokens_per_step == 8 * 32
    assert tp.flops_per_token == model.flops_per_token(run.model, 32)
    assert (tp.peak_flops_per_device, tp.peak_source) == (2e12, "override")
    meta = tp.metadata()
    assert meta["flops_convention"] == model.FLOPS_CONVENTION
    assert meta["device_kind"] == "TPU v9 imaginary" and meta["n_devices"] == 2
    json.dumps(meta)  # must be serialisable as is


@pytest.mark.parametrize(
    "kind, dtype, peak",
    [
        ("TPU v4", "bfloat16", 275e12),
        ("TPU v5 lite", "bfloat16", 197e12),
        ("TPU v5e", jnp.bfloat16, 197e12),
        ("TPU v5", "bfloat16", 459e12),
        ("TPU v5p", "bfloat16", 459e12),
        ("TPU v6 lite", "bfloat16", 918e12),
        ("TPU v6 lite", "float32", 918e12),  # JAX's default precision: fp32 dots run as one bf16 pass on TPU
        ("NVIDIA A100-SXM4-80GB", "bfloat16", 312e12),
        ("NVIDIA A100-SXM4-80GB", jnp.float32, 156e12),  # TF32
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
    ],
)
def test_table_lookup(kind, dtype, peak):
    assert metrics.peak_flops_per_device(kind, dtype) == peak


def test_unknown_kind_names_it_and_the_override():
    with pytest.raises(ConfigError, match=r"'TPU v9'.*peak_flops_per_device=") as err:
        metrics.peak_flops_per_device("TPU v9", "bfloat16")
    assert "TPU v6 lite" in str(err.value)  # lists the known kinds
    with pytest.raises(ConfigError, match=r"no float16 peak known for device kind 'TPU v4'"):
        metrics.peak_flops_per_device("TPU v4", "float16")
    assert metrics.peak_flops_per_device("TPU v9", "bfloat16", override=3e14) == 3e14
    with pytest.raises(ConfigError, match="got -1.0"):
        metrics.peak_flops_per_device("TPU v4", "bfloat16", override=-1.0)


def test_measure_matmul_peak_is_a_physically_possible_rate_and_bounded_in_time():
    start = time.perf_counter()
    flops = metrics.measure_matmul_peak(n=256, seconds=0.2)
    # Two CPU cores reach ~0.2 TFLOP/s in fp32; above 10 TFLOP/s or below 0.1 GFLOP/s the timing is wrong.
    assert 1e8 < flops < 1e13
    assert time.perf_counter() - start < 10.0


def test_cpu_peak_is_the_host_rate_shared_between_emulated_devices(monkeypatch):
    metrics._measured_cpu_peak.cache_clear()
    monkeypatch.setattr(metrics, "measure_matmul_peak", lambda dtype: 8e11)
    try:
        # conftest emulates 8 CPU devices on one host: each is credited with 1/8 of the host's matmul rate.
        assert jax.local_device_count() == 8
        assert metrics.peak_flops_per_device("cpu", "float32") == 1e11
    finally:
        metrics._measured_cpu_peak.cache_clear()


def test_jsonl_appends_and_resume_drops_replayed_steps(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    sink = metrics.JsonlSink(path)
    for step in range(1, 6):
        sink.write(step, {"loss": np.float32(5.0 - step), "mfu": jnp.asarray(0.5), "tokens_seen": step * 10})
    sink.close()
    with path.open("a") as f:
        f.write('{"step": 6, "loss"')  # torn by a crash mid-write

    resumed = metrics.JsonlSink(path, start_step=3)  # the checkpoint the run resumes from
    assert [r["step"] for r in metrics.read_metrics(path)] == [1, 2, 3]
    resumed.write(4, {"loss": 0.25})
    resumed.close()
    records = metrics.read_metrics(path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[0]["loss"] == 4.0 and records[0]["mfu"] == 0.5 and records[0]["tokens_seen"] == 10
    assert records[-1]["loss"] == 0.25 and "time" in records[-1]
    assert len(path.read_text().splitlines()) == 4  # every line is a whole JSON object


def test_tensorboard_event_file_is_readable(tmp_path):
    logdir = tmp_path / "tb"
    sink = metrics.TensorBoardSink(logdir)
    for step in (10, 20):
        sink.write(step, {"loss": step / 10, "mfu": np.float64(0.25)})
    sink.close()
    resumed = metrics.TensorBoardSink(logdir, start_step=10)
    resumed.write(20, {"loss": 7.0})
    resumed.close()

    scalars, starts = {}, []
    for event_file in logdir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            if event.HasField("session_log"):
                starts.append(event.step)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    assert sorted(scalars["mfu"]) == [(10, 0.25), (20, 0.25)]
    assert sorted(scalars["loss"]) == [(10, 1.0), (20, 2.0), (20, 7.0)]
    assert sorted(starts) == [1, 11]  # on reading, TensorBoard hides the first attempt's steps >= 11


def test_open_sinks_writes_only_on_the_writer(tmp_path, capsys):
    assert metrics.open_sinks(RunDir(tmp_path / "other"), total_steps=10, is_writer=False).sinks == []
    assert not (tmp_path / "other").exists()

    with metrics.open_sinks(RunDir(tmp_path / "main"), total_steps=10, is_writer=True) as sinks:
        sinks.write(5, {"loss": 1.5, "tokens_per_s": 12345.0, "mfu": 0.42})
        sinks.write(5, {"eval_loss": 1.75})
    assert [r["step"] for r in metrics.read_metrics(tmp_path / "main" / "metrics.jsonl")] == [5, 5]
    assert list((tmp_path / "main" / "tb").glob("events.out.tfevents.*"))
    bar = capsys.readouterr().err
    assert "5/10" in bar and "loss=1.5000" in bar and "tok/s=12,345" in bar and "mfu=42.0%" in bar


def test_metadata_keeps_one_entry_per_attempt(tmp_path):
    meta = _throughput().metadata()
    path = RunDir(tmp_path).metrics_meta_file
    metrics.write_metadata(path, meta, is_writer=True)
    metrics.write_metadata(path, {**meta, "device_kind": "TPU v5 lite"}, start_step=100, is_writer=True)
    metrics.write_metadata(path, meta, start_step=50, is_writer=True)  # resumed from an older checkpoint
    entries = json.loads((tmp_path / "metrics_meta.json").read_text())
    assert [e["start_step"] for e in entries] == [0, 50]
    assert entries[0]["flops_convention"] == model.FLOPS_CONVENTION
    metrics.write_metadata(RunDir(tmp_path / "other").metrics_meta_file, meta, is_writer=False)
    assert not (tmp_path / "other").exists()
