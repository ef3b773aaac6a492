"""The toy InstructGPT pipeline's building blocks: pretrain → SFT → reward model → PPO(-ptx), each stage
measured against the task's hidden reward r* (gptjax.rlhf.toy); gptjax.rlhf.stages runs them in run dirs.

Pretraining, SFT and the RM run pre-training's Trainer with their own `Objective` (SFT: the LM loss, whose
batch masks prompt tokens; RM: the ranking loss on a scalar-head tree) and a `ToyData` dataset, so the
sharded step, accumulation, clipping, the schedule, the non-finite guard, checkpoints and resume are
pre-training's. PPO has its own loop (`PPORun`, over gptjax.rlhf.ppo's update) because a rollout is scored
before it is trained on; it writes the same metrics and checkpoints. Every draw derives from (seed, stage,
step), so a stage replays exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax import config, sharding, train
from gptjax import metrics as metrics_lib
from gptjax.checkpoint import Checkpointer
from gptjax.config import ModelConfig, OptimConfig, RunConfig
from gptjax.hooks import add_standard_hooks
from gptjax.rlhf import ppo, reward
from gptjax.rlhf.sequences import Batch, init_scalar_head, lm_batch, scalar_head_axes, token_logprobs
from gptjax.rlhf.toy import END, ToyTask, pack
from gptjax.rundir import RunDir
from gptjax.sharding import MeshConfig

Arrays = dict[str, np.ndarray]
# Jitted once for every caller (cfg and the temperature are static).
_logprobs = jax.jit(token_logprobs, static_argnums=(1, 3))
_scores = jax.jit(reward.scores, static_argnums=1)

# Stage ids for key derivation: key(seed) -> fold_in(stage) -> fold_in(step).
_PRETRAIN, _SFT, _RM, _PPO, _EVAL = range(5)


def _rng(seed: int, stage: int, *steps: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage, *(steps or (0,))])


def _key(seed: int, stage: int, step: int = 0) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stage), step)


def stage_run(
    cfg: ModelConfig, steps: int, batch_size: int, learning_rate: float, seed: int = 0, run_dir: str = "runs/align"
) -> RunConfig:
    """The RunConfig of one supervised stage: cosine decay with a short warm-up, as pre-training; every step
    logged, a checkpoint every 50 steps."""
    optim = OptimConfig(learning_rate=learning_rate, warmup_steps=max(1, steps // 20), weight_decay=0.0)
    run = RunConfig(model=cfg, optim=optim, steps=steps, batch_size=batch_size, seed=seed, run_dir=run_dir)
    return config.override(
        run, ["logging.every=1", "checkpoint.every=50", "held_out.every=1000000", "held_out.batches=2"]
    )


@dataclasses.dataclass(frozen=True)
class _Vocab:
    vocab_size: int


class ToyData:
    """A stage's batches in the Trainer's dataset interface: `batch_at(step, rows)` and `held_out_at(b, rows)`
    are pure functions of their arguments (numpy arrays), so a resumed stage replays an uninterrupted one."""

    def __init__(
        self, batch_at: Callable[[int, int], Arrays], held_out_at: Callable[[int, int], Arrays], vocab_size: int
    ):
        self.batch_at, self.held_out_at, self.vocab = batch_at, held_out_at, _Vocab(vocab_size)

    def batch(self, step: int, batch_size: int, rows: Any = None) -> Arrays:
        full = self.batch_at(step, batch_size)
        return full if rows is None else {k: v[np.asarray(rows)] for k, v in full.items()}

    def eval_batches(self, batch_size: int, max_batches: int, split: str = "validation") -> Iterator[Arrays]:
        for b in range(max_batches):
            yield self.held_out_at(b, batch_size)


def train_stage(run: RunConfig, objective: train.Objective, data: ToyData) -> Any:
    """Train (or resume) a supervised stage with pre-training's Trainer and standard hooks (metrics.jsonl,
    checkpoints, heartbeat) in `run.run_dir`; returns the final parameters."""
    trainer = train.Trainer(run, data, objective=objective)
    trainer.restore_or_init()
    add_standard_hooks(trainer, progress=False)
    trainer.train()
    trainer.checkpointer.close()
    return trainer.current_state().params


def stage_losses(run_dir: RunDir) -> list[float]:
    """The training loss of every logged step of a stage, from its metrics.jsonl."""
    return [r["loss"] for r in metrics_lib.read_metrics(run_dir.metrics_file) if "loss" in r]


def _numpy(batch: Batch) -> Arrays:
    return {k: np.asarray(v) for k, v in batch.items()}


# -- stages --------------------------------------------------------------------------------------------------


def pretraining_batch(task: ToyTask, rows: int, rng: np.random.Generator) -> Batch:
    """LM rows of the toy pretraining language (progressions), loss on every token."""
    tokens = jnp.asarray(task.pretraining(rows, task.seq_len, rng))
    n = jnp.full((rows,), task.seq_len, jnp.int32)
    return lm_batch(tokens, jnp.ones_like(n), n)


def pretrain(task: ToyTask, run: RunConfig) -> Any:
    """Pre-train a fresh model on the toy pretraining language."""
    data = ToyData(
        lambda step, rows: _numpy(pretraining_batch(task, rows, _rng(run.seed, _PRETRAIN, step))),
        lambda b, rows: _numpy(pretraining_batch(task, rows, _rng(run.seed, _EVAL, _PRETRAIN, b))),
        task.vocab_size,
    )
    return train_stage(run, train.lm_objective(run), data)


def demonstration_batch(task: ToyTask, rows: int, rng: np.random.Generator) -> Batch:
    prompts = task.prompts(rows, rng)
    packed = {k: jnp.asarray(v) for k, v in pack(prompts, task.demonstrations(prompts, rng), task.seq_len).items()}
    return lm_batch(packed["tokens"], packed["prompt_len"], packed["total_len"])


def sft(task: ToyTask, run: RunConfig, params: Any) -> Any:
    """Fine-tune `params` on demonstrations; the loss mask of `lm_batch` covers response tokens only."""
    data = ToyData(
        lambda step, rows: _numpy(demonstration_batch(task, rows, _rng(run.seed, _SFT, step))),
        lambda b, rows: _numpy(demonstration_batch(task, rows, _rng(run.seed, _EVAL, _SFT, b))),
        task.vocab_size,
    )
    return train_stage(run, dataclasses.replace(train.lm_objective(run), init_params=lambda key: params), data)


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


def comparison_data(
    task: ToyTask, sft_params: Any, cfg: ModelConfig, n_fit: int, n_held: int, k: int, seed: int
) -> tuple[Arrays, Arrays]:
    """(training, held-out) comparisons of n_fit and n_held fresh prompts, K SFT samples each."""
    prompts = task.prompts(n_fit + n_held, _rng(seed, _RM))
    data = comparisons(task, sft_params, cfg, prompts, k, _key(seed, _RM), _rng(seed, _RM, 1))
    return {key: v[:n_fit] for key, v in data.items()}, {key: v[n_fit:] for key, v in data.items()}


def rm_figures(task: ToyTask, rm: Any, cfg: ModelConfig, held: Arrays) -> dict[str, float]:
    """Held-out pairwise accuracy (against the Bradley–Terry draws), the Bayes-optimal accuracy from τ and
    the Spearman correlation of the RM's scores with r*."""
    flat = held["tokens"].reshape(-1, task.seq_len)
    scores = np.asarray(_scores(rm, cfg, jnp.asarray(flat), jnp.asarray(held["total_len"].reshape(-1))))
    accuracy = reward.pairwise_accuracy(scores.reshape(held["ranks"].shape), held["ranks"])
    bayes = task.bayes_pairwise_accuracy(held["true"])
    return {
        "held_out_pairwise_accuracy": accuracy,
        "bayes_accuracy": bayes,
        "accuracy_over_bayes": accuracy / bayes,
        "spearman_with_true_reward": spearman(scores, held["true"].reshape(-1)),
    }


