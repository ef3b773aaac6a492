"""The fine-tuning objective: the pretrained transformer with three new token rows and a linear head on the
extract token's final state, trained on L3 = L2 + λ·L1 (GPT-1 §3.2).

Parameters are {"gpt": the transformer's tree at vocab_size + 3, "head": {"kernel", "bias"}}. The new rows
of wte (and of an untied lm_head) are drawn N(0, init_std); every pretrained row is kept exactly. Per
example, L2 is the cross-entropy of the head's prediction and L1 the mean token cross-entropy of the LM
on the example's transformed sequences (GPT-1's reference code normalises the same way); the step
averages both over examples (the loss's "count"). λ = 0 skips L1 entirely, so it is the classification
loss alone, not a product with zero. `finetune.trainable=head` freezes every pretrained parameter through
the optimizer's mask (train.make_optimizer): only the head and the three new rows move.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from gptjax import model
from gptjax.config import ModelConfig, RunConfig
from gptjax.finetune.tasks import Task
from gptjax.finetune.transforms import NUM_SPECIAL
from gptjax.train import Batch, Objective, model_uses_dropout

Params = Any


def extended_model(cfg: ModelConfig) -> ModelConfig:
    """The pretrained model's config with the three special-token rows added to the vocabulary."""
    return dataclasses.replace(cfg, vocab_size=cfg.vocab_size + NUM_SPECIAL)


def extend_params(pretrained: Params, cfg: ModelConfig, key: jax.Array) -> Params:
    """`pretrained` (at `cfg.vocab_size`) with NUM_SPECIAL new embedding rows appended (and lm_head columns,
    when the embeddings are untied)."""
    wte = pretrained["wte"]
    new_rows = cfg.init_std * jax.random.normal(jax.random.fold_in(key, 0), (NUM_SPECIAL, wte.shape[1]), wte.dtype)
    params = {**pretrained, "wte": jnp.concatenate([wte, new_rows], axis=0)}
    if "lm_head" in pretrained:
        head = pretrained["lm_head"]
        new_cols = cfg.init_std * jax.random.normal(jax.random.fold_in(key, 1), (head.shape[0], NUM_SPECIAL))
        params["lm_head"] = jnp.concatenate([head, new_cols.astype(head.dtype)], axis=1)
    return params


def init_head(task: Task, cfg: ModelConfig, key: jax.Array) -> Params:
    kernel = cfg.init_std * jax.random.normal(key, (cfg.d_model, task.head_outputs), jnp.float32)
    return {"kernel": kernel, "bias": jnp.zeros((task.head_outputs,), jnp.float32)}


def class_logits(
    params: Params, batch: Batch, task: Task, run: RunConfig, rng: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """(logits [n, classes or sequences], features [n*K, L, d_model]): the head on the ⟨e⟩ state of each
    sequence; similarity adds the states of both orders first, multiple choice masks absent choices."""
    cfg = run.model
    n, k, length = batch["inputs"].shape
    body_rng, head_rng = (None, None) if rng is None else (jax.random.fold_in(rng, 0), jax.random.fold_in(rng, 1))
    features = model.forward(
        params["gpt"], batch["inputs"].reshape(n * k, length), cfg, dropout_rng=body_rng, return_features=True
    )
    states = jnp.take_along_axis(features.reshape(n, k, length, -1), batch["extract"][:, :, None, None], axis=2)
    states = states[:, :, 0].astype(jnp.float32)  # [n, K, d_model]
    if task.kind == "similarity":
        states = states.sum(axis=1, keepdims=True)
    p = run.finetune.clf_dropout
    if head_rng is not None and p > 0:
        states = jnp.where(jax.random.bernoulli(head_rng, 1 - p, states.shape), states / (1 - p), 0.0)
    out = states @ params["head"]["kernel"] + params["head"]["bias"]  # [n, K or 1, outputs]
    if task.kind == "choice":
        return jnp.where(batch["sequence_mask"] > 0, out[..., 0], -1e9), features
    return out[:, 0], features


def lm_loss_per_example(params: Params, features: jax.Array, batch: Batch, cfg: ModelConfig) -> jax.Array:
    """L1 per example [n]: the mean token cross-entropy over the example's transformed sequences."""
    n, k, length = batch["inputs"].shape
    logits = model.project_to_vocab(features, model.output_embedding(params["gpt"], cfg))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"].reshape(n * k, length))
    mask = batch["lm_mask"].reshape(n, -1)
    return (ce.reshape(n, -1) * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)


def finetune_objective(run: RunConfig, task: Task, pretrained: Params | None) -> Objective:
    """The Objective the Trainer runs: `run.model` is the extended config; `pretrained` the transformer's
    parameters at the original vocabulary (None = a random initialisation, the from-scratch baseline)."""
    cfg = run.model
    base = dataclasses.replace(cfg, vocab_size=cfg.vocab_size - NUM_SPECIAL)
    weight = run.finetune.aux_lm_weight

    def init_params(key: jax.Array) -> Params:
        gpt = pretrained if pretrained is not None else model.init_params(base, jax.random.fold_in(key, 0))
        return {"gpt": extend_params(gpt, cfg, jax.random.fold_in(key, 1)), "head": init_head(task, cfg, key)}

    def loss_fn(params: Params, batch: Batch, rng: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits, features = class_logits(params, batch, task, run, rng)
        labels = batch["label"][:, 0]
        clf = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        sums = {
            "count": jnp.asarray(labels.shape[0], jnp.float32),
            "clf_loss": clf.sum(),
            "accuracy": (jnp.argmax(logits, axis=-1) == labels).sum().astype(jnp.float32),
        }
        total = clf.sum()
        if weight > 0:
            lm = lm_loss_per_example(params, features, batch, cfg)
            sums["lm_loss"] = lm.sum()
            total = total + weight * lm.sum()
        return total, sums

    def logical_axes() -> Params:
        return {
            "gpt": model.logical_axes(cfg),
            "head": {"kernel": PartitionSpec("embed", None), "bias": PartitionSpec()},
        }

    trainable = None if run.finetune.trainable == "all" else lambda params: head_only(params, cfg)
    dropout = model_uses_dropout(cfg) or run.finetune.clf_dropout > 0
    return Objective(loss_fn, init_params, logical_axes, dropout, trainable)


def head_only(params: Params, cfg: ModelConfig) -> Params:
    """`finetune.trainable=head`: True for the head and the new special-token rows of wte (and columns of an
    untied lm_head), False for every pretrained parameter."""
    new = jnp.arange(cfg.vocab_size) >= cfg.vocab_size - NUM_SPECIAL
    gpt = jax.tree.map(lambda _: False, params["gpt"])
    gpt["wte"] = new[:, None]
    if "lm_head" in gpt:
        gpt["lm_head"] = new[None, :]
    return {"gpt": gpt, "head": jax.tree.map(lambda _: True, params["head"])}


__all__ = ["class_logits", "extend_params", "extended_model", "finetune_objective", "head_only", "lm_loss_per_example"]
