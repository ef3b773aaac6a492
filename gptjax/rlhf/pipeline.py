"""The toy InstructGPT pipeline end to end: pretrain → SFT → reward model → PPO(-ptx), each stage measured
against the task's hidden reward r* (gptjax.rlhf.toy).

SFT and the RM run train.py's one train step with their own `Objective` (SFT: the LM loss, whose batch
masks prompt tokens; RM: the ranking loss on a scalar-head tree), so accumulation, clipping, the schedule and
the non-finite guard are pre-training's. PPO has its own update (gptjax.rlhf.ppo) because a rollout is
scored before it is trained on. Every draw derives from (seed, stage, step), so a stage replays exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from gptjax import model, train
from gptjax.config import ModelConfig, OptimConfig, RunConfig
from gptjax.rlhf import ppo, reward
from gptjax.rlhf.sequences import Batch, init_scalar_head, lm_batch, token_logprobs
from gptjax.rlhf.toy import END, ToyTask, pack

# Stage ids for key derivation: key(seed) -> fold_in(stage) -> fold_in(step).
_PRETRAIN, _SFT, _RM, _PPO, _EVAL = range(5)


def _rng(seed: int, stage: int, step: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stage, step])


def _key(seed: int, stage: int, step: int = 0) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stage), step)


def stage_run(cfg: ModelConfig, steps: int, batch_size: int, learning_rate: float, seed: int = 0) -> RunConfig:
    """The RunConfig of one supervised stage: cosine decay with a short warm-up, as pre-training."""
    optim = OptimConfig(learning_rate=learning_rate, warmup_steps=max(1, steps // 20), weight_decay=0.0)
    return RunConfig(model=cfg, optim=optim, steps=steps, batch_size=batch_size, seed=seed, seq_len=0)


def fit(
    run: RunConfig, objective: train.Objective, params: Any, batch_at: Callable[[int], Batch]
) -> tuple[Any, list[float]]:
    """`run.steps` steps of train.py's step from `params` on `batch_at(step)`: (params, losses)."""
    tx = train.make_optimizer(run)
    params = jax.tree.map(jnp.copy, params)  # the step donates its state; the caller keeps its params
    state = train.init_state(run, tx, jax.random.key_data(jax.random.key(run.seed)), params=params, objective=objective)
    step = jax.jit(train.make_train_step(run, tx, objective), donate_argnums=(0,))
    losses = []
    for i in range(run.steps):
        state, metrics = step(state, batch_at(i))
        losses.append(float(metrics["loss"]))
    return state.params, losses


# -- stages --------------------------------------------------------------------------------------------------


def pretraining_batch(task: ToyTask, rows: int, rng: np.random.Generator) -> Batch:
    """LM rows of the toy pretraining language (progressions), loss on every token."""
    tokens = jnp.asarray(task.pretraining(rows, task.seq_len, rng))
    n = jnp.full((rows,), task.seq_len, jnp.int32)
    return lm_batch(tokens, jnp.ones_like(n), n)


def pretrain(task: ToyTask, run: RunConfig) -> Any:
    params = model.init_params(run.model, jax.random.key(run.seed))
    batch_at = lambda i: pretraining_batch(task, run.batch_size, _rng(run.seed, _PRETRAIN, i))  # noqa: E731
    return fit(run, train.lm_objective(run), params, batch_at)


def demonstration_batch(task: ToyTask, rows: int, rng: np.random.Generator) -> Batch:
    prompts = task.prompts(rows, rng)
    packed = {k: jnp.asarray(v) for k, v in pack(prompts, task.demonstrations(prompts, rng), task.seq_len).items()}
    return lm_batch(packed["tokens"], packed["prompt_len"], packed["total_len"])


def sft(task: ToyTask, run: RunConfig, params: Any) -> tuple[Any, list[float]]:
    """Fine-tune on demonstrations; the loss mask of `lm_batch` covers response tokens only."""
    batch_at = lambda i: demonstration_batch(task, run.batch_size, _rng(run.seed, _SFT, i))  # noqa: E731
    return fit(run, train.lm_objective(run), params, batch_at)


