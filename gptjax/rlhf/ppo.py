"""PPO against a reward model with a per-token KL penalty to the frozen SFT policy, and PPO-ptx.

The objective (InstructGPT eq. 2): E_{x, y~π_RL}[r(x, y) − β log(π_RL(y|x) / π_SFT(y|x))] + γ E_pretrain[log π_RL(x)].
As in Ziegler et al. (2019) and the paper, the KL is paid per token as a reward −β (log π_old − log π_SFT)
and the RM score is added at the last response token; advantages come from GAE(γ_discount, λ) on a value
network initialised from the RM, whitened over response tokens only; the policy loss is the clipped
surrogate, the value loss the clipped squared error, and PPO-ptx adds γ times the mean LM loss of a
pretraining batch (γ = 0 is plain PPO). Every quantity is a masked mean over action positions
(gptjax.rlhf.sequences), so padding and tokens after the end token never count; rewards are fp32.
An optional adaptive controller (Ziegler et al.) moves β toward a target KL over a horizon.

The state (policy, value net, optimizer, β, the key and the iteration) is sharded like pre-training's:
the policy's and the value net's trees follow `model.logical_axes` through gptjax.sharding's rules, Adam's
moments follow their parameters, and rollout rows are split over the batch axes (`jit_update`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gptjax import decode, model, sharding
from gptjax.config import ConfigError, ModelConfig
from gptjax.rlhf import reward
from gptjax.rlhf.sequences import (
    Batch,
    init_scalar_head,
    lm_batch,
    masked_mean,
    scalar_head,
    scalar_head_axes,
    token_logprobs,
    whiten,
)


@dataclass(frozen=True)
class PPOConfig:
    kl_coef: float = 0.02  # β, per token
    ptx_coef: float = 27.8  # γ of PPO-ptx; 0 = plain PPO
    clip: float = 0.2  # ε of the clipped surrogate
    value_clip: float = 0.2
    vf_coef: float = 1.0
    gamma: float = 1.0  # GAE discount
    lam: float = 0.95  # GAE λ
    temperature: float = 1.0  # rollout sampling temperature (log-probs are recomputed with it)
    rollout_batch: int = 64  # episodes per PPO iteration
    minibatches: int = 4
    epochs: int = 4
    learning_rate: float = 1e-4
    grad_clip: float = 1.0
    target_kl: float = 0.0  # nats per sequence for the adaptive controller; 0 = fixed β
    kl_horizon: int = 10_000  # episodes over which the controller closes the gap
    whiten_advantages: bool = True

    def __post_init__(self) -> None:
        for name in ("kl_coef", "ptx_coef", "clip", "value_clip", "vf_coef", "target_kl"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ppo.{name} must be >= 0, got {getattr(self, name)}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"ppo.gamma={self.gamma} and ppo.lam={self.lam} must be in [0, 1]")
        if self.temperature <= 0:
            raise ConfigError(f"ppo.temperature must be > 0, got {self.temperature}")
        if self.rollout_batch % self.minibatches:
            raise ConfigError(
                f"ppo.rollout_batch={self.rollout_batch} is not divisible by minibatches={self.minibatches}"
            )


@flax.struct.dataclass
class PPOState:
    step: jax.Array  # PPO iterations done
    params: Any  # {"policy": GPT params, "value": scalar-head params}
    opt_state: Any
    kl_coef: jax.Array  # the current β (moved by the adaptive controller)
    rng: jax.Array  # uint32 key data of key(seed); iteration keys derive from it and the step

    def key(self, purpose: int) -> jax.Array:
        """The key of (purpose, this iteration): key(seed) -> fold_in(purpose) -> fold_in(step)."""
        return jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(self.rng), purpose), self.step)


def make_optimizer(ppo: PPOConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(ppo.grad_clip), optax.adam(ppo.learning_rate, eps=1e-5))


def init_state(policy: Any, value: Any, ppo: PPOConfig, seed: int = 0) -> PPOState:
    # Copies: the update donates its state, and the SFT policy and the RM stay frozen beside it.
    params = jax.tree.map(jnp.copy, {"policy": policy, "value": value})
    rng = jax.random.key_data(jax.random.key(seed))
    return PPOState(jnp.zeros((), jnp.int32), params, make_optimizer(ppo).init(params), jnp.float32(ppo.kl_coef), rng)


def abstract_state(cfg: ModelConfig, ppo: PPOConfig) -> PPOState:
    """Shapes and dtypes of the state, nothing allocated (a restore target)."""

    def init() -> PPOState:
        policy = model.init_params(cfg, jax.random.key(0))
        return init_state(policy, init_scalar_head(policy, cfg), ppo)

    return jax.eval_shape(init)


def state_shardings(cfg: ModelConfig, ppo: PPOConfig, mesh: Mesh, rules: sharding.Rules) -> PPOState:
    """NamedShardings of the whole state: parameters by their logical axes, moments like their parameters,
    the step, β and the key replicated."""
    abstract = abstract_state(cfg, ppo)
    param_specs = {"policy": model.logical_axes(cfg), "value": scalar_head_axes(cfg)}
    opt_specs = optax.tree_map_params(
        make_optimizer(ppo),
        lambda _, spec: spec,
        abstract.opt_state,
        param_specs,
        transform_non_params=lambda _: PartitionSpec(),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )
    replicated: Any = PartitionSpec()
    specs = PPOState(replicated, param_specs, opt_specs, replicated, replicated)
    return sharding.shardings_for(specs, abstract, mesh, rules)


# -- the formulas --------------------------------------------------------------------------------------------


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float, lam: float) -> jax.Array:
    """Generalized advantage estimates [batch, T] over the masked (contiguous) action positions of each row;
    the value after a row's last action is 0 (the episode ends there)."""

    def body(
        carry: tuple[jax.Array, jax.Array], x: tuple[jax.Array, ...]
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        next_value, next_adv = carry
        r, v, m = x
        adv = (r + gamma * next_value - v + gamma * lam * next_adv) * m
        return (v * m, adv), adv

    mask = mask.astype(jnp.float32)
    zeros = jnp.zeros(rewards.shape[0], jnp.float32)
    _, adv = jax.lax.scan(body, (zeros, zeros), (rewards.T, values.T, mask.T), reverse=True)
    return adv.T


def per_token_rewards(
    score: jax.Array, logp: jax.Array, logp_ref: jax.Array, mask: jax.Array, kl_coef: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(rewards [batch, T]: −β·(log π − log π_SFT) on every action plus the RM score on the last one,
    per-token KL estimates [batch, T])."""
    mask = mask.astype(jnp.float32)
    kl = (logp - logp_ref) * mask
    last = jnp.argmax(jnp.cumsum(mask, axis=1), axis=1)  # the last action position of each row
    at_last = jax.nn.one_hot(last, mask.shape[1], dtype=jnp.float32) * (mask.sum(1, keepdims=True) > 0)
    return -kl_coef * kl + at_last * score[:, None].astype(jnp.float32), kl


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
    """1 − Var[returns − values] / Var[returns] over the masked entries."""

    def var(x: jax.Array) -> jax.Array:
        return masked_mean(jnp.square(x - masked_mean(x, mask)), mask)

    return 1.0 - var(returns - values) / jnp.maximum(var(returns), 1e-8)


def policy_loss(
    logp: jax.Array, logp_old: jax.Array, advantages: jax.Array, mask: jax.Array, clip: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The clipped surrogate masked_mean(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))), with ρ = π/π_old, and its stats."""
    ratio = jnp.exp(logp - logp_old)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
    stats = {
        "clip_fraction": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
        "ratio": masked_mean(ratio, mask),
        "approx_kl_old": masked_mean(0.5 * jnp.square(logp - logp_old), mask),
    }
    return masked_mean(jnp.maximum(unclipped, clipped), mask), stats


def value_loss(values: jax.Array, values_old: jax.Array, returns: jax.Array, mask: jax.Array, clip: float) -> jax.Array:
    """½ masked_mean(max((V − R)², (V_old + clip(V − V_old, ±c) − R)²))."""
    clipped = values_old + jnp.clip(values - values_old, -clip, clip)
    return 0.5 * masked_mean(jnp.maximum(jnp.square(values - returns), jnp.square(clipped - returns)), mask)


# -- rollouts ------------------------------------------------------------------------------------------------


def sample_responses(
    policy: Any,
    cfg: ModelConfig,
    prompts: np.ndarray,
    max_new_tokens: int,
    end_id: int,
    temperature: float,
    key: jax.Array,
) -> list[list[int]]:
    """Responses sampled with the KV-cache decoder, the end token kept where produced."""
    return decode.generate(
        policy,
        cfg,
        prompts.tolist(),
        max_new_tokens=max_new_tokens,
        method="sample",
        temperature=temperature,
        eos_id=end_id,
        include_stop=True,
        rng=key,
        pad_multiple=1,
    )


@functools.partial(jax.jit, static_argnames=("cfg", "ppo"))
def score_rollout(
    params: Any, ref_policy: Any, rm: Any, cfg: ModelConfig, rows: Batch, kl_coef: jax.Array, ppo: PPOConfig
) -> Batch:
    """Everything PPO needs from sampled rows {tokens, prompt_len, total_len}: old log-probs, reference
    log-probs, values, RM scores, per-token rewards, advantages and returns (all fp32, zero off the mask)."""
    batch = lm_batch(rows["tokens"], rows["prompt_len"], rows["total_len"])
    mask = batch["loss_mask"].astype(jnp.float32)
    logp, entropy = token_logprobs(params["policy"], cfg, batch, ppo.temperature)
    logp_ref, _ = token_logprobs(ref_policy, cfg, batch, ppo.temperature)
    values = scalar_head(params["value"], cfg, batch) * mask
    score = reward.scores(rm, cfg, rows["tokens"], rows["total_len"])
    rewards, kl = per_token_rewards(score, logp, logp_ref, mask, kl_coef)
    advantages = gae(rewards, values, mask, ppo.gamma, ppo.lam)
    returns = (advantages + values) * mask
    return batch | {
        "logp_old": logp * mask,
        "values_old": values,
        "returns": returns,
        "advantages": whiten(advantages, mask) if ppo.whiten_advantages else advantages,
        "score": score,
        "kl": kl.sum(1),
        "entropy": (entropy * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0),
        "explained_variance": explained_variance(values, returns, mask),
    }


# -- the update ----------------------------------------------------------------------------------------------


def ppo_loss(
    params: Any, mb: Batch, ptx: Batch | None, cfg: ModelConfig, ppo: PPOConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Policy loss + vf_coef · value loss (+ ptx_coef · the pretraining LM loss when a ptx batch is given)."""
    mask = mb["loss_mask"].astype(jnp.float32)
    logp, entropy = token_logprobs(params["policy"], cfg, mb, ppo.temperature)
    pg, stats = policy_loss(logp, mb["logp_old"], mb["advantages"], mask, ppo.clip)
    values = scalar_head(params["value"], cfg, mb)
    vf = value_loss(values, mb["values_old"], mb["returns"], mask, ppo.value_clip)
    total = pg + ppo.vf_coef * vf
    stats |= {"policy_loss": pg, "value_loss": vf, "entropy": masked_mean(entropy, mask)}
    if ptx is not None and ppo.ptx_coef:  # γ = 0 is plain PPO: no pretraining forward pass at all
        ptx_logp, _ = token_logprobs(params["policy"], cfg, ptx)
        ptx_loss = -masked_mean(ptx_logp, ptx["loss_mask"])
        total = total + ppo.ptx_coef * ptx_loss
        stats["ptx_loss"] = ptx_loss
    return total, stats


# What the update reads of a scored rollout: [rows, T-1] arrays, split over the batch axes when sharded.
UPDATE_KEYS = (
    "inputs",
    "targets",
    "segment_ids",
    "positions",
    "loss_mask",
    "logp_old",
    "values_old",
    "returns",
    "advantages",
)


def make_update(cfg: ModelConfig, ppo: PPOConfig):  # noqa: ANN201 - a callable for jax.jit
    """The PPO update of one rollout (its UPDATE_KEYS): `epochs` passes over `minibatches` shuffled
    minibatches, one ptx batch per minibatch ([epochs * minibatches, rows, T] arrays, or None for plain PPO)."""
    tx = make_optimizer(ppo)

    def update(state: PPOState, rollout: Batch, ptx: Batch | None, key: jax.Array) -> tuple[PPOState, dict]:
        n = rollout["inputs"].shape[0]
        size = n // ppo.minibatches
        orders = jnp.stack([jax.random.permutation(jax.random.fold_in(key, e), n) for e in range(ppo.epochs)])
        indices = orders.reshape(ppo.epochs * ppo.minibatches, size)

        def body(carry: tuple[Any, Any], xs: tuple[jax.Array, Batch | None]) -> tuple[tuple[Any, Any], dict]:
            params, opt_state = carry
            idx, ptx_mb = xs
            mb = {k: rollout[k][idx] for k in UPDATE_KEYS}
            (_, stats), grads = jax.value_and_grad(ppo_loss, has_aux=True)(params, mb, ptx_mb, cfg, ppo)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), stats | {"grad_norm": optax.tree.norm(grads)}

        (params, opt_state), stats = jax.lax.scan(body, (state.params, state.opt_state), (indices, ptx))
        metrics = jax.tree.map(jnp.mean, stats)
        return PPOState(state.step + 1, params, opt_state, state.kl_coef, state.rng), metrics

    return update


def input_shardings(mesh: Mesh, rules: sharding.Rules) -> tuple[NamedSharding, NamedSharding]:
    """The update's inputs: rollout rows [rows, T] and ptx batches [minibatch, rows, T], rows over the
    batch axes."""
    rows = sharding.batch_sharding(mesh, rules)
    return rows, NamedSharding(mesh, PartitionSpec(None, *rows.spec))


@functools.cache
def jit_update(cfg: ModelConfig, ppo: PPOConfig, mesh: Mesh, rules: sharding.Rules = sharding.DEFAULT_RULES):  # noqa: ANN201
    """The update as it runs over `mesh`: one jit (cached, so every run of one config shares it), the state
    donated and in `state_shardings`, rollout rows split over the mesh's batch axes, metrics replicated."""
    shardings = state_shardings(cfg, ppo, mesh, rules)
    rows, ptx_rows = input_shardings(mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        make_update(cfg, ppo),
        in_shardings=(shardings, rows, ptx_rows if ppo.ptx_coef else None, replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=(0,),
    )


def adapt_kl_coef(kl_coef: float, kl: float, ppo: PPOConfig) -> float:
    """Ziegler et al.'s proportional controller: β ← β · (1 + clip(KL/target − 1, ±0.2) · n / horizon)."""
    if not ppo.target_kl:
        return kl_coef
    error = float(np.clip(kl / ppo.target_kl - 1.0, -0.2, 0.2))
    return kl_coef * (1.0 + error * ppo.rollout_batch / ppo.kl_horizon)
