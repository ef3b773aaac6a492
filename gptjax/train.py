"""Training: the train state, the one jitted (sharded, donated) train step, and the loop.

The trainer owns *when* things happen: it runs the step, decides when the run stops (its last step, a
SIGTERM, or a multi-host preemption notice), refuses to go on after a non-finite step, and calls each hook
on the schedule it was added with (`add_hook(hook, every=N)`, plus a forced call at the final step).
Hooks (gptjax/hooks.py; eval/hook.py offers one for few-shot evaluation) each do one thing: log, evaluate,
save. Determinism: the batch at step k is a pure function of (data seed, k) and every random draw is
derived from (seed, purpose, step), so a resumed run replays bit for bit what an uninterrupted run computes.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from collections.abc import Callable, Iterator, Set
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from gptjax import model, sharding
from gptjax.checkpoint import Checkpointer
from gptjax.config import ModelConfig, RunConfig
from gptjax.data import make_dataset
from gptjax.errors import ConfigError, GptjaxError
from gptjax.rundir import RunDir, as_path

log = logging.getLogger(__name__)
Batch = dict[str, jax.Array]

# Purposes for key derivation: key(seed) -> fold_in(purpose) -> fold_in(step) -> fold_in(micro-batch).
_INIT, _DROPOUT = 0, 1


class NonFiniteError(GptjaxError, FloatingPointError):
    """The loss or gradient norm of a step was not finite (the update was not applied)."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 key data of key(seed); per-step keys are derived from it and the step


def learning_rate_schedule(run: RunConfig) -> optax.Schedule:
    """Linear warm-up from 0, then cosine (or linear) decay to min_lr_ratio * peak at decay_steps (and
    constant after)."""
    o = run.optim
    end, total = o.learning_rate * o.min_lr_ratio, o.decay_steps or run.steps
    if o.schedule == "linear":
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps),
                optax.linear_schedule(o.learning_rate, end, max(total - o.warmup_steps, 1)),
            ],
            [o.warmup_steps],
        )
    return optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, o.warmup_steps, total, end_value=end)


def weight_decay_mask(params: Any, run: RunConfig) -> Any:
    """GPT-3 decays weight matrices only: not biases, LayerNorm, or (by default) the embeddings."""

    def decays(path: tuple[Any, ...], leaf: Any) -> bool:
        name = getattr(path[-1], "key", str(path[-1]))
        if name in ("wte", "wpe"):
            return run.optim.decay_embeddings
        is_matrix = (leaf.ndim >= 2 and name.endswith("kernel")) or name == "lm_head"
        return is_matrix or run.optim.decay_biases_and_norms

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(run: RunConfig, trainable: Callable[[Any], Any] | None = None) -> optax.GradientTransformation:
    """Clipped AdamW. With `trainable` (an Objective's: params -> a tree of booleans broadcasting to each
    leaf), the gradients and the updates of False entries are zeroed, so clipping sees only what trains
    and frozen parameters (or rows of one) stay bitwise unchanged, weight decay included."""
    o = run.optim
    adamw = optax.chain(
        optax.clip_by_global_norm(o.grad_clip),
        optax.adamw(
            learning_rate_schedule(run),
            b1=o.b1,
            b2=o.b2,
            eps=o.eps,
            weight_decay=o.weight_decay,
            mask=lambda p: weight_decay_mask(p, run),
        ),
    )
    if trainable is None:
        return adamw
    mask = lambda updates, params: jax.tree.map(  # noqa: E731
        lambda u, t: jnp.where(t, u, jnp.zeros((), u.dtype)), updates, trainable(params)
    )
    freeze = optax.stateless(mask)
    return optax.chain(freeze, adamw, freeze)


