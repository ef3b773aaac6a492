"""The partitioning owner: the rules table translated to mesh specs, replication when a dimension does
not divide, each mesh axis used at most once per array, and the batch axes eval and training share."""

from __future__ import annotations

import jax
import pytest
from jax.sharding import PartitionSpec as P

from gptjax import sharding
from gptjax.errors import ConfigError


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
    assert flax["batch"] == ("data", "fsdp") and flax["length"] is None


def test_mesh_config_rejects_rules_naming_unknown_mesh_axes():
    with pytest.raises(ConfigError, match=r"mesh.rules name mesh axes \['pipeline'\]"):
        sharding.MeshConfig(rules=(("batch", ("pipeline",)),))
    assert len(jax.devices()) == 8  # conftest's emulated devices, which the mesh fixture uses
