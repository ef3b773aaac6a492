"""Training: the train state, the one jitted (sharded, donated) train step, and a loop that runs hooks.

The loop body only fetches the step's batch and calls the step; logging, held-out loss, checkpoints,
preemption and the non-finite guard are hooks (gptjax/hooks.py) so they can be added or removed freely.
Determinism: the batch at step k is a pure function of (data seed, k) and every random draw is derived
from (seed, purpose, step), so a resumed run replays bit for bit what an uninterrupted run computes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from gptjax import model, sharding
from gptjax.config import ConfigError, RunConfig, dumps, from_dict, to_dict

log = logging.getLogger(__name__)
Batch = dict[str, jax.Array]

DONE_MARKER = "DONE"  # written into the run directory once `steps` steps are complete

# Purposes for key derivation: key(seed) -> fold_in(purpose) -> fold_in(step) -> fold_in(micro-batch).
_INIT, _DROPOUT = 0, 1


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 key data of key(seed); per-step keys are derived from it and the step


def learning_rate_schedule(run: RunConfig) -> optax.Schedule:
    """Linear warm-up from 0, then cosine decay to min_lr_ratio * peak (and constant after)."""
    o = run.optim
    decay_steps = o.decay_steps or run.steps
    if o.warmup_steps >= decay_steps:
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps} must be < the decay length {decay_steps} "
                          "(optim.decay_steps, or steps when it is 0)")
    return optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, o.warmup_steps, decay_steps,
                                              end_value=o.learning_rate * o.min_lr_ratio)


def weight_decay_mask(params: Any, run: RunConfig) -> Any:
    """GPT-3 decays weight matrices only: not biases, LayerNorm, or (by default) the embeddings."""
    def decays(path: tuple[Any, ...], leaf: Any) -> bool:
        name = getattr(path[-1], "key", str(path[-1]))
        if name in ("wte", "wpe"):
            return run.optim.decay_embeddings
        is_matrix = (leaf.ndim >= 2 and name.endswith("kernel")) or name == "lm_head"
        return is_matrix or run.optim.decay_biases_and_norms
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(run: RunConfig) -> optax.GradientTransformation:
    o = run.optim
    return optax.chain(
        optax.clip_by_global_norm(o.grad_clip),
        optax.adamw(learning_rate_schedule(run), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                    mask=lambda p: weight_decay_mask(p, run)),
    )


def token_loss_sums(params: Any, batch: Batch, run: RunConfig, dropout_rng: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """(sum of fp32 token cross-entropies, number of loss tokens) for one (micro-)batch."""
    logits = model.forward(params, batch["inputs"], run.model, segment_ids=batch["segment_ids"],
                           positions=batch["positions"], dropout_rng=dropout_rng)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["loss_mask"].astype(jnp.float32)
    return (losses * mask).sum(), mask.sum()


def _uses_dropout(run: RunConfig) -> bool:
    m = run.model
    return max(m.embd_dropout, m.attn_dropout, m.resid_dropout) > 0


def make_train_step(run: RunConfig, tx: optax.GradientTransformation) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    schedule = learning_rate_schedule(run)
    n_micro = run.micro_batches

    def split_micro(x: jax.Array) -> jax.Array:
        # Micro-batch m takes rows m, m+M, m+2M, ...: every device's shard feeds every micro-batch.
        return x.reshape(x.shape[0] // n_micro, n_micro, *x.shape[1:]).swapaxes(0, 1)

    def step_fn(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.rng), _DROPOUT), state.step)
        # Gradients of the summed token loss; dividing by the total token count afterwards makes
        # accumulation over micro-batches exactly the full-batch gradient.
        grad_fn = jax.value_and_grad(lambda p, mb, k: token_loss_sums(p, mb, run, k), has_aux=True)

        def micro(carry: tuple[Any, jax.Array, jax.Array], xs: tuple[Batch, jax.Array]):
            grads, loss_sum, count = carry
            mb, m = xs
            key = jax.random.fold_in(step_key, m) if _uses_dropout(run) else None
            (l, c), g = grad_fn(state.params, mb, key)
            return (jax.tree.map(jnp.add, grads, g), loss_sum + l, count + c), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        micro_batches = jax.tree.map(split_micro, batch)
        (grads, loss_sum, count), _ = jax.lax.scan(micro, (zeros, 0.0, 0.0), (micro_batches, jnp.arange(n_micro)))
        count = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        loss = loss_sum / count
        grad_norm = optax.tree.norm(grads)
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # A non-finite update is never applied, whatever on_nonfinite says: the run either stops (error)
        # or moves on to the next batch (skip), and every checkpoint holds finite parameters.
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = TrainState(step=state.step + 1, params=keep(new_params, state.params),
                               opt_state=keep(new_opt_state, state.opt_state), rng=state.rng)
        metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
                   "loss_tokens": count, "finite": finite}
        return new_state, metrics

    return step_fn


def make_eval_step(run: RunConfig) -> Callable[[Any, Batch], tuple[jax.Array, jax.Array]]:
    return lambda params, batch: token_loss_sums(params, batch, run, None)


def init_state(run: RunConfig, tx: optax.GradientTransformation, rng: jax.Array,
               params: Any | None = None) -> TrainState:
    """A fresh train state (new parameters unless `params` are given, e.g. imported weights)."""
    if params is None:
        params = model.init_params(run.model, jax.random.fold_in(jax.random.wrap_key_data(rng), _INIT))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)


def abstract_state(run: RunConfig, tx: optax.GradientTransformation) -> TrainState:
    return jax.eval_shape(lambda: init_state(run, tx, jax.random.key_data(jax.random.key(run.seed))))


def state_shardings(run: RunConfig, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh) -> TrainState:
    """NamedShardings for the whole train state: optimizer moments follow their parameters' logical axes."""
    abstract = abstract_state(run, tx)
    param_specs = model.logical_axes(run.model)
    opt_specs = optax.tree_map_params(tx, lambda _, spec: spec, abstract.opt_state, param_specs,
                                      transform_non_params=lambda _: PartitionSpec(),
                                      is_leaf=lambda x: isinstance(x, PartitionSpec))
    specs = TrainState(step=PartitionSpec(), params=param_specs, opt_state=opt_specs, rng=PartitionSpec())
    return sharding.shardings_for(specs, abstract, mesh, run.mesh.rules)


