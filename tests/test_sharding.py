"""The partitioning owner: the rules table translated to mesh specs, replication when a dimension does
not divide, each mesh axis used at most once per array, and the batch axes eval and training share."""

from __future__ import annotations

import os
import uuid

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gptjax import sharding, tpu
from gptjax.config import DataConfig
from gptjax.data import make_dataset
from gptjax.data.tasks import register_text_task
from gptjax.errors import ConfigError

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # pytest workers may hold libtpu at the same time


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))


def test_logical_axes_map_through_the_rules_table(mesh):
    rules = sharding.DEFAULT_RULES
    assert sharding.logical_to_mesh_spec(P("vocab", "embed"), (258, 64), mesh, rules) == P("tensor", "fsdp")
    assert sharding.logical_to_mesh_spec(P("embed", "heads", "kv"), (64, 4, 16), mesh, rules) == P(
        "fsdp", "tensor", None
    )
    assert sharding.logical_to_mesh_spec(P("batch", "length"), (8, 32), mesh, rules) == P(("data", "fsdp"), None)


def test_an_indivisible_dimension_is_replicated_not_an_error(mesh):
    # The byte vocabulary's 257 rows do not split over tensor=2; 3 heads do not either.
    assert sharding.logical_to_mesh_spec(P("vocab", "embed"), (257, 64), mesh, sharding.DEFAULT_RULES) == P(
        None, "fsdp"
    )
    assert sharding.logical_to_mesh_spec(P("embed", "heads"), (63, 3), mesh, sharding.DEFAULT_RULES) == P(None, None)


def test_a_mesh_axis_is_used_once_per_array(mesh):
    rules = (("a", ("fsdp",)), ("b", ("fsdp", "tensor")))
    assert sharding.logical_to_mesh_spec(P("a", "b"), (8, 8), mesh, rules) == P("fsdp", "tensor")


def test_an_axis_without_a_rule_is_named(mesh):
    with pytest.raises(ConfigError, match="logical axis 'experts' has no rule"):
        sharding.logical_to_mesh_spec(P("experts"), (8,), mesh, sharding.DEFAULT_RULES)


def test_batch_axes_leave_out_axes_of_size_one_and_flax_rules_replicate_empty_ones():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=4, tensor=2))
    assert sharding.batch_axes(mesh) == ("fsdp",)
    assert sharding.batch_sharding(mesh).spec == P("fsdp", None)
    flax = dict(sharding.flax_rules(sharding.DEFAULT_RULES))
    assert flax["batch"] == ("dcn", "data", "fsdp") and flax["length"] is None


def test_mesh_config_rejects_rules_naming_unknown_mesh_axes():
    with pytest.raises(ConfigError, match=r"mesh.rules name mesh axes \['pipeline'\]"):
        sharding.MeshConfig(rules=(("batch", ("pipeline",)),))
    assert len(jax.devices()) == 8  # conftest's emulated devices, which the mesh fixture uses


# Real device layouts (libtpu's descriptions, no TPU needed): slices whose batch axis interleaves processes.
TOPOLOGIES = [("v4-32", 1), ("v5e-16", 1), ("v5e-256", 1), ("v6e-64", 1), ("v5e-16", 2)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    name = f"rows_{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefgh"), size=rng.integers(1, 9))) for _ in range(3000)]
    (root / "c.txt").write_text(" ".join(words))
    register_text_task(name, root / "c.txt")
    return make_dataset(DataConfig(task=name), 8, root / "cache")


def _assembled(dataset, bs, step: int, batch: int, processes: list[int]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The global `inputs` as the processes' own rows place them on their devices, and each one's rows."""
    out = np.full((batch, 8), -1, np.int64)
    index = bs.devices_indices_map((batch, 8))
    rows = {}
    for p in processes:
        rows[p] = sharding.process_rows(bs, batch, process=p)
        local = dataset.batch(step, batch, rows=rows[p])
        for device, shard in sharding.device_shards(local, rows[p], bs, batch, process=p).items():
            np.testing.assert_array_equal(
                out[index[device]][out[index[device]] != -1],
                shard["inputs"].ravel()[(out[index[device]] != -1).ravel()],
            )  # a row two devices hold (replicated over tensor) is the same on both
            out[index[device]] = shard["inputs"]
    return out, rows


@pytest.mark.parametrize("name,num_slices", TOPOLOGIES)
def test_each_process_loads_exactly_the_rows_its_devices_hold_on_real_tpu_layouts(dataset, name, num_slices):
    devices = tpu.topology_devices(name, num_slices)
    processes = sorted({d.process_index for d in devices})
    assert len(processes) == tpu.slice_type(name).hosts * num_slices > 1
    for mesh_cfg in (sharding.MeshConfig(data=-1), sharding.MeshConfig(data=-1, fsdp=2, tensor=2)):
        mesh = sharding.make_mesh(mesh_cfg, devices)
        assert mesh.shape["dcn"] == num_slices
        bs = sharding.batch_sharding(mesh)
        batch = 2 * sharding.data_parallel_size(bs)
        for step in (0, 7):
            assembled, rows = _assembled(dataset, bs, step, batch, processes)
            np.testing.assert_array_equal(assembled, dataset.batch(step, batch)["inputs"])  # = one process's batch
            held = {p: set() for p in processes}
            for device, index in bs.devices_indices_map((batch, 1)).items():
                held[device.process_index] |= set(range(batch)[index[0]])
            assert all(set(rows[p].tolist()) == held[p] for p in processes)  # exactly what its devices hold
            assert sorted(r for p in processes for r in rows[p]) == list(range(batch))  # union, no overlap
        if mesh_cfg.data == -1 and mesh_cfg.tensor == 1:  # what the old contiguous-slice loader refused
            assert any(np.any(np.diff(rows[p]) != 1) for p in processes), f"{name}: rows are contiguous"


def test_a_hybrid_mesh_puts_each_slice_on_its_own_dcn_row():
    devices = tpu.topology_devices("v5e-16", 2)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=2), devices)
    assert dict(mesh.shape) == {"dcn": 2, "data": 8, "fsdp": 2, "tensor": 1}
    assert [{d.slice_index for d in row.flat} for row in mesh.devices] == [{0}, {1}]
    assert sharding.batch_axes(mesh) == ("dcn", "data", "fsdp")
    with pytest.raises(ConfigError, match=r"mesh.dcn=3 but the 32 devices form 2 slice\(s\)"):
        sharding.make_mesh(sharding.MeshConfig(dcn=3), devices)
