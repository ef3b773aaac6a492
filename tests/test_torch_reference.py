"""The torch benchmark baseline must be the same model and optimiser as gptjax, not merely a similar one."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gptjax import model, train
from gptjax.config import ConfigError, ModelConfig, OptimConfig, RunConfig

import bench_scripts
from requirements import need_modules

(torch,) = need_modules("torch")
torch.set_num_threads(1)  # tiny models; several pytest-xdist workers may share the cores
ref = bench_scripts.load("torch_reference")

CFG = ModelConfig(vocab_size=65, n_ctx=32, n_layer=2, n_head=4, d_model=64)

# Jitted: eager op-by-op init and forward take seconds each on CPU.
init_params = jax.jit(model.init_params, static_argnums=0)
forward = jax.jit(model.forward, static_argnums=2)


def _tokens(shape, seed=0):
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, shape)


@pytest.mark.parametrize("cfg", [CFG, dataclasses.replace(CFG, d_head=8)], ids=["gpt2", "narrow-heads"])
def test_logits_match_gptjax(cfg):
    params = init_params(cfg, jax.random.key(1))
    tokens = _tokens((3, cfg.n_ctx))
    expected = np.asarray(forward(params, jnp.asarray(tokens), cfg))
    torch_model = ref.load_gptjax_params(ref.build(cfg), params).eval()
    with torch.no_grad():
        got = torch_model(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_initialisation_matches_gptjax():
    torch.manual_seed(0)
    torch_state = ref.build(CFG).state_dict()
    jax_state = ref.gptjax_state_dict(init_params(CFG, jax.random.key(0)), CFG)
    assert sum(p.numel() for p in torch_state.values()) == model.param_count(CFG).total
    for name, expected in jax_state.items():
        got = torch_state[name]
        assert got.shape == expected.shape, name
        if expected.std() == 0:  # biases and LayerNorm: constant
            assert torch.equal(got, expected), name
        else:
            assert got.std().item() == pytest.approx(expected.std().item(), rel=0.1), name


def test_train_steps_match_gptjax_trainer():
    """Same gradients, same clipped AdamW with the same decay mask and schedule: same parameters after.

    The JAX side is gptjax's own optimizer and train step, so the benchmark compares like with like.
    """
    steps, batch, seq_len = 6, 4, 16
    run = RunConfig(
        model=CFG,
        optim=OptimConfig(learning_rate=3e-3, warmup_steps=2, grad_clip=0.5),
        steps=steps,
        batch_size=batch,
        seq_len=seq_len,
    )
    params = init_params(CFG, jax.random.key(2))
    batches = ref.random_batches(CFG.vocab_size, steps, batch, seq_len, seed=3)

    torch_model = ref.load_gptjax_params(ref.build(CFG), params)
    torch_losses = ref.train_steps(torch_model, ref.make_optimizer(torch_model, run.optim, total_steps=steps), batches)

    tx = train.make_optimizer(run)
    state = train.init_state(run, tx, jax.random.key_data(jax.random.key(0)), params=params)
    step_fn = jax.jit(train.make_train_step(run, tx))
    ones = jnp.ones((batch, seq_len), jnp.int32)
    jax_losses, grad_norms = [], []
    for inputs, targets in batches:
        state, out = step_fn(
            state,
            {
                "inputs": jnp.asarray(inputs.numpy()),
                "targets": jnp.asarray(targets.numpy()),
                "segment_ids": ones,
                "positions": jnp.cumsum(ones, axis=1) - 1,
                "loss_mask": ones,
            },
        )
        jax_losses.append(float(out["loss"]))
        grad_norms.append(float(out["grad_norm"]))

    assert max(grad_norms) > run.optim.grad_clip  # clipping is exercised
    np.testing.assert_allclose(torch_losses, jax_losses, rtol=1e-5)
    expected = ref.gptjax_state_dict(state.params, CFG)
    assert not np.allclose(
        expected["h.0.mlp.c_fc.weight"], ref.gptjax_state_dict(params, CFG)["h.0.mlp.c_fc.weight"], atol=1e-3
    )  # the updates moved the weights
    for name, got in torch_model.state_dict().items():
        np.testing.assert_allclose(got.numpy(), expected[name].numpy(), atol=2e-5, err_msg=name)


def test_lr_factor_matches_optax_schedule():
    optim = OptimConfig(warmup_steps=10, decay_steps=50)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, 10, 50, optim.min_lr_ratio)
    for step in (0, 1, 9, 10, 11, 30, 49, 50, 80):
        assert ref.lr_factor(step, optim, total_steps=100) == pytest.approx(float(schedule(step)), abs=1e-6)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"norm": "post"}, "model.norm='post'"),
        ({"attention_pattern": ("dense", "banded")}, "model.attention_pattern"),
        ({"tie_embeddings": False}, "model.tie_embeddings=False"),
        ({"resid_dropout": 0.1}, "model.resid_dropout=0.1"),
        ({"dtype": "bfloat16"}, "model.dtype='bfloat16'"),
    ],
)
def test_unsupported_configs_are_refused(change, field):
    with pytest.raises(ConfigError, match=field.replace("(", r"\(")):
        ref.build(dataclasses.replace(CFG, **change))


def test_measure_tokens_per_s():
    tps = ref.measure_tokens_per_s(CFG, batch=2, seq_len=16, steps=2, warmup=1)
    assert math.isfinite(tps) and tps > 0
