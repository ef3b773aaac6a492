"""The memory and speed knobs compute the same model. Every remat policy, the layer scan and the chunked loss
give today's loss and gradients (fp32); scanned parameters convert to the unrolled layout and back bit for bit,
also through a checkpoint, and decode alike; Pallas splash attention (interpret mode on CPU) and the cuDNN
path's masking equal the XLA path; the config refuses what cannot work and lets resumed runs change only the
knobs that leave the parameters alone.

Tolerances: these are fp32 programs that differ only in evaluation order (fusion, a scan, chunked sums), so
values agree to a few ulps of their scale: 1e-6 relative on the loss, 2e-5 of each gradient's largest entry.
"""

import dataclasses
import typing

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from gptjax import config, model, runs, sharding, train
from gptjax.config import ConfigError, ModelConfig, RunConfig
from gptjax.train import Trainer

from requirements import need_data
from train_helpers import LossRecorder, small_run

LENGTH = 16
# Two periods of each attention pattern, so a scan runs twice.
_SMALL = dict(vocab_size=97, n_ctx=32, n_layer=2, n_head=4, d_model=32)
CONFIGS = {
    "dense": ModelConfig(**_SMALL),
    "banded": ModelConfig(
        **_SMALL | {"n_layer": 4}, attention_pattern=("dense", "banded"), band_width=5, attention_block=8
    ),
    "gpt1": ModelConfig(**_SMALL, norm="post", final_norm=False, scale_residual_init=False),
    "rotary": ModelConfig(**_SMALL, positions="rotary"),  # rotated by the packed rows' positions
}


def _batch(vocab: int, batch: int = 2, length: int = LENGTH) -> dict[str, jax.Array]:
    """Packed rows: two documents and padding in row 0, loss masked on the padding."""
    rng = np.random.default_rng(0)
    first = 9 * length // 16
    segments = np.array([[1] * first + [2] * (length - first - 2) + [0] * 2] + [[1] * length] * (batch - 1))
    positions = np.array(
        [list(range(first)) + list(range(length - first - 2)) + [0, 0]] + [list(range(length))] * (batch - 1)
    )
    return {
        "inputs": jnp.asarray(rng.integers(0, vocab, (batch, length)), jnp.int32),
        "targets": jnp.asarray(rng.integers(0, vocab, (batch, length)), jnp.int32),
        "segment_ids": jnp.asarray(segments, jnp.int32),
        "positions": jnp.asarray(positions, jnp.int32),
        "loss_mask": jnp.asarray(segments > 0, jnp.float32),
    }


def _loss_and_grads(params, cfg: ModelConfig):
    run = RunConfig(model=cfg, seq_len=LENGTH, batch_size=2)
    batch = _batch(cfg.vocab_size)

    def mean_loss(p):
        total, count = train.token_loss_sums(p, batch, run, None)
        return total / count

    return jax.jit(jax.value_and_grad(mean_loss))(params)


def _assert_grads_close(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, g_want), g_got in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
        if "key_bias" in jax.tree_util.keystr(path):
            continue  # softmax ignores a shift of every score: its true gradient is 0, both hold noise
        np.testing.assert_allclose(g_got, g_want, atol=2e-5 * float(jnp.abs(g_want).max()), err_msg=str(path))


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference():
    """Today's model on each config: unrolled, no remat, unchunked loss."""
    out = {}
    for name, cfg in CONFIGS.items():
        params = model.init_params(cfg, jax.random.key(0))
        out[name] = (params, *_loss_and_grads(params, cfg))
    return out


