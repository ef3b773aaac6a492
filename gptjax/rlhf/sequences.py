"""Prompt + response rows as the model sees them, shared by all three stages.

A row is right-padded `tokens` [batch, T] with its prompt length and real length. Position a of the shifted
batch (inputs = tokens[:, :-1], targets = tokens[:, 1:]) is an *action* when its target is a response token,
i.e. prompt_len - 1 <= a < total_len - 1: SFT's loss mask, PPO's per-token rewards, values and advantages
all live on exactly these positions, so padding and anything after the end token never count.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from gptjax import model, train
from gptjax.config import ModelConfig

Batch = train.Batch


def lm_batch(tokens: jax.Array, prompt_len: jax.Array, total_len: jax.Array) -> Batch:
    """The train step's batch format (inputs, targets, segment_ids, positions, loss_mask) with the loss on
    response tokens only."""
    length = tokens.shape[1] - 1
    slots = jnp.arange(length)[None]
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "segment_ids": (slots < total_len[:, None]).astype(jnp.int32),
        "positions": jnp.broadcast_to(slots, (tokens.shape[0], length)).astype(jnp.int32),
        "loss_mask": ((slots >= prompt_len[:, None] - 1) & (slots < total_len[:, None] - 1)).astype(jnp.int32),
    }


def token_logprobs(
    params: Any, cfg: ModelConfig, batch: Batch, temperature: float = 1.0, dropout_rng: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """(log π(target | prefix), entropy of π) at every position [batch, T-1], in fp32, with the logits
    divided by the sampling temperature so they are the probabilities the rollout sampled from."""
    logits = train.forward_batch(params, cfg, batch, dropout_rng)
    logp_all = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    logp = jnp.take_along_axis(logp_all, batch["targets"][..., None], axis=-1)[..., 0]
    entropy = -(jnp.exp(logp_all) * logp_all).sum(-1)
    return logp, entropy


def init_scalar_head(params: Any, cfg: ModelConfig) -> dict[str, Any]:
    """A transformer with its unembedding replaced by a scalar head (zero-initialised: score 0 at start)."""
    return {"gpt": params, "head": {"w": jnp.zeros((cfg.d_model,), jnp.float32), "b": jnp.zeros((), jnp.float32)}}


def scalar_head_axes(cfg: ModelConfig) -> dict[str, Any]:
    """The logical axes of `init_scalar_head`'s tree: the transformer's, the head's vector along `embed`."""
    return {"gpt": model.logical_axes(cfg), "head": {"w": PartitionSpec("embed"), "b": PartitionSpec()}}


def scalar_head(head_params: dict[str, Any], cfg: ModelConfig, batch: Batch) -> jax.Array:
    """The scalar head read at every input position: [batch, T-1] fp32."""
    features = train.forward_batch(head_params["gpt"], cfg, batch, None, return_features=True)
    return features.astype(jnp.float32) @ head_params["head"]["w"] + head_params["head"]["b"]


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(jnp.float32)
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def whiten(x: jax.Array, mask: jax.Array) -> jax.Array:
    """(x - mean) / std over the masked entries only; padding enters no statistic and comes out 0."""
    mean = masked_mean(x, mask)
    var = masked_mean(jnp.square(x - mean), mask)
    return jnp.where(mask > 0, (x - mean) * jax.lax.rsqrt(var + 1e-8), 0.0)
