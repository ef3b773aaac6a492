"""In-context linear regression with gptjax's transformer blocks (Garg et al. 2022, "What can transformers
learn in-context? A case study of simple function classes").

A token LM has no natural way to read real vectors, so this follows Garg et al.: the points of a sequence
(gptjax.data.synthetic.LinearRegression) are laid out as 2n vectors in R^(d+1), x_i as [x_i, 0] and y_i as
[0, ..., 0, y_i]; a linear read-in maps them to d_model, learned position embeddings are added, gptjax's
`model.Block`s (causal attention, MLP, pre-norm) and a final LayerNorm follow, and a linear read-out at
each x_i's position predicts y_i from the i - 1 pairs before it. Training minimises the squared error
averaged over all positions, so one model is trained for every number of in-context examples at once, on
fresh sequences at every step (batch b of step s is rows s*b .. s*b + b - 1 of the train split), with
gptjax's AdamW and schedule. An optional `Curriculum` (Garg et al.'s) starts with fewer dimensions and points
and grows them. eval.icl.regression scores it against least squares, 3-NN and averaging.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gptjax import model
from gptjax.config import ConfigError, ModelConfig, OptimConfig, RunConfig
from gptjax.data.synthetic import LinearRegression
from gptjax.train import make_optimizer


@dataclass(frozen=True)
class Curriculum:
    """Garg et al.'s curriculum: train first on `dim_start` of the task's dimensions and `points_start` of its
    points, adding one dimension and `points_step` points every `every` steps up to the task's sizes. Shapes stay
    fixed (one compile): the inactive coordinates of x are zero, so y depends on the active ones only, and the
    loss ignores the inactive points, which a causal model cannot see from the active ones."""

    dim_start: int
    points_start: int
    every: int
    points_step: int = 2

    def __post_init__(self) -> None:
        if min(self.dim_start, self.points_start, self.every, self.points_step) <= 0:
            raise ConfigError(f"a curriculum needs positive sizes, got {self}")

    def active(self, task: LinearRegression, step: int) -> tuple[int, int]:
        """(dimensions, points) trained at `step`."""
        stage = step // self.every
        return min(task.dim, self.dim_start + stage), min(task.points, self.points_start + self.points_step * stage)


@dataclass(frozen=True)
class RegressionConfig:
    """A regression transformer and how it is trained (model.vocab_size is unused)."""

    model: ModelConfig
    task: LinearRegression = LinearRegression()
    steps: int = 2000
    batch_size: int = 64
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(learning_rate=1e-3, warmup_steps=200, weight_decay=0.0)
    )
    seed: int = 0  # initialisation and the training sequences
    curriculum: Curriculum | None = None

    def __post_init__(self) -> None:
        if 2 * self.task.points > self.model.n_ctx:
            raise ConfigError(
                f"{self.task.points} points need a context of {2 * self.task.points} vectors; n_ctx={self.model.n_ctx}"
            )
        if (c := self.curriculum) is not None:
            if c.dim_start > self.task.dim or c.points_start > self.task.points:
                raise ConfigError(
                    f"{c} starts beyond the task's {self.task.dim} dimensions and {self.task.points} points"
                )
            if self.task.noise:
                raise ConfigError(
                    "the regression curriculum recomputes y without noise; it needs LinearRegression.noise=0"
                )

    def training_batch(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xs, ys, loss weights [b, points]) of `step`: the train split's rows step*b .. step*b + b - 1, cut
        down to the curriculum's active dimensions and points."""
        rows = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        xs, ys, w = self.task.sample(self.seed, "train", rows)
        weights = np.ones(ys.shape, np.float32)
        if self.curriculum is not None:
            dim, points = self.curriculum.active(self.task, step)
            if dim < self.task.dim:
                xs[..., dim:] = 0.0
                ys = np.einsum("npd,nd->np", xs, w).astype(np.float32)  # noise-free: __post_init__
            weights[:, points:] = 0.0
        return xs, ys, weights

    def run(self) -> RunConfig:
        """The RunConfig whose optimizer and schedule train this model."""
        return RunConfig(
            model=self.model,
            optim=self.optim,
            steps=self.steps,
            batch_size=self.batch_size,
            seq_len=2 * self.task.points,
        )


