"""gptjax.regression: the in-context regression transformer's training batches, curriculum and loss."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from gptjax import regression
from gptjax.config import ConfigError, ModelConfig
from gptjax.data.synthetic import LinearRegression

MODEL = ModelConfig(name="regression-test", vocab_size=1, n_ctx=16, n_layer=1, n_head=2, d_model=16)
TASK = LinearRegression(dim=4, points=8)
CURRICULUM = regression.Curriculum(dim_start=2, points_start=3, every=10)


def _cfg(**changes: object) -> regression.RegressionConfig:
    return dataclasses.replace(regression.RegressionConfig(model=MODEL, task=TASK, batch_size=16), **changes)


def test_curriculum_grows_dimensions_and_points_then_trains_on_the_task_itself():
    plain, curriculum = _cfg(), _cfg(curriculum=CURRICULUM)
    assert [CURRICULUM.active(TASK, s) for s in (0, 9, 10, 25, 1000)] == [(2, 3), (2, 3), (3, 5), (4, 7), (4, 8)]
    xs, ys, weights = curriculum.training_batch(12)  # stage 1: 3 dimensions, 5 points
    full_xs, _, w = TASK.sample(0, "train", np.arange(12 * 16, 13 * 16))
    np.testing.assert_array_equal(xs[..., :3], full_xs[..., :3])
    assert (xs[..., 3:] == 0).all()
    np.testing.assert_allclose(ys, np.einsum("npd,nd->np", full_xs[..., :3], w[:, :3]), rtol=1e-5, atol=1e-5)
    assert (weights[:, :5] == 1).all() and (weights[:, 5:] == 0).all()
    for got, want in zip(curriculum.training_batch(40), plain.training_batch(40)):  # the curriculum is over
        np.testing.assert_array_equal(got, want)


def test_the_loss_ignores_points_outside_the_curriculum():
    cfg = _cfg(curriculum=CURRICULUM)
    params = regression.init_params(cfg)
    xs, ys, weights = cfg.training_batch(0)  # 3 active points of 8
    noisy = ys.copy()
    noisy[:, 3:] += np.random.default_rng(0).normal(size=noisy[:, 3:].shape).astype(np.float32)
    losses = [regression.loss_fn(params, MODEL, xs, y, weights) for y in (ys, noisy)]
    np.testing.assert_array_equal(*losses)  # a causal model reads later points only at later positions
    full = regression.loss_fn(params, MODEL, xs, noisy, np.ones_like(weights))
    assert abs(float(full) - float(losses[0])) > 1e-3
    grads = [jax.grad(regression.loss_fn)(params, MODEL, xs, y, weights) for y in (ys, noisy)]
    jax.tree.map(np.testing.assert_array_equal, *grads)


def test_a_curriculum_needs_a_noise_free_task_it_fits_in():
    with pytest.raises(ConfigError, match="without noise"):
        _cfg(task=dataclasses.replace(TASK, noise=0.1), curriculum=CURRICULUM)
    with pytest.raises(ConfigError, match="starts beyond the task's 4 dimensions and 8 points"):
        _cfg(curriculum=dataclasses.replace(CURRICULUM, dim_start=5))
    with pytest.raises(ConfigError, match="positive sizes"):
        regression.Curriculum(dim_start=0, points_start=3, every=10)


def test_training_learns_in_context_one_example_solves_one_dimension():
    task = LinearRegression(dim=1, points=4)  # y = w x: after one example, w = y_1 / x_1
    cfg = _cfg(task=task, steps=300, batch_size=64)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, learning_rate=1e-2, warmup_steps=50))
    params, curve = regression.train(cfg, every=100)
    xs, ys, _ = task.sample(0, "validation", np.arange(512))
    errors = np.mean((regression.predict(params, MODEL, xs, ys) - ys) ** 2, axis=0)
    assert [s for s, _ in curve] == [100, 200, 300] and curve[-1][1] < curve[0][1]
    assert errors[0] > 0.8 and errors[1] < 0.5 * errors[0]  # the zero predictor scores E[y^2] = 1