def reward_objective(cfg: ModelConfig, sft_params: Any) -> train.Objective:
    def loss_fn(params: Any, batch: Batch, rng: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
        total, count = reward.loss_sums(params, batch, cfg)
        return total, {"count": count}

    return train.Objective(
        loss_fn,
        lambda key: init_scalar_head(sft_params, cfg),
        lambda: scalar_head_axes(cfg),
        train.model_uses_dropout(cfg),
    )


def train_reward_model(run: RunConfig, sft_params: Any, data: Arrays, held: Arrays) -> Any:
    """Fit the RM on the comparisons `data` (cycled in fixed-order batches; `held` for held-out loss)."""

    def cycled(part: Arrays, i: int, rows: int) -> Arrays:
        idx = (np.arange(rows) + i * rows) % len(part["ranks"])
        return {key: part[key][idx] for key in ("tokens", "total_len", "ranks")}

    toy = ToyData(lambda i, rows: cycled(data, i, rows), lambda b, rows: cycled(held, b, rows), run.model.vocab_size)
    return train_stage(run, reward_objective(run.model, sft_params), toy)


def reference_shift(rm: Any, cfg: ModelConfig, data: Arrays) -> float:
    """The mean score of the reference responses (each training prompt's first sample): the bias `center`
    subtracts so that they score 0 on average."""
    return float(_scores(rm, cfg, jnp.asarray(data["tokens"][:, 0]), jnp.asarray(data["total_len"][:, 0])).mean())


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


class PPORun:
    """PPO iterations from the SFT policy and an RM-initialised value net against the frozen `Policy`.

    The state is sharded over `mesh` (one device when None) as pre-training's is; with a `run_dir` the
    iterations' metrics go to its metrics.jsonl and checkpoints to checkpoints/<iteration>, and a new
    PPORun on the same directory resumes the latest one bit for bit (every draw derives from the seed, the
    stage and the iteration; β is part of the state)."""

    def __init__(
        self,
        task: ToyTask,
        frozen: Policy,
        config: ppo.PPOConfig,
        seed: int = 0,
        ptx_rows: int = 16,
        mesh: MeshConfig | None = None,
        run_dir: str | None = None,
        devices: list[jax.Device] | None = None,
    ) -> None:
        self.task, self.frozen, self.config, self.seed, self.ptx_rows = task, frozen, config, seed, ptx_rows
        cfg = frozen.cfg
        if mesh is None:  # one device
            mesh, devices = MeshConfig(data=1), (devices or jax.devices())[:1]
        self.mesh, self.rules = sharding.make_mesh(mesh, devices), mesh.rules
        self.shardings = ppo.state_shardings(cfg, config, self.mesh, self.rules)
        self.update = ppo.jit_update(cfg, config, self.mesh, self.rules)
        self.row_sharding, self.ptx_sharding = ppo.input_shardings(self.mesh, self.rules)
        with self.activated():
            self.frozen = Policy(
                cfg,
                jax.device_put(frozen.sft, self.shardings.params["policy"]),
                jax.device_put(frozen.rm, self.shardings.params["value"]),
            )
        self.run_dir = RunDir(run_dir) if run_dir else None
        self.checkpointer = Checkpointer(self.run_dir.checkpoints_dir) if self.run_dir else None
        self.state: ppo.PPOState | None = None

    @contextlib.contextmanager
    def activated(self) -> Iterator[None]:
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.flax_rules(self.rules)):
            yield

    def restore_or_init(self) -> int:
        latest = self.checkpointer.latest_step() if self.checkpointer else None
        if latest is not None:
            target = jax.tree.map(
                lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                ppo.abstract_state(self.frozen.cfg, self.config),
                self.shardings,
            )
            self.state = self.checkpointer.restore(latest, target)  # type: ignore[union-attr]
        else:
            init = lambda sft, rm: ppo.init_state(sft, rm, self.config, self.seed)  # noqa: E731
            with self.activated():
                self.state = jax.jit(init, out_shardings=self.shardings)(self.frozen.sft, self.frozen.rm)
        return self.step

    @property
    def step(self) -> int:
        return int(jax.device_get(self.current_state().step))

    def current_state(self) -> ppo.PPOState:
        if self.state is None:
            raise RuntimeError("call restore_or_init() first")
        return self.state

    def iteration(self) -> dict[str, float]:
        """One rollout (fresh prompts), its scoring and the update; the adaptive controller moves β."""
        state, config, cfg = self.current_state(), self.config, self.frozen.cfg
        it = self.step
        rng = _rng(self.seed, _PPO, it)
        with self.activated():
            _, _, rows, true = rollout(
                self.task, cfg, state.params["policy"], config.rollout_batch, config.temperature, state.key(_PPO), rng
            )
            scored = ppo.score_rollout(state.params, self.frozen.sft, self.frozen.rm, cfg, rows, state.kl_coef, config)
            ptx = None
            if config.ptx_coef:
                batches = [
                    pretraining_batch(self.task, self.ptx_rows, rng) for _ in range(config.epochs * config.minibatches)
                ]
                ptx = jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *batches), self.ptx_sharding)
            beta = float(state.kl_coef)
            update_key = jax.random.fold_in(state.key(_PPO), 1)
            inputs = jax.device_put({k: scored[k] for k in ppo.UPDATE_KEYS}, self.row_sharding)
            state, metrics = self.update(state, inputs, ptx, update_key)
        kl = float(scored["kl"].mean())
        self.state = state.replace(kl_coef=jnp.float32(ppo.adapt_kl_coef(beta, kl, config)))
        return {
            "rm_score": float(scored["score"].mean()),
            "true_reward": float(true.mean()),
            "kl": kl,
            "rollout_entropy": float(scored["entropy"].mean()),
            "explained_variance": float(scored["explained_variance"]),
            "kl_coef": beta,
            **{name: float(value) for name, value in metrics.items()},
        }

    def run(self, iterations: int, checkpoint_every: int = 10) -> list[dict[str, float]]:
        """Iterate (from the restored step) up to `iterations`; the history of the iterations run here."""
        start = self.restore_or_init() if self.state is None else self.step
        sinks = metrics_lib.open_sinks(self.run_dir, iterations, start, progress=False) if self.run_dir else None
        history = []
        try:
            for it in range(start, iterations):
                history.append(self.iteration())
                if sinks is not None:
                    sinks.write(it + 1, history[-1])
                if self.checkpointer and ((it + 1) % checkpoint_every == 0 or it + 1 == iterations):
                    self.checkpointer.save(it + 1, self.state)
        finally:
            if sinks is not None:
                sinks.close()
            if self.checkpointer:
                self.checkpointer.wait()
        return history

    def close(self) -> None:
        if self.checkpointer:
            self.checkpointer.close()