class RegressionGPT(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """inputs [batch, 2n, d + 1] -> predictions [batch, 2n] (read at the x positions 0, 2, 4, ...)."""
        cfg = self.cfg
        batch, length, _ = inputs.shape
        wpe = self.param("wpe", nn.initializers.normal(cfg.pos_init_std), (cfg.n_ctx, cfg.d_model))
        x = nn.Dense(cfg.d_model, name="read_in")(inputs) + wpe[:length]
        segments, slots = jnp.ones((batch, length), jnp.int32), jnp.arange(length)
        masks = model.attention_masks(cfg, slots, slots, segments, segments)
        for i in range(cfg.n_layer):
            kind = cfg.layer_kind(i)
            block = model.Block(cfg, kind, "xla", model.attention_blocks(cfg, kind, length, True), name=f"h_{i}")
            x, _ = block(x, masks[kind], segments, jnp.broadcast_to(slots, (batch, length)), None, None, True)
        x = model.LayerNorm(cfg, name="ln_f")(x)
        return nn.Dense(1, name="read_out")(x)[..., 0]


def layout(xs: np.ndarray | jax.Array, ys: np.ndarray | jax.Array) -> jax.Array:
    """Points xs [n, p, d], ys [n, p] as the model's input vectors [n, 2p, d + 1] (module docstring)."""
    xs, ys = jnp.asarray(xs), jnp.asarray(ys)
    x_rows = jnp.concatenate([xs, jnp.zeros(xs.shape[:-1] + (1,), xs.dtype)], axis=-1)
    y_rows = jnp.concatenate([jnp.zeros_like(xs), ys[..., None]], axis=-1)
    return jnp.stack([x_rows, y_rows], axis=2).reshape(xs.shape[0], -1, xs.shape[-1] + 1)


def predict(params: Any, cfg: ModelConfig, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Predictions [n, p] of every y_i from the pairs before it."""
    return np.asarray(_predict(params, xs, ys, cfg))


@functools.partial(jax.jit, static_argnames="cfg")
def _predict(params: Any, xs: jax.Array, ys: jax.Array, cfg: ModelConfig) -> jax.Array:
    predictions = typing.cast(jax.Array, RegressionGPT(cfg).apply({"params": params}, layout(xs, ys)))
    return predictions[:, 0::2]


def loss_fn(params: Any, cfg: ModelConfig, xs: jax.Array, ys: jax.Array, weights: jax.Array) -> jax.Array:
    """Squared error of the predictions, averaged with `weights` [n, p] over sequences and points."""
    return jnp.sum(weights * jnp.square(_predict(params, xs, ys, cfg) - ys)) / jnp.sum(weights)


def init_params(cfg: RegressionConfig) -> Any:
    dummy = jnp.zeros((1, 2 * cfg.task.points, cfg.task.dim + 1))
    return nn.unbox(RegressionGPT(cfg.model).init(jax.random.key(cfg.seed), dummy)["params"])


def train(
    cfg: RegressionConfig, callback: Callable[[int, Any, float], None] | None = None, every: int = 100
) -> tuple[Any, list[tuple[int, float]]]:
    """Train from scratch; returns the parameters and (step, mean training loss since the last entry) every
    `every` steps, after which `callback(step, params, loss)` is called if given."""
    tx = make_optimizer(cfg.run())
    params = init_params(cfg)
    opt_state = tx.init(params)

    @jax.jit
    def step_fn(
        params: Any, opt_state: Any, xs: jax.Array, ys: jax.Array, weights: jax.Array
    ) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, cfg.model, xs, ys, weights)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    curve, losses = [], []
    for step in range(cfg.steps):
        params, opt_state, loss = step_fn(params, opt_state, *cfg.training_batch(step))
        losses.append(loss)
        if (step + 1) % every == 0 or step + 1 == cfg.steps:
            curve.append((step + 1, float(np.mean(jax.device_get(losses)))))
            losses = []
            if callback is not None:
                callback(step + 1, params, curve[-1][1])
    return params, curve


__all__ = ["Curriculum", "RegressionConfig", "RegressionGPT", "init_params", "layout", "loss_fn", "predict", "train"]