def _cross_entropy_sum(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    return (optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights).sum()


def chunked_cross_entropy_sum(
    features: jax.Array, embedding: jax.Array, targets: jax.Array, weights: jax.Array, chunk: int
) -> jax.Array:
    """The weighted sum of fp32 token cross-entropies of features [batch, length, d_model] under the LM head
    `embedding` [vocab, d_model], `chunk` positions of every row at a time: a scan whose body recomputes
    its logits in the backward pass, so no more than [batch, chunk, vocab] logits ever exist. Rows stay
    whole per chunk, so a batch-sharded input stays sharded."""
    batch, length = targets.shape
    split = lambda x: x.reshape(batch, length // chunk, chunk, *x.shape[2:]).swapaxes(0, 1)  # noqa: E731

    @jax.checkpoint
    def chunk_loss(x: jax.Array, y: jax.Array, w: jax.Array) -> jax.Array:
        return _cross_entropy_sum(model.project_to_vocab(x, embedding), y, w)

    def body(total: jax.Array, xs: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        return total + chunk_loss(*xs), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (split(features), split(targets), split(weights)))
    return total


def forward_batch(
    params: Any, cfg: ModelConfig, batch: Batch, dropout_rng: jax.Array | None, return_features: bool = False
) -> jax.Array:
    """`model.forward` on a packed batch's inputs, segments and positions (logits, or final features)."""
    return model.forward(
        params,
        batch["inputs"],
        cfg,
        segment_ids=batch["segment_ids"],
        positions=batch["positions"],
        dropout_rng=dropout_rng,
        return_features=return_features,
    )


def token_loss_sums(
    params: Any, batch: Batch, run: RunConfig, dropout_rng: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """(sum of fp32 token cross-entropies, number of loss tokens) for one (micro-)batch; with
    `model.loss_chunk`, the LM head and loss run over chunks of positions (the same sums)."""
    cfg = run.model
    outputs = forward_batch(params, cfg, batch, dropout_rng, return_features=bool(cfg.loss_chunk))
    mask = batch["loss_mask"].astype(jnp.float32)
    if cfg.loss_chunk:
        embedding = model.output_embedding(params, cfg)
        return chunked_cross_entropy_sum(outputs, embedding, batch["targets"], mask, cfg.loss_chunk), mask.sum()
    return _cross_entropy_sum(outputs, batch["targets"], mask), mask.sum()


def model_uses_dropout(m: ModelConfig) -> bool:
    return max(m.embd_dropout, m.attn_dropout, m.resid_dropout) > 0


LossFn = Callable[[Any, Batch, jax.Array | None], tuple[jax.Array, dict[str, jax.Array]]]
"""(params, micro-batch, dropout key or None) -> (summed loss, summed metrics). The metrics hold "count",
what the loss is a sum over (tokens, examples): the step divides the loss, the gradients and every other
metric by the count summed over all micro-batches, so accumulation equals the full-batch mean exactly."""


@dataclass(frozen=True)
class Objective:
    """What a run trains: its loss and its parameter tree (initialiser and logical axes, which shard it).
    Pre-training is `lm_objective`; fine-tuning (gptjax/finetune) adds a head and its own loss."""

    loss_fn: LossFn
    init_params: Callable[[jax.Array], Any]  # a PRNG key -> parameters
    logical_axes: Callable[[], Any]  # a tree of PartitionSpecs (logical names) in the parameters' shape
    dropout: bool  # the loss applies dropout, so the step passes it a key per micro-batch
    trainable: Callable[[Any], Any] | None = None  # params -> booleans per leaf (make_optimizer); None = all


def lm_objective(run: RunConfig) -> Objective:
    """The language-modelling loss on `model.init_params`' parameters."""

    def loss_fn(params: Any, batch: Batch, rng: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
        total, count = token_loss_sums(params, batch, run, rng)
        return total, {"count": count}

    return Objective(
        loss_fn,
        lambda key: model.init_params(run.model, key),
        lambda: model.logical_axes(run.model),
        model_uses_dropout(run.model),
    )


def make_train_step(
    run: RunConfig, tx: optax.GradientTransformation, objective: Objective | None = None
) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    objective = objective or lm_objective(run)
    loss_fn = objective.loss_fn
    schedule = learning_rate_schedule(run)
    n_micro = run.micro_batches

    def split_micro(x: jax.Array) -> jax.Array:
        # Micro-batch m takes rows m, m+M, m+2M, ...: every device's shard feeds every micro-batch.
        return x.reshape(x.shape[0] // n_micro, n_micro, *x.shape[1:]).swapaxes(0, 1)

    def step_fn(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.rng), _DROPOUT), state.step)
        # Gradients of the summed loss; dividing by the total count afterwards makes accumulation over
        # micro-batches exactly the full-batch gradient.
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def micro(carry: tuple[Any, jax.Array, dict[str, jax.Array]], xs: tuple[Batch, jax.Array]):
            grads, loss_sum, sums = carry
            mb, m = xs
            key = jax.random.fold_in(step_key, m) if objective.dropout else None
            (loss, aux), g = grad_fn(state.params, mb, key)
            return (jax.tree.map(jnp.add, grads, g), loss_sum + loss, jax.tree.map(jnp.add, sums, aux)), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        micro_batches = jax.tree.map(split_micro, batch)
        first = jax.tree.map(lambda x: x[0], micro_batches)
        aux_shape = jax.eval_shape(loss_fn, state.params, first, None)[1]
        totals = (zeros, jnp.zeros((), jnp.float32), jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), aux_shape))
        (grads, loss_sum, sums), _ = jax.lax.scan(micro, totals, (micro_batches, jnp.arange(n_micro)))
        count = jnp.maximum(sums.pop("count"), 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        loss = loss_sum / count
        grad_norm = optax.tree.norm(grads)
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # A non-finite update is never applied, whatever on_nonfinite says: the run either stops (error)
        # or moves on to the next batch (skip), and every checkpoint holds finite parameters.
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = TrainState(
            step=state.step + 1,
            params=keep(new_params, state.params),
            opt_state=keep(new_opt_state, state.opt_state),
            rng=state.rng,
        )
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": schedule(state.step),
            "loss_count": count,
            "finite": finite,
            **{name: value / count for name, value in sums.items()},
        }
        return new_state, metrics

    return step_fn


def make_eval_step(
    run: RunConfig, objective: Objective | None = None
) -> Callable[[Any, Batch], tuple[jax.Array, jax.Array]]:
    """(params, batch) -> (summed loss, count) without dropout."""
    loss_fn = (objective or lm_objective(run)).loss_fn

    def eval_step(params: Any, batch: Batch) -> tuple[jax.Array, jax.Array]:
        total, sums = loss_fn(params, batch, None)
        return total, sums["count"]

    return eval_step


def init_state(
    run: RunConfig,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    params: Any | None = None,
    objective: Objective | None = None,
) -> TrainState:
    """A fresh train state (new parameters unless `params` are given, e.g. imported weights)."""
    if params is None:
        init = (objective or lm_objective(run)).init_params
        params = init(jax.random.fold_in(jax.random.wrap_key_data(rng), _INIT))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)


