"""The reward model: the SFT transformer with a scalar head read at the last response token, trained on
K-way rankings (InstructGPT §3.5).

One batch element holds one prompt's K responses (scored in one forward pass of K rows) and their ranks;
the loss is -1/P · Σ_{pairs (w, l)} log σ(r_w - r_l) over the P ≤ C(K, 2) untied pairs of that prompt, so
each prompt counts once however many comparisons it yields (the paper's remedy for over-fitting to
correlated pairs). After training, `center` sets the head's bias so reference responses score 0 on average.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.config import ModelConfig
from gptjax.rlhf.sequences import Batch, lm_batch, scalar_head


def scores(rm_params: Any, cfg: ModelConfig, tokens: jax.Array, total_len: jax.Array) -> jax.Array:
    """r(x, y) [batch] for right-padded rows: the head at the input position holding the last real token."""
    batch = lm_batch(tokens, jnp.ones_like(total_len), total_len)
    per_position = scalar_head(rm_params, cfg, batch)
    last = jnp.clip(total_len - 1, 0, per_position.shape[1] - 1)
    return jnp.take_along_axis(per_position, last[:, None], axis=1)[:, 0]


def ranking_loss_sums(rewards: jax.Array, ranks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(Σ over prompts of the mean pairwise loss, number of prompts with at least one untied pair).

    rewards, ranks: [batch, K]; a lower rank is better, equal ranks are a tie and dropped."""
    i, j = np.triu_indices(rewards.shape[1], 1)
    better = jnp.sign(ranks[:, j] - ranks[:, i]).astype(jnp.float32)  # +1: i preferred, -1: j, 0: tie
    margin = better * (rewards[:, i] - rewards[:, j])
    pair_loss = -jax.nn.log_sigmoid(margin) * jnp.abs(better)
    pairs = jnp.abs(better).sum(-1)
    per_prompt = pair_loss.sum(-1) / jnp.maximum(pairs, 1.0)
    return per_prompt.sum(), (pairs > 0).sum().astype(jnp.float32)


def loss_sums(rm_params: Any, batch: Batch, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """The RM loss of a batch {tokens [B, K, T], total_len [B, K], ranks [B, K]} as (sum, count)."""
    b, k, t = batch["tokens"].shape
    r = scores(rm_params, cfg, batch["tokens"].reshape(b * k, t), batch["total_len"].reshape(b * k))
    return ranking_loss_sums(r.reshape(b, k), batch["ranks"])


def pairwise_accuracy(rewards: np.ndarray, ranks: np.ndarray) -> float:
    """The share of untied pairs that `rewards` orders as `ranks` does. [n, K] each."""
    i, j = np.triu_indices(rewards.shape[1], 1)
    better = np.sign(ranks[:, j] - ranks[:, i])
    agree = np.sign(rewards[:, i] - rewards[:, j]) == better
    return float(agree[better != 0].mean())


def center(rm_params: Any, reference_scores: jax.Array) -> Any:
    """The RM with its bias shifted so that the reference responses' mean score is 0."""
    head = rm_params["head"]
    return {**rm_params, "head": {**head, "b": head["b"] - jnp.mean(reference_scores)}}