VARIANTS = {
    "scan + full remat": dict(scan_layers=True, remat="full"),  # remat inside the scan body
    "chunked loss": dict(loss_chunk=4),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_scan_remat_and_chunked_loss_keep_loss_and_gradients(reference, name, variant):
    params, loss, grads = reference[name]
    cfg = dataclasses.replace(CONFIGS[name], **VARIANTS[variant])
    if cfg.scan_layers:
        got_loss, got_grads = _loss_and_grads(model.stack_layers(params, cfg), cfg)
        got_grads = model.unstack_layers(got_grads, cfg)
    else:
        got_loss, got_grads = _loss_and_grads(params, cfg)
    np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
    _assert_grads_close(got_grads, grads)


@pytest.mark.parametrize("policy", [p for p in model.REMAT_POLICIES if p != "none"])
def test_every_remat_policy_keeps_loss_and_gradients(reference, policy):
    params, loss, grads = reference["dense"]
    got_loss, got_grads = _loss_and_grads(params, dataclasses.replace(CONFIGS["dense"], remat=policy))
    np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
    _assert_grads_close(got_grads, grads)


def test_remat_policies_cover_the_config_names():
    assert set(model.REMAT_POLICIES) == set(typing.get_args(config.RematPolicy))


def test_scanned_checkpoint_converts_to_unrolled_and_back_bitwise(tmp_path):
    cfg = dataclasses.replace(CONFIGS["banded"], scan_layers=True)
    unrolled = model.init_params(CONFIGS["banded"], jax.random.key(3))
    stacked = model.stack_layers(unrolled, cfg)
    assert jax.tree.structure(stacked) == jax.tree.structure(model.abstract_params(cfg))
    assert stacked["layers"]["block_1"]["attn"]["query_kernel"].shape == (2, 32, 4, 8)  # layers 1 and 3
    train.write_initial_checkpoint(RunConfig(model=cfg, run_dir=str(tmp_path / "run")), stacked)
    loaded, loaded_cfg, _, _ = runs.load_for_inference(tmp_path / "run")
    assert loaded_cfg == cfg
    _assert_trees_equal(loaded, stacked)
    _assert_trees_equal(model.unstack_layers(loaded, cfg), unrolled)
    _assert_trees_equal(model.stack_layers(model.unstack_layers(loaded, cfg), cfg), stacked)

    # Decoding unstacks scanned parameters: the same logits and cache as the unrolled model's.
    tokens = _batch(cfg.vocab_size)["inputs"][:, :6]
    cache = model.init_cache(cfg, 2, 8)
    logits, new_cache = model.forward_with_cache(loaded, tokens, cache, cfg)
    want, want_cache = model.forward_with_cache(unrolled, tokens, cache, CONFIGS["banded"])
    np.testing.assert_allclose(logits, want, atol=1e-5)
    np.testing.assert_allclose(new_cache["layers"][3]["k"], want_cache["layers"][3]["k"], atol=1e-6)


SPLASH = ModelConfig(
    vocab_size=97, n_ctx=256, n_layer=2, n_head=2, d_model=64, attention_pattern=("dense", "banded"), band_width=40
)


@pytest.fixture
def small_tiles(monkeypatch):
    """Splash tiles of 128 rows, so 256 positions make a 2 x 2 grid: a causal layer skips one tile."""
    monkeypatch.setattr(model, "SPLASH_BLOCK", 128)


def _splash_case(batch: int):
    params = model.init_params(SPLASH, jax.random.key(0))
    data = _batch(SPLASH.vocab_size, batch=batch, length=256)
    weights = jax.random.normal(jax.random.key(1), (batch, 256, SPLASH.vocab_size))
    return params, data, weights


def _logits_and_grads(params, data, weights, cfg):
    def logits(p):
        return model.forward(p, data["inputs"], cfg, segment_ids=data["segment_ids"], positions=data["positions"])

    grads = jax.jit(jax.grad(lambda p: (logits(p) * weights).sum()))(params)
    return jax.jit(logits)(params), grads


def test_splash_attention_equals_the_xla_path(small_tiles):
    """Causal (dense layer), local band (banded layer) and packed segments with padding, in one model."""
    params, data, weights = _splash_case(batch=2)
    want_logits, want_grads = _logits_and_grads(params, data, weights, SPLASH)
    splash = dataclasses.replace(SPLASH, attention_impl="splash")
    assert model.attention_impl(splash, 256, general_masks=False) == "splash"
    logits, grads = _logits_and_grads(params, data, weights, splash)
    np.testing.assert_allclose(logits, want_logits, atol=1e-5)
    _assert_grads_close(grads, want_grads)


def test_splash_attention_under_a_mesh_runs_per_shard(small_tiles):
    """Batch over data x fsdp and heads over tensor: the kernel runs in shard_map on each device's part."""
    params, data, weights = _splash_case(batch=4)
    want_logits, _ = _logits_and_grads(params, data, weights, SPLASH)
    mesh = sharding.make_mesh(config.MeshConfig(data=2, fsdp=2, tensor=2))
    splash = dataclasses.replace(SPLASH, attention_impl="splash")
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.flax_rules(sharding.DEFAULT_RULES)):
        assert model._splash_spec(jax.sharding.get_abstract_mesh(), 4, 2) == PartitionSpec(
            ("data", "fsdp"), "tensor", None, None
        )
        placed = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
        logits, _ = _logits_and_grads(placed, data, weights, splash)
    np.testing.assert_allclose(logits, want_logits, atol=1e-5)