def abstract_state(run: RunConfig, tx: optax.GradientTransformation, objective: Objective | None = None) -> TrainState:
    # The key is made inside eval_shape: `gptjax plan` calls this under a mesh of TPU devices it cannot run on.
    return jax.eval_shape(
        lambda: init_state(run, tx, jax.random.key_data(jax.random.key(run.seed)), objective=objective)
    )


def state_shardings(
    run: RunConfig, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, objective: Objective | None = None
) -> TrainState:
    """NamedShardings for the whole train state: optimizer moments follow their parameters' logical axes."""
    abstract = abstract_state(run, tx, objective)
    param_specs = (objective or lm_objective(run)).logical_axes()
    opt_specs = optax.tree_map_params(
        tx,
        lambda _, spec: spec,
        abstract.opt_state,
        param_specs,
        transform_non_params=lambda _: PartitionSpec(),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )
    replicated: Any = PartitionSpec()  # a tree of specs in the state's shape, not arrays
    specs = dataclasses.replace(abstract, step=replicated, params=param_specs, opt_state=opt_specs, rng=replicated)
    return sharding.shardings_for(specs, abstract, mesh, run.mesh.rules)


def restore_target(
    run: RunConfig, tx: optax.GradientTransformation, shardings: TrainState, objective: Objective | None = None
) -> TrainState:
    """Abstract arrays carrying the *current* mesh's shardings: orbax reshards onto them on restore."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state(run, tx, objective), shardings
    )


def init_sharded_state(
    run: RunConfig, tx: optax.GradientTransformation, shardings: TrainState, objective: Objective | None = None
) -> TrainState:
    """A fresh state created directly in its shardings (never whole on one device), seeded by `run.seed`."""
    rng = jax.random.key_data(jax.random.key(run.seed))
    return jax.jit(lambda r: init_state(run, tx, r, objective=objective), out_shardings=shardings)(rng)


def jit_train_step(
    run: RunConfig,
    tx: optax.GradientTransformation,
    state_shardings: TrainState,
    batch_sharding: NamedSharding,
    objective: Objective | None = None,
) -> jax.stages.Wrapped:
    """The train step as it runs: one jit over the mesh, the state donated, metrics replicated."""
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())
    return jax.jit(
        make_train_step(run, tx, objective),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


def write_initial_checkpoint(run: RunConfig, params: Any) -> RunDir:
    """Write `params` (e.g. imported Hugging Face weights) as step 0 of a new run in `run.run_dir`, with a
    fresh optimizer state, so `gptjax eval` scores it and `gptjax train` continues (fine-tunes) it."""
    run_dir = RunDir(run.run_dir)
    tx = make_optimizer(run)
    state = init_state(run, tx, jax.random.key_data(jax.random.key(run.seed)), params=params)
    checkpointer = Checkpointer(run_dir.checkpoints_dir)
    if checkpointer.latest_step() is not None:
        raise ConfigError(
            f"{run_dir.checkpoints_dir} already holds checkpoints {checkpointer.all_steps()}; "
            "write the weights into a new run directory"
        )
    run_dir.write_config(run)
    checkpointer.save(0, state)
    checkpointer.wait()
    checkpointer.close()
    return run_dir


class TrainData(Protocol):
    """What the Trainer reads batches from: `gptjax.data.PackedDataset`, or e.g. gptjax/finetune's labelled examples.
    `vocab.vocab_size` is the number of token ids the data uses."""

    vocab: Any

    def batch(self, step: int, batch_size: int, rows: Any = None) -> Any: ...

    def eval_batches(self, batch_size: int, max_batches: int, split: str = "validation") -> Iterator[Any]: ...


@dataclass(frozen=True)
class StepInfo:
    """What a hook is called with: the steps completed, the state after them and that step's metrics
    (device arrays: reading one waits for the step). `final` is set at the step where the run ends."""

    step: int
    state: TrainState
    metrics: dict[str, jax.Array]
    final: bool


class Hook(Protocol):
    """One job run on the trainer's schedule. A hook that holds resources (files, a signal handler) also
    has `close()`, which the trainer calls once when training ends, normally or by an error."""

    def __call__(self, info: StepInfo) -> None: ...


@dataclass(frozen=True)
class _Scheduled:
    hook: Hook
    every: int | None  # None = only at the end
    at_start: bool  # also after the first step of each attempt (e.g. to start a clock)
    at_end: bool

    def due(self, step: int, first: bool, final: bool) -> bool:
        return (
            (self.every is not None and step % self.every == 0) or (self.at_start and first) or (self.at_end and final)
        )


class Trainer:
    """One run: mesh, shardings, the jitted step and the data, and the loop that runs hooks.

    Constructing it checks the run against the devices and the data but writes nothing; `train()` writes
    the config (so a bad start never leaves a config behind), restores or initialises the state, and runs.
    """

    def __init__(
        self,
        run: RunConfig,
        dataset: TrainData | None = None,
        devices: list[jax.Device] | None = None,
        objective: Objective | None = None,
    ) -> None:
        self.run = run
        self.objective = objective or lm_objective(run)
        self.run_dir = RunDir(run.run_dir)
        self.mesh = sharding.make_mesh(run.mesh, devices)
        self.rules = run.mesh.rules
        self.tx = make_optimizer(run, self.objective.trainable)
        self.seq_len = run.sequence_length
        cache = as_path(run.data.cache_dir) if run.data.cache_dir else self.run_dir.default_data_cache
        self.dataset = dataset if dataset is not None else make_dataset(run.data, self.seq_len, cache)
        if self.dataset.vocab.vocab_size > run.model.vocab_size:
            raise ConfigError(
                f"data vocabulary {run.data.vocab!r} has {self.dataset.vocab.vocab_size} ids but "
                f"model.vocab_size={run.model.vocab_size}"
            )
        self.batch_sharding = sharding.batch_sharding(self.mesh, self.rules)
        self.local_rows = sharding.process_rows(self.batch_sharding, run.batch_size)
        dp = sharding.data_parallel_size(self.batch_sharding)
        if (run.batch_size // run.micro_batches) % dp:
            raise ConfigError(
                f"micro-batch size {run.batch_size // run.micro_batches} (batch_size={run.batch_size} "
                f"/ micro_batches={run.micro_batches}) is not divisible by the data-parallel size {dp}"
            )
        self.state_shardings = state_shardings(run, self.tx, self.mesh, self.objective)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.step_fn = jit_train_step(run, self.tx, self.state_shardings, self.batch_sharding, self.objective)
        self.eval_fn = jax.jit(
            make_eval_step(run, self.objective),
            in_shardings=(self.state_shardings.params, self.batch_sharding),
            out_shardings=(replicated, replicated),
        )
        self.checkpointer = Checkpointer(self.run_dir.checkpoints_dir, keep=run.checkpoint.keep)
        if self.checkpointer.latest_step() is not None:
            self.run_dir.check_same_run(run)  # a run dir without checkpoints takes a new config
        self.state: TrainState | None = None
        self.stop_requested = False
        self._hooks: list[_Scheduled] = []

    # -- set-up ------------------------------------------------------------------------------------------

    def add_hook(self, hook: Hook, every: int | None = None, *, at_start: bool = False, at_end: bool = True) -> None:
        """Call `hook` after every `every`-th step (None: never on a schedule), after the first step of an
        attempt if `at_start`, and at the final step if `at_end`; at most once per step, in the order added."""
        if every is not None and every <= 0:
            raise ConfigError(f"a hook's interval must be positive (or None = only at the end), got {every}")
        self._hooks.append(_Scheduled(hook, every, at_start, at_end))

    def restore_or_init(self) -> int:
        """Restore the latest complete checkpoint onto this mesh, or initialise; returns the step."""
        latest = self.checkpointer.latest_step()
        if latest is not None:
            log.info("resuming from %s at step %d", self.checkpointer.directory, latest)
            target = restore_target(self.run, self.tx, self.state_shardings, self.objective)
            self.state = self.checkpointer.restore(latest, target)
        else:
            with jax.set_mesh(self.mesh):
                self.state = init_sharded_state(self.run, self.tx, self.state_shardings, self.objective)
        return self.step

    # -- batches -----------------------------------------------------------------------------------------

    def global_batch(self, step: int) -> Batch:
        local = self.dataset.batch(step, self.run.batch_size, rows=self.local_rows)
        return sharding.global_batch_from_local(local, self.local_rows, self.batch_sharding, self.run.batch_size)

    def held_out_loss(self, split: str = "validation") -> float:
        """Mean per-token loss over the first `held_out.batches` validation batches (fixed order)."""
        total, count = 0.0, 0.0
        with self.activated():
            for batch in self.dataset.eval_batches(self.run.batch_size, self.run.held_out.batches, split=split):
                local = {k: v[self.local_rows] for k, v in batch.items()}
                s, c = self.eval_fn(
                    self.current_state().params,
                    sharding.global_batch_from_local(local, self.local_rows, self.batch_sharding, self.run.batch_size),
                )
                total, count = total + float(s), count + float(c)
        return total / max(count, 1.0)

    # -- the loop ----------------------------------------------------------------------------------------

    @property
    def step(self) -> int:
        return int(jax.device_get(self.current_state().step))

    def current_state(self) -> TrainState:
        """The train state, for hooks and callers that evaluate it (an error before restore_or_init)."""
        if self.state is None:
            raise RuntimeError("the train state is not there yet: call restore_or_init() or train() first")
        return self.state

    @contextmanager
    def activated(self) -> Iterator[None]:
        """The mesh and logical-axis rules the model's sharding constraints resolve against."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.flax_rules(self.rules)):
            yield

    def request_stop(self) -> None:
        """End the run after the current step: final hooks run (a checkpoint is saved) and train() returns."""
        self.stop_requested = True

    def train(self) -> TrainState:
        if self.state is None:
            self.restore_or_init()
        is_writer = jax.process_index() == 0
        if is_writer:
            self.run_dir.write_config(self.run)
            self.run_dir.clear_done()  # a run extended with more steps is not done
        start = self.step
        try:
            with self._stop_on_sigterm(), self.activated():
                self._loop(start)
        finally:
            for scheduled in reversed(self._hooks):  # unwind like nested contexts: savers before sinks close
                close = getattr(scheduled.hook, "close", None)
                if close is not None:
                    close()
            self.checkpointer.wait()  # an error never abandons a save that is already in flight
        if self.step >= self.run.steps and is_writer:
            self.run_dir.mark_done()  # tpu_scripts' keep-alive loop and sweeps stop here
        return self.current_state()

    def _loop(self, start: int) -> None:
        """Steps from `start`; hooks after each. When the run ends by a stop requested during a step's hooks,
        the final hooks that did not run at that step run once more, with `final` set."""
        pending: tuple[int, jax.Array] | None = None  # the finite flag of the previous step, read one step late
        for step in range(start, self.run.steps):
            self.state, metrics = self.step_fn(self.current_state(), self.global_batch(step))
            self._check_finite(pending)
            pending = (step + 1, metrics["finite"])
            final = step + 1 == self.run.steps or self.stop_requested or self.checkpointer.reached_preemption(step + 1)
            if final:
                self._check_finite(pending)
            info = StepInfo(step + 1, self.state, metrics, final)
            ran = self._run_hooks(info, first=step == start)
            if final:
                return
            if self.stop_requested:
                self._check_finite(pending)
                self._run_hooks(StepInfo(info.step, info.state, metrics, final=True), first=False, skip=ran)
                return

    def _run_hooks(self, info: StepInfo, first: bool, skip: Set[int] = frozenset()) -> set[int]:
        ran = set()
        for i, scheduled in enumerate(self._hooks):
            if i not in skip and scheduled.due(info.step, first, info.final):
                scheduled.hook(info)
                ran.add(i)
        return ran

    def _check_finite(self, pending: tuple[int, jax.Array] | None) -> None:
        """Stop (optim.on_nonfinite=error) or log (skip) a step whose loss or gradient was not finite. The
        step itself already refused the update, so no saved state is ever poisoned."""
        if pending is None or bool(jax.device_get(pending[1])):
            return
        if self.run.optim.on_nonfinite == "error":
            raise NonFiniteError(
                f"non-finite loss or gradient at step {pending[0]}; the update was not applied and "
                f"the last good checkpoint is kept in {self.checkpointer.directory} "
                "(set optim.on_nonfinite=skip to skip such batches)"
            )
        log.warning("skipped step %d: non-finite loss or gradient", pending[0])

    @contextmanager
    def _stop_on_sigterm(self) -> Iterator[None]:
        """SIGTERM ends the run after the current step (single-process runs; a multi-host slice gets its
        preemption notice through JAX's coordination service instead)."""
        if jax.process_count() > 1:
            yield
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            log.warning("SIGTERM: saving a checkpoint at the end of this step, then stopping")
            self.request_stop()

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)
