"""Training at scale on CPU: sharded vs single-device parity, bitwise resume after a kill, multi-process,
restore across mesh shapes, the non-finite guard, SIGTERM, and configuration errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eval.hook import add_fewshot_hook
from gptjax import runs
from gptjax.config import ConfigError
from gptjax.hooks import CheckpointSaver, add_standard_hooks
from gptjax.train import NonFiniteError, Trainer

from train_helpers import LossRecorder, SignalAt, small_run

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "train_helpers.py"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data_cache")


def _train(run, devices=None) -> tuple[Trainer, list[float]]:
    recorder = LossRecorder()
    trainer = Trainer(run, devices=devices)
    trainer.restore_or_init()
    add_standard_hooks(trainer, progress=False)
    trainer.add_hook(recorder, every=1)
    trainer.train()
    return trainer, recorder.losses


def _host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def test_sharded_2x2x2_matches_single_device(tmp_path, cache_dir):
    single, losses_1 = _train(
        small_run(tmp_path / "one", cache_dir, steps=5, **{"mesh.data": 1}), devices=jax.devices()[:1]
    )
    sharded, losses_8 = _train(
        small_run(tmp_path / "eight", cache_dir, steps=5, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
    )
    assert len(losses_1) == 5
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
    params = sharded.state.params
    # (vocab -> tensor, embed -> fsdp), (embed -> fsdp, heads -> tensor), (embed -> fsdp, mlp -> tensor)
    expected = {"wte": (129, 16), "query_kernel": (16, 2, 8), "fc_kernel": (16, 64)}
    arrays = {
        "wte": params["wte"],
        "query_kernel": params["h_0"]["attn"]["query_kernel"],
        "fc_kernel": params["h_1"]["mlp"]["fc_kernel"],
    }
    for name, array in arrays.items():
        assert len(array.addressable_shards) == 8
        assert {s.data.shape for s in array.addressable_shards} == {expected[name]}, name
    # Adam moments follow their parameters' shardings.
    mu = sharded.state.opt_state[1][0].mu["wte"]
    assert mu.sharding == params["wte"].sharding


def _script(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_resume_after_kill_is_bitwise_identical(tmp_path, cache_dir):
    n = 3
    common = [str(cache_dir), f"steps={2 * n}", f"checkpoint.every={n}"]
    straight = _script(str(tmp_path / "straight"), *common)
    killed = _script(str(tmp_path / "resumed"), *common[:1], "--kill-at", str(n), *common[1:])
    assert straight.wait(timeout=600) == 0, straight.stdout.read()
    assert killed.wait(timeout=600) == -signal.SIGKILL, killed.stdout.read()
    assert sorted(_losses(tmp_path / "resumed")) == list(range(1, n + 1))
    resumed = _script(str(tmp_path / "resumed"), *common)
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()

    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")  # exact float equality
    assert len(_losses(tmp_path / "straight")) == 2 * n
    a, _, _, _ = runs.load_for_inference(tmp_path / "straight", 2 * n)
    b, _, _, _ = runs.load_for_inference(tmp_path / "resumed", 2 * n)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(run_dir: Path, cache_dir: Path, *overrides: str) -> None:
    port = _free_port()
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    procs = [
        _script(
            str(run_dir),
            str(cache_dir),
            "--coordinator",
            f"127.0.0.1:{port}",
            "--num-processes",
            "2",
            "--process-id",
            str(i),
            *overrides,
            env_extra=env,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)


def test_two_processes_match_one_process_and_resume_together(tmp_path, cache_dir):
    # decay_steps pinned: the first launch stops at step 3 but must follow the 6-step schedule.
    mesh = ["mesh.data=2", "mesh.fsdp=1", "mesh.tensor=2", "optim.decay_steps=6"]
    _, reference = _train(
        small_run(tmp_path / "single", cache_dir, steps=6, **{"mesh.data": 2, "mesh.tensor": 2}),
        devices=jax.devices()[:4],
    )
    run_dir = tmp_path / "multi"
    _two_processes(run_dir, cache_dir, "steps=3", "checkpoint.every=3", *mesh)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]
    _two_processes(run_dir, cache_dir, "steps=6", "checkpoint.every=3", *mesh)  # resumes from step 3
    losses = _losses(run_dir)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([losses[s] for s in range(1, 7)], reference, rtol=1e-5)


def test_restore_onto_a_different_mesh(tmp_path, cache_dir):
    run = small_run(tmp_path / "run", cache_dir, steps=2, **{"mesh.data": 8})
    saved, _ = _train(run)
    saved_params = _host(saved.state.params)
    restored = Trainer(
        small_run(tmp_path / "run", cache_dir, steps=2, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
    )
    assert restored.restore_or_init() == 2
    assert restored.state.params["wte"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    for x, y in zip(jax.tree.leaves(saved_params), jax.tree.leaves(_host(restored.state.params))):
        np.testing.assert_array_equal(x, y)


def _poison(trainer: Trainer) -> None:
    params = dict(trainer.state.params)
    params["wpe"] = params["wpe"].at[0, 0].set(jnp.nan)
    trainer.state = trainer.state.replace(params=params)


def test_nonfinite_loss_stops_with_the_step_and_keeps_last_checkpoint(tmp_path, cache_dir):
    run = small_run(tmp_path / "run", cache_dir, steps=4, **{"checkpoint.every": 2})
    _train(run)
    trainer = Trainer(small_run(tmp_path / "run", cache_dir, steps=8, **{"checkpoint.every": 2}))
    trainer.restore_or_init()
    add_standard_hooks(trainer, progress=False)
    _poison(trainer)
    with pytest.raises(NonFiniteError, match="non-finite loss or gradient at step 5"):
        trainer.train()
    assert trainer.checkpointer.latest_step() == 4  # nothing saved after the bad step


def test_nonfinite_skip_leaves_parameters_unchanged(tmp_path, cache_dir):
    trainer = Trainer(small_run(tmp_path / "run", cache_dir, steps=2, **{"optim.on_nonfinite": "skip"}))
    trainer.restore_or_init()
    _poison(trainer)
    before = _host(trainer.state.params)
    trainer.train()
    assert trainer.step == 2
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(_host(trainer.state.params))):
        np.testing.assert_array_equal(x, y)


def test_sigterm_saves_and_stops(tmp_path, cache_dir):
    trainer = Trainer(small_run(tmp_path / "run", cache_dir, steps=10))
    before = signal.getsignal(signal.SIGTERM)
    trainer.add_hook(SignalAt(3, signal.SIGTERM), every=1)  # the signal lands after step 3's saver was due
    trainer.add_hook(CheckpointSaver(trainer), every=1000)
    trainer.train()
    assert trainer.step == 3 and trainer.checkpointer.all_steps() == [3]
    assert signal.getsignal(signal.SIGTERM) is before  # the trainer's handler is gone again


def test_half_written_checkpoint_is_never_latest(tmp_path, cache_dir):
    run = small_run(tmp_path / "run", cache_dir, steps=2, **{"checkpoint.every": 2})
    _train(run)
    # What a process killed mid-save leaves behind: orbax's temporary directory for a later step.
    partial = tmp_path / "run" / "checkpoints" / "4.orbax-checkpoint-tmp-1234"
    (partial / "default").mkdir(parents=True)
    trainer = Trainer(small_run(tmp_path / "run", cache_dir, steps=4, **{"checkpoint.every": 2}))
    assert trainer.restore_or_init() == 2 and trainer.checkpointer.latest_step() == 2


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"mesh.data": 3}, "needs 3 devices but 8 are available"),
        (
            {"mesh.data": 4, "mesh.fsdp": 2, "batch_size": 12},
            "batch_size=12 is not divisible by the data-parallel size 8",
        ),
        ({"mesh.data": -1, "mesh.tensor": 3}, "8 devices are not divisible by the fixed axes' product 3"),
    ],
)
def test_mesh_and_batch_errors_name_the_numbers(tmp_path, cache_dir, overrides, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(small_run(tmp_path / "run", cache_dir, **overrides))


def test_changing_a_run_in_place_is_refused(tmp_path, cache_dir):
    _train(small_run(tmp_path / "run", cache_dir, steps=3))
    with pytest.raises(ConfigError, match="describes a different run .*batch_size: saved 8 vs now 16"):
        Trainer(small_run(tmp_path / "run", cache_dir, steps=3, batch_size=16))


def test_gradient_accumulation_equals_full_batch(tmp_path, cache_dir):
    two = jax.devices()[:2]  # micro-batches of 2 rows must still divide over the data-parallel devices
    _, full = _train(small_run(tmp_path / "full", cache_dir, steps=3, **{"mesh.data": 2}), devices=two)
    _, accumulated = _train(
        small_run(tmp_path / "accum", cache_dir, steps=3, micro_batches=4, **{"mesh.data": 2}), devices=two
    )
    np.testing.assert_allclose(accumulated, full, rtol=1e-5)


def test_learning_happens_on_tinyshakespeare(tmp_path, cache_dir):
    """A tiny byte-level model gets below 2.5 nats/byte held out (a unigram model sits at ~3.3)."""
    run = small_run(
        tmp_path / "run",
        cache_dir,
        steps=500,
        batch_size=32,
        seq_len=64,
        **{
            "held_out.every": 500,
            "held_out.batches": 8,
            "model.n_ctx": 64,
            "model.d_model": 64,
            "model.n_layer": 2,
            "optim.learning_rate": 1e-2,
            "optim.warmup_steps": 20,
            "logging.every": 50,
        },
    )
    trainer, losses = _train(run)
    held_out = trainer.held_out_loss()
    print(f"held-out loss after {run.steps} steps: {held_out:.3f} nats/byte (train {losses[-1]:.3f})")
    assert held_out < 2.5


def test_few_shot_eval_hook_logs_beside_the_loss(tmp_path, cache_dir):
    run = small_run(
        tmp_path / "run",
        cache_dir,
        steps=2,
        **{
            "fewshot.tasks": "copa,piqa",
            "fewshot.shots": "0,1",
            "fewshot.limit": 4,
            "fewshot.every": 1,
            "model.vocab_size": 257,
        },
    )
    trainer = Trainer(run)
    trainer.restore_or_init()
    add_fewshot_hook(trainer, add_standard_hooks(trainer, progress=False))
    trainer.train()
    for step in (1, 2):
        results = json.loads((tmp_path / "run" / "eval" / f"{step}.json").read_text())
        assert results["model"]["step"] == step
        assert {(r["task"], r["num_fewshot"], r["num_docs"]) for r in results["results"]} == {
            ("copa", 0, 4),
            ("copa", 1, 4),
            ("piqa", 0, 4),
            ("piqa", 1, 4),
        }
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    accs = [r["eval/piqa/1shot/acc_norm"] for r in logged if "eval/piqa/1shot/acc_norm" in r]
    assert len(accs) == 2 and all(0.0 <= a <= 1.0 for a in accs)


class _Calls:
    """Records (step, final) of every call."""

    def __init__(self, stop_at: int | None = None, trainer: Trainer | None = None) -> None:
        self.calls: list[tuple[int, bool]] = []
        self.stop_at, self.trainer = stop_at, trainer

    def __call__(self, info) -> None:
        self.calls.append((info.step, info.final))
        if info.step == self.stop_at:
            self.trainer.request_stop()


def test_the_trainer_owns_the_hook_schedule(tmp_path, cache_dir):
    trainer = Trainer(small_run(tmp_path / "run", cache_dir, steps=5))
    every_two, first_and_two, only_end, never_at_end = _Calls(), _Calls(), _Calls(), _Calls()
    trainer.add_hook(every_two, every=2)
    trainer.add_hook(first_and_two, every=2, at_start=True)
    trainer.add_hook(only_end)
    trainer.add_hook(never_at_end, every=2, at_end=False)
    trainer.train()
    assert every_two.calls == [(2, False), (4, False), (5, True)]
    assert first_and_two.calls == [(1, False), (2, False), (4, False), (5, True)]
    assert only_end.calls == [(5, True)]
    assert never_at_end.calls == [(2, False), (4, False)]
    with pytest.raises(ConfigError, match="interval must be positive"):
        trainer.add_hook(only_end, every=0)


def test_a_stop_runs_the_final_hooks_once_at_that_step(tmp_path, cache_dir):
    trainer = Trainer(small_run(tmp_path / "run", cache_dir, steps=10))
    stopper = _Calls(stop_at=3, trainer=trainer)
    after = _Calls()
    trainer.add_hook(stopper, every=1)
    trainer.add_hook(after, every=2)
    trainer.train()
    # The stopper ran (not final) at 3, so it is not called again; `after` gets its forced final call at 3.
    assert stopper.calls == [(1, False), (2, False), (3, False)]
    assert after.calls == [(2, False), (3, True)]
    assert trainer.step == 3 and not (tmp_path / "run" / "DONE").exists()


def test_a_failed_start_leaves_no_config_and_a_run_without_checkpoints_takes_a_new_one(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="needs 3 devices but 8 are available"):
        Trainer(small_run(run_dir, cache_dir, **{"mesh.data": 3}))
    assert not (run_dir / "config.json").exists()
    first = Trainer(small_run(run_dir, cache_dir, steps=2, batch_size=16))
    first.restore_or_init()
    assert not (run_dir / "config.json").exists()  # nothing is written before train()
    # No checkpoint yet: another config for the same directory is accepted and replaces it.
    second = Trainer(small_run(run_dir, cache_dir, steps=2))
    second.add_hook(CheckpointSaver(second), every=1000)
    second.train()
    assert json.loads((run_dir / "config.json").read_text())["batch_size"] == 8