def comparisons(
    task: ToyTask, policy: Any, cfg: ModelConfig, prompts: np.ndarray, k: int, key: jax.Array, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """K responses per prompt sampled from `policy` at temperature 1, ranked by Plackett–Luce draws from r*:
    {tokens [n, K, T], total_len [n, K], ranks [n, K], true [n, K]}."""
    repeated = np.repeat(prompts, k, axis=0)
    responses = ppo.sample_responses(policy, cfg, repeated, task.max_response + 1, END, 1.0, key)
    packed = pack(repeated, responses, task.seq_len)
    true = np.array([task.true_reward(p, r) for p, r in zip(repeated, responses)], np.float32).reshape(-1, k)
    n, t = len(prompts), task.seq_len
    return {
        "tokens": packed["tokens"].reshape(n, k, t),
        "total_len": packed["total_len"].reshape(n, k),
        "ranks": task.rank(true, rng),
        "true": true,
    }


def reward_objective(cfg: ModelConfig, sft_params: Any) -> train.Objective:
    def loss_fn(params: Any, batch: Batch, rng: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
        total, count = reward.loss_sums(params, batch, cfg)
        return total, {"count": count}

    def logical_axes() -> Any:
        return {"gpt": model.logical_axes(cfg), "head": {"w": PartitionSpec("embed"), "b": PartitionSpec()}}

    return train.Objective(loss_fn, lambda key: init_scalar_head(sft_params, cfg), logical_axes)


def train_reward_model(
    task: ToyTask, run: RunConfig, sft_params: Any, data: dict[str, np.ndarray], reference: Batch
) -> tuple[Any, list[float]]:
    """Fit the RM on `data` (cycled in fixed-order batches), then centre it on the reference rows."""
    n = len(data["ranks"])

    def batch_at(i: int) -> Batch:
        idx = (np.arange(run.batch_size) + i * run.batch_size) % n
        return {key: jnp.asarray(data[key][idx]) for key in ("tokens", "total_len", "ranks")}

    rm, losses = fit(run, reward_objective(run.model, sft_params), init_scalar_head(sft_params, run.model), batch_at)
    ref = reward.scores(rm, run.model, reference["tokens"], reference["total_len"])
    return reward.center(rm, ref), losses


# -- PPO -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Policy:
    """The frozen pieces PPO runs against."""

    cfg: ModelConfig
    sft: Any
    rm: Any


def rollout(
    task: ToyTask,
    cfg: ModelConfig,
    policy_params: Any,
    n: int,
    temperature: float,
    key: jax.Array,
    rng: np.random.Generator,
):  # noqa: ANN201
    """(prompts, responses, packed rows as device arrays, r* per row) for n fresh prompts."""
    prompts = task.prompts(n, rng)
    responses = ppo.sample_responses(policy_params, cfg, prompts, task.max_response + 1, END, temperature, key)
    packed = {k: jnp.asarray(v) for k, v in pack(prompts, responses, task.seq_len).items()}
    true = np.array([task.true_reward(p, r) for p, r in zip(prompts, responses)], np.float32)
    return prompts, responses, packed, true


def run_ppo(
    task: ToyTask, frozen: Policy, config: ppo.PPOConfig, iterations: int, seed: int = 0, ptx_rows: int = 16
) -> tuple[ppo.PPOState, list[dict[str, float]]]:
    """`iterations` PPO iterations from the SFT policy and an RM-initialised value net; per-iteration metrics
    (RM score, r*, KL to SFT, entropy, clip fraction, value loss, explained variance, ptx loss, β)."""
    cfg = frozen.cfg
    state = ppo.init_state(frozen.sft, frozen.rm, config)
    update = ppo.make_update(cfg, config)
    score = jax.jit(
        lambda params, rows, beta: ppo.score_rollout(params, frozen.sft, frozen.rm, cfg, rows, beta, config)
    )
    history = []
    for it in range(iterations):
        rng = _rng(seed, _PPO, it)
        _, _, rows, true = rollout(
            task, cfg, state.params["policy"], config.rollout_batch, config.temperature, _key(seed, _PPO, it), rng
        )
        scored = score(state.params, rows, state.kl_coef)
        ptx = None
        if config.ptx_coef:
            batches = [pretraining_batch(task, ptx_rows, rng) for _ in range(config.epochs * config.minibatches)]
            ptx = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
        beta = float(state.kl_coef)
        state, metrics = update(state, scored, ptx, jax.random.fold_in(_key(seed, _PPO, it), 1))
        kl = float(scored["kl"].mean())
        state = state.replace(kl_coef=jnp.float32(ppo.adapt_kl_coef(beta, kl, config)))
        history.append(
            {
                "rm_score": float(scored["score"].mean()),
                "true_reward": float(true.mean()),
                "kl": kl,
                "rollout_entropy": float(scored["entropy"].mean()),
                "explained_variance": float(scored["explained_variance"]),
                "kl_coef": beta,
                **{name: float(value) for name, value in metrics.items()},
            }
        )
    return state, history


def evaluate(
    task: ToyTask, frozen: Policy, policy_params: Any, n: int, seed: int, temperature: float = 1.0
) -> dict[str, float]:
    """On n held-out prompts: mean r*, its standard deviation, mean RM score, mean KL to SFT (nats/sequence)."""
    cfg = frozen.cfg
    _, _, rows, true = rollout(task, cfg, policy_params, n, temperature, _key(seed, _EVAL), _rng(seed, _EVAL))
    batch = lm_batch(rows["tokens"], rows["prompt_len"], rows["total_len"])
    logp, _ = token_logprobs(policy_params, cfg, batch, temperature)
    logp_ref, _ = token_logprobs(frozen.sft, cfg, batch, temperature)
    kl = ((logp - logp_ref) * batch["loss_mask"]).sum(1)
    rm = reward.scores(frozen.rm, cfg, rows["tokens"], rows["total_len"])
    return {
        "true_reward": float(true.mean()),
        "true_std": float(true.std()),
        "rm_score": float(rm.mean()),
        "kl": float(kl.mean()),
    }


def pretraining_loss(task: ToyTask, params: Any, cfg: ModelConfig, rows: int, seed: int) -> float:
    """Mean per-token LM loss on a fixed held-out batch of the pretraining language."""
    batch = pretraining_batch(task, rows, _rng(seed, _EVAL, 1))
    logp, _ = token_logprobs(params, cfg, batch)
    return float(-(logp * batch["loss_mask"]).sum() / batch["loss_mask"].sum())


def best_of_n(task: ToyTask, frozen: Policy, n_prompts: int, ns: tuple[int, ...], seed: int) -> list[dict[str, float]]:
    """The baseline: n SFT samples per held-out prompt, the RM's favourite kept; its KL to SFT is the
    analytic log n − (n − 1)/n. One draw of max(ns) samples serves every n (the first n of each prompt)."""
    cfg, most = frozen.cfg, max(ns)
    prompts = task.prompts(n_prompts, _rng(seed, _EVAL, 2))
    repeated = np.repeat(prompts, most, axis=0)
    responses = ppo.sample_responses(frozen.sft, cfg, repeated, task.max_response + 1, END, 1.0, _key(seed, _EVAL, 2))
    packed = pack(repeated, responses, task.seq_len)
    rm = np.asarray(reward.scores(frozen.rm, cfg, jnp.asarray(packed["tokens"]), jnp.asarray(packed["total_len"])))
    true = np.array([task.true_reward(p, r) for p, r in zip(repeated, responses)], np.float32)
    rm, true = rm.reshape(n_prompts, most), true.reshape(n_prompts, most)
    out = []
    for n in ns:
        pick = np.argmax(rm[:, :n], axis=1)
        rows = np.arange(n_prompts)
        out.append(
            {
                "n": n,
                "kl": math.log(n) - (n - 1) / n,
                "true_reward": float(true[rows, pick].mean()),
                "rm_score": float(rm[rows, pick].mean()),
            }
        )
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties broken by order, fine for continuous scores)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclasses.dataclass(frozen=True)
class ToyExperiment:
    """Sizes of the end-to-end toy run (gptjax align toy, bench/rlhf_toy.py)."""

    d_model: int = 32
    n_layer: int = 2
    pretrain_steps: int = 100
    sft_steps: int = 100
    rm_steps: int = 150
    rm_prompts: int = 256
    k: int = 4
    held_out_prompts: int = 256
    ppo_iterations: int = 10
    ppo_learning_rate: float = 1e-3
    ptx_coef: float = 1.0  # the paper's 27.8 is for its loss scale; the toy's pretraining loss is per token
    seed: int = 0


def run_toy(task: ToyTask, exp: ToyExperiment, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every stage and every figure of the issue's evidence list, as one JSON-able dict."""
    cfg = task.model_config(n_ctx=16, d_model=exp.d_model, n_layer=exp.n_layer)
    out: dict[str, Any] = {"task": dataclasses.asdict(task), "experiment": dataclasses.asdict(exp)}
    base, losses = pretrain(task, stage_run(cfg, exp.pretrain_steps, 32, 3e-3, exp.seed))
    out["pretrain_loss"] = [losses[0], losses[-1]]
    sft_params, losses = sft(task, stage_run(cfg, exp.sft_steps, 32, 1e-3, exp.seed), base)
    out["sft_loss"] = [losses[0], losses[-1]]
    log(f"pretrain loss {out['pretrain_loss']}, SFT loss {out['sft_loss']}")

    prompts = task.prompts(exp.rm_prompts + exp.held_out_prompts, _rng(exp.seed, _RM))
    data = comparisons(task, sft_params, cfg, prompts, exp.k, _key(exp.seed, _RM), _rng(exp.seed, _RM, 1))
    fit_part = {key: v[: exp.rm_prompts] for key, v in data.items()}
    held = {key: v[exp.rm_prompts :] for key, v in data.items()}
    reference = {key: jnp.asarray(fit_part[key][:, 0]) for key in ("tokens", "total_len")}
    rm, losses = train_reward_model(
        task, stage_run(cfg, exp.rm_steps, 16, 1e-3, exp.seed), sft_params, fit_part, reference
    )
    flat = held["tokens"].reshape(-1, task.seq_len)
    scores = np.asarray(reward.scores(rm, cfg, jnp.asarray(flat), jnp.asarray(held["total_len"].reshape(-1))))
    accuracy = reward.pairwise_accuracy(scores.reshape(-1, exp.k), held["ranks"])
    bayes = task.bayes_pairwise_accuracy(held["true"])
    out["rm"] = {
        "loss": [losses[0], losses[-1]],
        "held_out_pairwise_accuracy": accuracy,
        "bayes_accuracy": bayes,
        "accuracy_over_bayes": accuracy / bayes,
        "spearman_with_true_reward": spearman(scores, held["true"].reshape(-1)),
    }
    log(f"RM {out['rm']}")

    frozen = Policy(cfg, sft_params, rm)
    n_eval = exp.held_out_prompts
    out["sft"] = evaluate(task, frozen, sft_params, n_eval, exp.seed) | {
        "pretraining_loss": pretraining_loss(task, sft_params, cfg, 64, exp.seed)
    }
    out["best_of_n"] = best_of_n(task, frozen, n_eval, (1, 2, 4, 8, 16), exp.seed)
    log(f"SFT {out['sft']}\nbest-of-n {out['best_of_n']}")
    base_config = ppo.PPOConfig(learning_rate=exp.ppo_learning_rate, epochs=2, ptx_coef=0.0)
    variants = {
        "ppo": base_config,
        "ppo_ptx": dataclasses.replace(base_config, ptx_coef=exp.ptx_coef),
        "ppo_beta0": dataclasses.replace(base_config, kl_coef=0.0),
    }
    for name, config in variants.items():
        state, history = run_ppo(task, frozen, config, exp.ppo_iterations, exp.seed)
        policy = state.params["policy"]
        out[name] = {
            "config": dataclasses.asdict(config),
            "history": history,
            "held_out": evaluate(task, frozen, policy, n_eval, exp.seed)
            | {"pretraining_loss": pretraining_loss(task, policy, cfg, 64, exp.seed)},
        }
        log(f"{name} {out[name]['held_out']}")
    return out