@pytest.mark.parametrize("kind", ["dense", "banded"])
def test_dot_product_attention_masks_match_the_xla_path(kind):
    """The cuDNN path's call (causal, band as a left window, segments as a mask), run by XLA here."""
    cfg = dataclasses.replace(CONFIGS["banded"], attention_pattern=(kind,))
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, LENGTH, 4, 8))
    segments = _batch(cfg.vocab_size)["segment_ids"]
    slots = jnp.arange(LENGTH)
    mask = model.attention_masks(cfg, slots, slots, segments, segments)[kind]
    scores = jnp.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(8)
    probs = jax.nn.softmax(jnp.where(mask[:, None], scores, jnp.finfo(jnp.float32).min), axis=-1)
    want = jnp.einsum("bhqs,bshk->bqhk", probs, v)
    got = model.dot_product_attention(q, k, v, segments, kind, cfg.band_width, "xla")
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: ModelConfig(remat="sometimes"), "model.remat='sometimes' is not one of"),
        (lambda: ModelConfig(attention_impl="flash"), "model.attention_impl='flash' is not one of"),
        (
            lambda: ModelConfig(n_layer=3, attention_pattern=("dense", "banded"), scan_layers=True),
            "n_layer=3 is not a multiple of its length 2",
        ),
        (lambda: ModelConfig(attention_impl="splash", attn_dropout=0.1), "has no attention dropout"),
        (lambda: ModelConfig(loss_chunk=-1), "loss_chunk must be >= 0"),
        (lambda: RunConfig(model=ModelConfig(n_ctx=32, loss_chunk=5), seq_len=16), "loss_chunk=5 does not divide"),
    ],
)
def test_bad_knobs_name_field_and_value(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_splash_needs_lengths_of_whole_tiles():
    cfg = dataclasses.replace(CONFIGS["dense"], attention_impl="splash")
    with pytest.raises(ConfigError, match="tiles 128 positions at a time; got a length of 16"):
        model.forward(model.init_params(CONFIGS["dense"], jax.random.key(0)), _batch(97)["inputs"], cfg)


def test_a_resumed_run_may_change_how_but_not_the_layout():
    saved = RunConfig(model=CONFIGS["banded"])
    how = config.override(saved, ["model.remat=full", "model.attention_impl=xla", "model.loss_chunk=8"])
    assert config.changed_fields(saved, how) == {}
    layout = config.override(saved, ["model.scan_layers=true"])
    assert config.changed_fields(saved, layout) == {"model.scan_layers": (False, True)}


def test_a_sharded_run_with_every_knob_trains_like_the_default(tmp_path):
    """Through the Trainer on a 2 x 2 x 2 mesh: scanned, rematerialised layers and the chunked loss give the
    default run's losses and parameters (the scanned state is initialised from the same unrolled values)."""
    need_data("corpora/tinyshakespeare")
    mesh = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
    default = Trainer(small_run(tmp_path / "a", tmp_path / "cache", steps=3, **mesh))
    knobs = {"model.scan_layers": "true", "model.remat": "minimal", "model.loss_chunk": 8}
    tuned = Trainer(small_run(tmp_path / "b", tmp_path / "cache", steps=3, **mesh, **knobs))
    default.restore_or_init()
    tuned.restore_or_init()
    stacked = model.stack_layers(jax.device_get(default.state.params), tuned.run.model)  # copies: both donate
    tuned.state = tuned.state.replace(
        params=jax.device_put(stacked, tuned.state_shardings.params),
        opt_state=jax.device_put(tuned.tx.init(stacked), tuned.state_shardings.opt_state),
    )
    losses = []
    for trainer in (default, tuned):
        recorder = LossRecorder()
        trainer.add_hook(recorder, every=1)
        trainer.train()
        losses.append(recorder.losses)
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    got = jax.device_get(model.unstack_layers(tuned.state.params, tuned.run.model))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(jax.device_get(default.state.params))):
        np.testing.assert_allclose(a, b, atol=1e-5)