def restore_target(run: RunConfig, tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
    """Abstract arrays carrying the *current* mesh's shardings: orbax reshards onto them on restore."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state(run, tx), shardings)


def init_sharded_state(run: RunConfig, tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
    """A fresh state created directly in its shardings (never whole on one device), seeded by `run.seed`."""
    rng = jax.random.key_data(jax.random.key(run.seed))
    return jax.jit(lambda r: init_state(run, tx, r), out_shardings=shardings)(rng)


def jit_train_step(run: RunConfig, tx: optax.GradientTransformation, state_shardings: TrainState,
                   batch_sharding: NamedSharding) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """The train step as it runs: one jit over the mesh, the state donated, metrics replicated."""
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(make_train_step(run, tx), in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))


class Hook(Protocol):
    def on_start(self, trainer: "Trainer") -> None: ...
    def on_step(self, trainer: "Trainer", step: int, metrics: dict[str, jax.Array]) -> None: ...
    def on_end(self, trainer: "Trainer") -> None: ...


class Trainer:
    """Builds mesh, shardings, the jitted step and the (initialised or restored) state for one run."""

    def __init__(self, run: RunConfig, hooks: list[Hook] | None = None,
                 devices: list[jax.Device] | None = None) -> None:
        from gptjax.checkpoint import Checkpointer
        from gptjax.data import make_dataset

        self.run_dir = Path(run.run_dir)
        self.run = _reconcile_with_saved_config(run, self.run_dir)
        run = self.run
        self.mesh = sharding.make_mesh(run.mesh, devices)
        self.rules = run.mesh.rules
        self.tx = make_optimizer(run)
        self.seq_len = run.sequence_length
        self.dataset = make_dataset(run.data, self.seq_len, self._data_cache_dir())
        if self.dataset.vocab.vocab_size > run.model.vocab_size:
            raise ConfigError(f"data vocabulary {run.data.vocab!r} has {self.dataset.vocab.vocab_size} ids but "
                              f"model.vocab_size={run.model.vocab_size}")
        self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules)
        self.local_rows = sharding.process_rows(self.batch_sharding, run.batch_size)
        dp = sharding.data_parallel_size(self.batch_sharding)
        if (run.batch_size // run.micro_batches) % dp:
            raise ConfigError(f"micro-batch size {run.batch_size // run.micro_batches} (batch_size={run.batch_size} "
                              f"/ micro_batches={run.micro_batches}) is not divisible by the data-parallel size {dp}")
        self.state_shardings = self._state_shardings()
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.step_fn = jit_train_step(run, self.tx, self.state_shardings, self.batch_sharding)
        self.eval_fn = jax.jit(make_eval_step(run), in_shardings=(self.state_shardings.params, self.batch_sharding),
                               out_shardings=(replicated, replicated))
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", keep=run.keep_checkpoints)
        self.hooks = list(hooks or [])
        self.stop_requested = False
        self.state = self._restore_or_init()

    # -- set-up ------------------------------------------------------------------------------------------

    def _data_cache_dir(self) -> Path:
        return Path(self.run.data.cache_dir) if self.run.data.cache_dir else self.run_dir.parent / ".data_cache"

    def _state_shardings(self) -> TrainState:
        return state_shardings(self.run, self.tx, self.mesh)

    def _restore_or_init(self) -> TrainState:
        latest = self.checkpointer.latest_step()
        if latest is not None:
            log.info("resuming from %s at step %d", self.checkpointer.directory, latest)
            return self.checkpointer.restore(latest, restore_target(self.run, self.tx, self.state_shardings))
        with jax.set_mesh(self.mesh):
            return init_sharded_state(self.run, self.tx, self.state_shardings)

    # -- batches -----------------------------------------------------------------------------------------

    def global_batch(self, step: int) -> Batch:
        local = self.dataset.batch(step, self.run.batch_size, rows=self.local_rows)
        return sharding.global_batch_from_local(local, self.batch_sharding, self.run.batch_size)

    def held_out_loss(self, split: str = "validation") -> float:
        """Mean per-token loss over the first `eval_batches` validation batches (fixed order)."""
        total, count = 0.0, 0.0
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(flax_rules(self.rules)):
            for batch in self.dataset.eval_batches(self.run.batch_size, self.run.eval_batches, split=split):
                local = {k: v[self.local_rows] for k, v in batch.items()}
                s, c = self.eval_fn(self.state.params,
                                    sharding.global_batch_from_local(local, self.batch_sharding, self.run.batch_size))
                total, count = total + float(s), count + float(c)
        return total / max(count, 1.0)

    # -- the loop ----------------------------------------------------------------------------------------

    @property
    def step(self) -> int:
        return int(jax.device_get(self.state.step))

    def request_stop(self) -> None:
        self.stop_requested = True

    def train(self) -> TrainState:
        if jax.process_index() == 0:
            (self.run_dir / DONE_MARKER).unlink(missing_ok=True)  # a run extended with more steps is not done
        for hook in self.hooks:
            hook.on_start(self)
        try:
            with jax.set_mesh(self.mesh), nn.logical_axis_rules(flax_rules(self.rules)):
                for step in range(self.step, self.run.steps):
                    self.state, metrics = self.step_fn(self.state, self.global_batch(step))
                    for hook in self.hooks:
                        hook.on_step(self, step + 1, metrics)
                    if self.stop_requested:
                        break
            for hook in reversed(self.hooks):  # unwind like nested contexts: savers before sinks close
                hook.on_end(self)
        finally:
            self.checkpointer.wait()  # an error never abandons a save that is already in flight
        if self.step >= self.run.steps and jax.process_index() == 0:
            (self.run_dir / DONE_MARKER).touch()  # tpu_scripts/resume_loop.sh stops relaunching
        return self.state


def flax_rules(rules: tuple[tuple[str, tuple[str, ...]], ...]) -> list[tuple[str, Any]]:
    return [(name, axes if axes else None) for name, axes in rules]


# Keys a restarted run may change without invalidating its checkpoints.
_RESUMABLE_CHANGES = {"steps", "log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
                      "peak_flops_per_device", "mesh", "eval_tasks", "eval_tasks_every", "eval_shots", "eval_limit"}


def _reconcile_with_saved_config(run: RunConfig, run_dir: Path) -> RunConfig:
    """Write config.json for a new run; for an existing one, refuse changes that would break resume."""
    path = run_dir / "config.json"
    if path.exists():
        saved = from_dict(RunConfig, json.loads(path.read_text()))
        saved_d, new_d = to_dict(saved), to_dict(dataclasses.replace(run, run_dir=saved.run_dir))
        changed = sorted(k for k in new_d if new_d[k] != saved_d[k] and k not in _RESUMABLE_CHANGES)
        if changed:
            detail = "; ".join(f"{k}: saved {saved_d[k]!r} vs now {new_d[k]!r}" for k in changed)
            raise ConfigError(f"{path} describes a different run ({detail}); use a new run_dir")
    if jax.process_index() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(dumps(run))
        tmp.replace(path)
    return run

