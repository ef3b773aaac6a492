"""Slice types per generation: the recommended mesh fits the slice's real device layout, a mesh that does not
fit is refused naming the slice and the sizes, every libtpu flag a generation trains with is one the installed
libtpu knows, and the shell facts tpu_scripts/ read."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gptjax import tpu
from gptjax.errors import ConfigError
from gptjax.sharding import MeshConfig

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


@pytest.mark.parametrize(
    "name,n_params,expected",
    [
        ("v5e-16", 125_000_000, MeshConfig(data=-1, dcn=1)),  # 2 GB of state: replicate, pure data parallel
        ("v5e-16", 1_300_000_000, MeshConfig(data=1, fsdp=-1, dcn=1)),  # 21 GB > 8 GB (half of 16 GB HBM)
        ("v5p-128", 1_300_000_000, MeshConfig(data=-1, dcn=1)),  # ... but fits half of v5p's 95 GB
        ("v5p-128", 175_000_000_000, MeshConfig(data=1, fsdp=-1, dcn=1)),  # 2.8 TB over 64 chips
        ("v6e-64", 6_700_000_000, MeshConfig(data=1, fsdp=-1, dcn=1)),
    ],
)
def test_recommended_mesh_follows_the_generation_hbm_and_fits_the_real_layout(name, n_params, expected):
    mesh = tpu.recommended_mesh(name, n_params)
    assert mesh == expected
    built = tpu.validate_mesh(name, mesh, batch_size=4 * tpu.slice_type(name).chips)
    assert built.devices.size == tpu.slice_type(name).chips


def test_a_batch_smaller_than_the_slice_takes_tensor_parallelism_within_a_host():
    assert tpu.recommended_mesh("v5e-256", 1_300_000_000, batch_size=64) == MeshConfig(data=1, fsdp=-1, tensor=4, dcn=1)
    tpu.validate_mesh("v5e-256", MeshConfig(data=1, fsdp=-1, tensor=4), batch_size=64)
    with pytest.raises(ConfigError, match=r"batch_size=32 does not split over 1 x v5e-256 .* a multiple of 64"):
        tpu.recommended_mesh("v5e-256", 1_300_000_000, batch_size=32)


def test_a_model_too_large_for_the_slice_names_sizes_and_generation():
    with pytest.raises(ConfigError, match=r"2607.7 GiB of train state: 163.0 GiB per chip .* 16 chips of v5e-16"):
        tpu.recommended_mesh("v5e-16", 175_000_000_000)


def test_two_slices_are_joined_by_data_parallelism():
    mesh = tpu.recommended_mesh("v5e-16", 1_300_000_000, batch_size=64, num_slices=2)
    assert mesh.dcn == 2
    built = tpu.validate_mesh("v5e-16", mesh, batch_size=64, num_slices=2)
    assert dict(built.shape) == {"dcn": 2, "data": 1, "fsdp": 16, "tensor": 1}


@pytest.mark.parametrize(
    "name,mesh,batch,message",
    [
        ("v5e-16", MeshConfig(data=32), None, r"on v5e-16 \(16 chips, torus v5e:4x4\): mesh .* needs 32 devices"),
        ("v4-32", MeshConfig(data=-1, tensor=3), None, r"on v4-32 .*16 devices are not divisible .* product 3"),
        ("v6e-64", MeshConfig(data=-1), 96, r"on v6e-64 .*batch_size=96 is not divisible by the data-parallel size 64"),
        ("v5e-16", MeshConfig(dcn=2), None, r"on v5e-16 .*mesh.dcn=2 but the 16 devices form 1 slice"),
    ],
)
def test_a_mesh_that_does_not_fit_is_refused_naming_the_slice(name, mesh, batch, message):
    with pytest.raises(ConfigError, match=message):
        tpu.validate_mesh(name, mesh, batch_size=batch)


_LOAD_LIBTPU = "from gptjax import tpu; print(len(tpu.topology_devices('v5e-8')))"


def _load_libtpu_with(flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "LIBTPU_INIT_ARGS": flags, "TPU_ACCELERATOR_TYPE": "v5litepod-8"}
    return subprocess.run([sys.executable, "-c", _LOAD_LIBTPU], env=env, capture_output=True, text=True, timeout=120)


def test_every_generation_flag_is_known_to_the_installed_libtpu():
    flags = sorted({f for g in tpu.GENERATIONS.values() for f in g.libtpu_flags})
    assert len(flags) >= 8
    ok = _load_libtpu_with(" ".join(flags))
    assert ok.returncode == 0 and ok.stdout.strip() == "8", ok.stderr[-2000:]
    assert "Unknown command line flag" not in ok.stderr
    bad = _load_libtpu_with("--xla_tpu_no_such_flag_for_gptjax=true")  # the check can fail
    assert "Unknown command line flag 'xla_tpu_no_such_flag_for_gptjax'" in bad.stderr


def test_shell_facts_for_tpu_scripts():
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "gptjax.tpu", *a], capture_output=True, text=True, timeout=60
    )
    out = run("v5e-16")
    assert out.returncode == 0, out.stderr
    facts = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert facts["TPU_ACCELERATOR_TYPE"] == "v5litepod-16" and facts["TPU_HOSTS"] == "4"
    assert facts["TPU_RUNTIME_VERSION"] == "v2-alpha-tpuv5-lite" and facts["TPU_TOPOLOGY"] == "4x4"
    assert facts["TPU_LIBTPU_INIT_ARGS"].startswith("'--xla_tpu_enable_async_collective_fusion=true ")
    bad = run("v7x-16")
    assert bad.returncode == 2 and "unknown TPU slice 'v7x-16'" in bad.stderr and not bad.stdout


_PROBE = "import jax; jax.devices(); import os; print(os.environ.get('JAX_PLATFORMS'))"


def _start_jax(quiet: bool) -> subprocess.CompletedProcess:
    code = ("from gptjax.cli import default_jax_platforms; default_jax_platforms(); " if quiet else "") + _PROBE
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TPU_ACCELERATOR_TYPE")}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_the_cli_keeps_libtpu_quiet_on_a_machine_without_a_tpu(tmp_path, monkeypatch):
    from gptjax import cli

    loud, quiet = _start_jax(quiet=False), _start_jax(quiet=True)
    assert "could not determine TPU accelerator type" in loud.stderr  # what an installed libtpu prints here
    assert quiet.stdout.strip() == "cpu" and "TPU" not in quiet.stderr, quiet.stderr
    environ = {"JAX_PLATFORMS": "tpu"}
    cli.default_jax_platforms(environ)
    assert environ == {"JAX_PLATFORMS": "tpu"}  # a choice is kept (tpu_scripts set tpu)
    (tmp_path / "accel0").write_text("")
    monkeypatch.setattr(cli, "ACCELERATOR_DEVICES", (str(tmp_path / "accel*"),))
    environ = {}
    cli.default_jax_platforms(environ)
    assert environ == {}  # a TPU VM: JAX picks the TPU itself
