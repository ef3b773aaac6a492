"""The GEMM floor must list exactly the matrix products of a train step, or the bound it prints means nothing."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import model
from gptjax.config import ModelConfig

import bench_scripts

floor = bench_scripts.load("gemm_floor")


def _total_flops(gemms) -> int:
    return sum(g.count * g.flops for g in gemms)


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(vocab_size=65, n_ctx=64, n_layer=4, n_head=4, d_model=128),
        ModelConfig(vocab_size=300, n_ctx=48, n_layer=3, n_head=5, d_model=64, d_head=24, d_ff=200),
    ],
)
def test_products_of_one_block_are_the_flop_convention(cfg):
    """With one attention block, the listed products are exactly model.flops_per_token's count."""
    batch, seq_len = 3, cfg.n_ctx
    gemms = floor.step_gemms(cfg, batch, seq_len)
    assert _total_flops(gemms) == model.flops_per_token(cfg, seq_len) * batch * seq_len


def test_blocked_attention_lists_only_the_causal_blocks():
    """Four blocks of 64 queries over 256 keys compute 1+2+3+4 of 16 key blocks of scores."""
    full = ModelConfig(vocab_size=65, n_ctx=256, n_layer=2, n_head=6, d_model=384)
    blocked = dataclasses.replace(full, attention_block=64)

    def attention_flops(cfg):
        return sum(g.count * g.flops for g in floor.step_gemms(cfg, 2, 256) if g.name.startswith("attention "))

    assert attention_flops(blocked) * 16 == attention_flops(full) * 10
    banded = dataclasses.replace(blocked, attention_pattern=("banded",), band_width=64)
    # Each block of 64 queries needs its own 64 keys and the 63 before it (the first block has none before).
    assert attention_flops(banded) * 1024 == attention_flops(full) * (64 + 3 * 127)


@pytest.mark.parametrize("layout", floor.LAYOUTS)
def test_products_compute_what_their_layout_and_flops_say(layout):
    lhs_shape, rhs_shape = {"nn": ((2, 5, 3), (2, 3, 4)), "nt": ((2, 5, 3), (2, 4, 3)), "tn": ((2, 3, 5), (2, 3, 4))}[
        layout
    ]
    gemm = floor.Gemm("g", 1, lhs_shape, rhs_shape, layout, rhs_is_weight=False)
    rng = np.random.default_rng(0)
    lhs, rhs = rng.standard_normal(lhs_shape, np.float32), rng.standard_normal(rhs_shape, np.float32)
    expected = {
        "nn": lambda: lhs @ rhs,
        "nt": lambda: lhs @ rhs.swapaxes(1, 2),
        "tn": lambda: lhs.swapaxes(1, 2) @ rhs,
    }[layout]()
    got = floor.product(layout, lambda x: jnp.swapaxes(x, -1, -2))(jnp.asarray(lhs), jnp.asarray(rhs))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert gemm.flops == 2 * 2 * 5 * 3 * 4  # batch 2, m 5, k 3, n 4 in every layout


@pytest.mark.parametrize("rhs_is_weight", [True, False])
def test_xla_timing_is_a_physically_possible_rate_on_one_and_four_devices(rhs_is_weight):
    # Large enough (67 MFLOP) that the kernel, not the subtracted dispatch, sets the time.
    rhs = (512, 256) if rhs_is_weight else (256, 512)
    gemm = floor.Gemm("g", 1, (256, 512), rhs, "nn" if rhs_is_weight else "tn", rhs_is_weight)
    for devices in (jax.devices()[:1], jax.devices()[:4]):
        seconds = floor.xla_seconds(gemm, devices, repeats=3)
        # Two CPU cores reach ~0.2 TFLOP/s; a rate above 10 TFLOP/s or below 0.1 GFLOP/s is a timing bug.
        assert 1e8 < gemm.flops / seconds < 1e13, (devices, seconds)