def evaluate(
    task: ToyTask, frozen: Policy, policy_params: Any, n: int, seed: int, temperature: float = 1.0
) -> dict[str, float]:
    """On n held-out prompts: mean r*, its standard deviation, mean RM score, mean KL to SFT (nats/sequence)."""
    cfg = frozen.cfg
    _, _, rows, true = rollout(task, cfg, policy_params, n, temperature, _key(seed, _EVAL), _rng(seed, _EVAL))
    batch = lm_batch(rows["tokens"], rows["prompt_len"], rows["total_len"])
    logp, _ = _logprobs(policy_params, cfg, batch, temperature)
    logp_ref, _ = _logprobs(frozen.sft, cfg, batch, temperature)
    kl = ((logp - logp_ref) * batch["loss_mask"]).sum(1)
    rm = _scores(frozen.rm, cfg, rows["tokens"], rows["total_len"])
    return {
        "true_reward": float(true.mean()),
        "true_std": float(true.std()),
        "rm_score": float(rm.mean()),
        "kl": float(kl.mean()),
    }


def pretraining_loss(task: ToyTask, params: Any, cfg: ModelConfig, rows: int, seed: int) -> float:
    """Mean per-token LM loss on a fixed held-out batch of the pretraining language."""
    batch = pretraining_batch(task, rows, _rng(seed, _EVAL, 1))
    logp, _ = _logprobs(params, cfg, batch, 1.0)
    return float(-(logp * batch["loss_mask"]).sum() / batch["loss_mask"].sum())


def best_of_n(task: ToyTask, frozen: Policy, n_prompts: int, ns: tuple[int, ...], seed: int) -> list[dict[str, float]]:
    """The baseline: n SFT samples per held-out prompt, the RM's favourite kept; its KL to SFT is the
    analytic log n − (n − 1)/n. One draw of max(ns) samples serves every n (the first n of each prompt)."""
    cfg, most = frozen.cfg, max(ns)
    prompts = task.prompts(n_prompts, _rng(seed, _EVAL, 2))
    repeated = np.repeat(prompts, most, axis=0)
    responses = ppo.sample_responses(frozen.sft, cfg, repeated, task.max_response + 1, END, 1.0, _key(seed, _EVAL, 2))
    packed = pack(repeated, responses, task.seq_len)
    rm = np.asarray(_scores(frozen.rm, cfg, jnp.asarray(packed["tokens"]), jnp.asarray(packed["total_len"])))
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
