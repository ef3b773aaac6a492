"""Batched scoring of (context, continuation) token requests with one jitted function.

Identical requests run once. Requests whose model inputs share a prefix (a question's answer choices: the
same context, different continuations) become one prefix tree: the prefix once, then each continuation as
its own branch that attends to the prefix and to itself (`gptjax.model.attention_masks`' `branch_ids`),
with positions continuing from the prefix, so every branch sees exactly the input a request alone would
give it. Trees are packed into rows of a few power-of-two lengths (segment ids keep them apart), rows into
batches of a fixed number of rows. Two programs score a batch: the model body over its rows (one compiled
shape per row length), then the LM head over only the scored positions, over slices of the vocabulary, in
calls of one of four fixed widths (`HEAD_WIDTHS`) however the positions are spread over batches. So XLA
compiles a handful of programs whatever the requests are, the same ones for every task (which is what makes
a persistent compilation cache hit), and the head computes at most one partly filled call per batch.
Given a mesh, each batch is sharded over the mesh axes the rules table maps the logical `batch` axis to
(gptjax.sharding), and the parameters are replicated (or placed with the shardings given).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from eval.requests import Tokens, model_input
from gptjax import sharding
from gptjax.model import project_to_vocab


class Rows(NamedTuple):
    """A batch of packed rows, each [batch, length] int32: what `gptjax.model.forward` takes."""

    tokens: Any
    positions: Any  # model positions: 0.. through a prefix, continuing from it in each branch
    segment_ids: Any  # one id per tree in a row, 0 = padding
    branch_ids: Any  # 0 = a tree's shared prefix, 1.. = its branches


# (params, rows) -> the final features [batch, length, d_model] of the rows; logits are
# gptjax.model.project_to_vocab of them and the output embedding.
FeaturesFn = Callable[[Any, Rows], jax.Array]
GREEDY_RTOL = 1e-5  # a target logit this close to the maximum (relative) counts as greedy; see _score_positions
# Scored positions per data-parallel group in one call of the LM head (capped at the group's slots): full
# calls of the largest, then the smallest width that holds what is left of the batch.
HEAD_WIDTHS = (512, 256, 128, 64)
TARGETS_PER_POSITION = 2  # a call scores at most this many targets per position (a prefix's last slot
#                           predicts the first token of every branch; other positions predict one each)


class LMHead(NamedTuple):
    """The LM head as the scorer holds it (sliced once, outside the jitted function)."""

    embedding: Any  # the output embedding [vocab, d_model]: target logits gather its rows
    slices: tuple[Any, ...]  # the same matrix cut into consecutive row blocks: the head's matmuls


@dataclass
class ScoreStats:
    requests: int = 0
    unique: int = 0  # requests actually run after deduplication
    trees: int = 0  # prefix trees the unique requests became
    rows: int = 0  # rows computed, padding rows included
    batches: int = 0
    positions: int = 0  # token positions the model body computed (rows x length), padding included
    scored: int = 0  # positions projected to the vocabulary, padding included
    head_calls: int = 0
    shapes: set[tuple[int, int]] = field(default_factory=set)  # (rows, length) of the batches
    head_widths: set[int] = field(default_factory=set)  # scored positions per group of the head's calls


def bucket_lengths(max_length: int, min_bucket: int = 16) -> list[int]:
    """Powers of two from `min_bucket` below `max_length`, then `max_length` itself."""
    buckets = []
    length = min_bucket
    while length < max_length:
        buckets.append(length)
        length *= 2
    return buckets + [max_length]


@dataclass
class _Branch:
    request: int  # index into the unique requests
    tokens: Tokens  # the continuation's input tokens after the prefix: continuation[:-1]
    targets: Tokens  # the continuation: what the last prefix slot and `tokens` predict


@dataclass
class _Tree:
    prefix: Tokens
    branches: list[_Branch] = field(default_factory=list)
    length: int = 0  # token slots: prefix + every branch's tokens
    scored: int = 0  # targets scored: every branch's continuation

    @property
    def positions(self) -> int:
        """Slots whose logits are needed: the prefix's last, then every branch token."""
        return self.length - len(self.prefix) + 1

    def fits(self, branch: _Branch, max_length: int) -> bool:
        return self.length + len(branch.tokens) <= max_length and self.scored + len(branch.targets) <= max_length

    def add(self, branch: _Branch) -> None:
        self.branches.append(branch)
        self.length += len(branch.tokens)
        self.scored += len(branch.targets)


@dataclass
class _Row:
    trees: list[_Tree] = field(default_factory=list)
    length: int = 0
    scored: int = 0

    def fits(self, tree: _Tree, length: int) -> bool:
        return self.length + tree.length <= length and self.scored + tree.scored <= length

    def add(self, tree: _Tree) -> None:
        self.trees.append(tree)
        self.length += tree.length
        self.scored += tree.scored


def build_trees(
    requests: Sequence[tuple[Tokens, Tokens]], max_length: int, tree_length: int | None = None
) -> list[_Tree]:
    """Prefix trees over the requests' model inputs (after lm-eval's left truncation); requests whose
    truncated contexts coincide share a tree. A tree holds at most `tree_length` (default `max_length`) slots
    and scored positions while its requests each fit in that many, else at most `max_length`: answer choices
    too long to share one packed row then make several trees (repeating a short context) rather than need
    rows of a longer bucket, i.e. another compiled program."""
    short = tree_length or max_length
    trees: dict[tuple[tuple[int, ...], int], list[_Tree]] = {}
    for i, (ctx, cont) in enumerate(requests):
        inputs, _ = model_input(ctx, cont, max_length)
        split = len(inputs) - len(cont) + 1  # the prefix ends with the token that predicts cont[0]
        branch = _Branch(i, inputs[split:], list(cont))
        limit = short if max(len(inputs), len(cont)) <= short else max_length
        same_prefix = trees.setdefault((tuple(inputs[:split]), limit), [])
        if not same_prefix or not same_prefix[-1].fits(branch, limit):
            same_prefix.append(_Tree(inputs[:split], length=split))
        same_prefix[-1].add(branch)
    return [tree for group in trees.values() for tree in group]


def _group_features(features_fn: FeaturesFn, groups: int, params: Any, rows: Rows) -> jax.Array:
    """The model body: final features of a batch's rows, [groups, rows per group * length, d_model] (each
    data-parallel group's rows flattened, so the head gathers within the device holding them)."""
    features = features_fn(params, rows)
    return features.reshape(groups, -1, features.shape[-1])


def _score_positions(
    head: LMHead, features: jax.Array, positions: jax.Array, slot_of: jax.Array, targets: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The LM head on some scored positions of a batch: per target ([groups, entries]; `slot_of` indexes
    `positions`, [groups, width] flat slots into each group's features), log P(target) and whether its
    logit is the maximum.

    The LM head runs over consecutive slices of the output embedding, each reduced at once to its max and
    sum of exp, so no [positions, vocab] logits are ever written to memory (with a 50k vocabulary, reading
    them back for the reductions and the target's logit took nearly as long as the matmul); the target's
    logit is its own dot product. That dot and the head's matmul round differently (by ~1e-7 relative),
    so a target within `GREEDY_RTOL` of the maximum counts as greedy: closer ties than that are below what
    two implementations of the same model agree on anyway.
    """
    features = jnp.take_along_axis(features, positions[..., None], axis=1)  # [groups, width, d_model]
    maxes, exp_sums = [], []
    for embedding in head.slices:
        logits = project_to_vocab(features, embedding)
        best = jnp.max(logits, axis=-1)
        maxes.append(best)
        exp_sums.append(jnp.sum(jnp.exp(logits - best[..., None]), axis=-1))
    maxes = jnp.stack(maxes)
    best = jnp.max(maxes, axis=0)
    log_normalizer = best + jnp.log(jnp.sum(jnp.stack(exp_sums) * jnp.exp(maxes - best), axis=0))
    best, log_normalizer = (jnp.take_along_axis(x, slot_of, axis=1) for x in (best, log_normalizer))
    features = jnp.take_along_axis(features, slot_of[..., None], axis=1)
    target = jnp.einsum(
        "...d,...d->...", features, head.embedding[targets].astype(features.dtype), preferred_element_type=jnp.float32
    )
    return target - log_normalizer, target >= best - GREEDY_RTOL * jnp.maximum(1.0, jnp.abs(best))


# One jitted body per (features function, groups, output sharding) and one head per output sharding, so
# scorers built again for the same model (e.g. at every in-training evaluation) reuse compiled programs.
@functools.lru_cache(maxsize=16)
def _jitted_body(features_fn: FeaturesFn, groups: int, out_shardings: Any) -> Callable[..., jax.Array]:
    return jax.jit(partial(_group_features, features_fn, groups), out_shardings=out_shardings)


@functools.lru_cache(maxsize=16)
def _jitted_head(out_shardings: Any) -> Callable[..., tuple[jax.Array, jax.Array]]:
    return jax.jit(_score_positions, out_shardings=out_shardings)


def head_calls(
    entries: Sequence[Sequence[tuple[int, int, int]]], widths: Sequence[int]
) -> list[tuple[int, list[list[int]], list[list[tuple[int, int, int]]]]]:
    """Split each group's scored targets — (flat slot of the position predicting it, target, owner), in
    order — into head calls: [(width, per group the positions of the call, per group its targets)].

    Every call has one of `widths` (descending) for all groups: the largest while a group has at least that
    many positions left, then the smallest that holds the rest. A call holds at most `width` positions and
    TARGETS_PER_POSITION * width targets per group; a position shared by targets on both sides of a call
    boundary goes through the head in both calls.
    """
    start = [0] * len(entries)
    calls = []
    while any(s < len(group) for s, group in zip(start, entries)):
        need = max(len({slot for slot, _, _ in group[s:]}) for s, group in zip(start, entries))
        width = widths[0] if need >= widths[0] else min(w for w in widths if w >= need)
        positions, targets = [], []
        for g, group in enumerate(entries):
            slots: dict[int, int] = {}
            i = start[g]
            while i < len(group) and i - start[g] < TARGETS_PER_POSITION * width:
                if group[i][0] not in slots:
                    if len(slots) == width:
                        break
                    slots[group[i][0]] = len(slots)
                i += 1
            positions.append(list(slots))
            targets.append(list(group[start[g] : i]))
            start[g] = i
        calls.append((width, positions, targets))
    return calls


class BatchScorer:
    """Callable on a list of (context, continuation) token requests -> [(sum log-prob, is_greedy)];
    `stats` counts requests, deduplicated requests, trees, rows, batches, computed positions and shapes.

    Trees shorter than `pack_length` share rows of that length; longer ones get a row of their own bucket.
    `output_embedding` [vocab, d_model] is the LM head's matrix; it is cut once into slices of at most
    `vocab_slice` rows (slicing inside the jitted scorer would copy the whole matrix at every batch).
    """

    def __init__(
        self,
        features_fn: FeaturesFn,
        params: Any,
        output_embedding: jax.Array,
        max_length: int,
        *,
        batch_tokens: int = 1024,
        min_bucket: int = 16,
        pack_length: int = 256,
        vocab_slice: int = 8192,
        mesh: Mesh | None = None,
        batch_axes: Sequence[str] | None = None,
        rules: sharding.Rules = sharding.DEFAULT_RULES,
        param_shardings: Any = None,
    ) -> None:
        for name, value in (("batch_tokens", batch_tokens), ("pack_length", pack_length), ("vocab_slice", vocab_slice)):
            if value < 1:
                raise ValueError(f"{name}={value} must be positive")
        self.max_length = max_length
        self.batch_tokens = batch_tokens
        self.buckets = bucket_lengths(max_length, min_bucket)
        self.min_row_length = self._bucket(min(pack_length, max_length))  # shorter trees share rows this long
        self.stats = ScoreStats()
        self._batch_sharding: NamedSharding | None = None
        self._data_parallel = 1
        out_shardings = body_shardings = None
        if mesh is not None:
            if AxisType.Explicit in mesh.axis_types:
                raise ValueError(
                    f"mesh axes {mesh.axis_names} have types {mesh.axis_types}; the model needs "
                    "AxisType.Auto axes, as gptjax.sharding.make_mesh creates them"
                )
            axes = (
                tuple(batch_axes)
                if batch_axes is not None
                else (
                    sharding.batch_axes(mesh, rules)
                    if set(mesh.axis_names) & set(sharding.MESH_AXES)
                    else tuple(mesh.axis_names)
                )
            )  # a mesh of other axes than gptjax's: the batch over all of them
            unknown = [a for a in axes if a not in mesh.axis_names]
            if unknown:
                raise ValueError(f"batch axes {unknown} are not in the mesh axes {mesh.axis_names}")
            self._batch_sharding = NamedSharding(mesh, PartitionSpec(axes))
            self._data_parallel = math.prod(mesh.shape[a] for a in axes)
            replicated = NamedSharding(mesh, PartitionSpec())
            params = jax.device_put(params, param_shardings if param_shardings is not None else replicated)
            out_shardings = (replicated, replicated)
            body_shardings = self._batch_sharding
        self.params = params
        vocab = output_embedding.shape[0]
        bounds = np.linspace(0, vocab, -(-vocab // vocab_slice) + 1).astype(int)  # near-equal slices
        self.head = LMHead(output_embedding, tuple(output_embedding[a:b] for a, b in zip(bounds[:-1], bounds[1:])))
        if mesh is not None:
            self.head = jax.device_put(self.head, replicated)
        self._body = _jitted_body(features_fn, self._data_parallel, body_shardings)
        self._head = _jitted_head(out_shardings)

    def rows_per_batch(self, length: int) -> int:
        """As many rows as fit in `batch_tokens`, a multiple of the data-parallel size."""
        dp = self._data_parallel
        return max(dp, (self.batch_tokens // length) // dp * dp)

    def _bucket(self, length: int) -> int:
        return next(b for b in self.buckets if b >= length)

    def __call__(self, requests: Sequence[tuple[Tokens, Tokens]]) -> list[tuple[float, bool]]:
        keys = [(tuple(ctx), tuple(cont)) for ctx, cont in requests]
        unique = list(dict.fromkeys(keys))
        self.stats.requests += len(keys)
        self.stats.unique += len(unique)
        trees = build_trees(unique, self.max_length, self.min_row_length)
        self.stats.trees += len(trees)
        launched = []  # every batch is dispatched before any result is read, so host and device overlap
        for length, rows in self._pack(trees).items():
            n_rows = self.rows_per_batch(length)
            for start in range(0, len(rows), n_rows):
                launched += self._launch(rows[start : start + n_rows], n_rows, length)
        logprobs, greedy = np.zeros(len(unique)), np.ones(len(unique), bool)
        for owner, (logprob, is_greedy) in launched:
            scored = owner >= 0
            np.add.at(logprobs, owner[scored], np.asarray(logprob, np.float64)[scored])
            np.logical_and.at(greedy, owner[scored], np.asarray(is_greedy)[scored])
        index = {key: i for i, key in enumerate(unique)}
        return [(float(logprobs[index[key]]), bool(greedy[index[key]])) for key in keys]

    def _pack(self, trees: list[_Tree]) -> dict[int, list[_Row]]:
        """Rows of trees by row length, longest trees first, each tree into the first of the last few open
        rows of its length with room for its slots and scored positions (so packing stays linear)."""
        rows: dict[int, list[_Row]] = {}
        for tree in sorted(trees, key=lambda t: (-t.length, -t.scored)):
            length = max(self.min_row_length, self._bucket(max(tree.length, tree.scored)))
            open_rows = rows.setdefault(length, [])
            row = next((row for row in open_rows[-8:] if row.fits(tree, length)), None)
            if row is None:
                row = _Row()
                open_rows.append(row)
            row.add(tree)
        return rows

    def _launch(
        self, rows: list[_Row], n_rows: int, length: int
    ) -> list[tuple[np.ndarray, tuple[jax.Array, jax.Array]]]:
        """Dispatch one batch of packed rows: the model body once, then the LM head in `head_calls`. For each
        head call, the unique request each scored target belongs to (-1 for padding), and the (not yet
        computed) per-target log-probabilities and greedy flags.

        Scored positions are listed per group of rows, one group per data-parallel shard, as flat indices
        into the group's rows, so the gather stays on the device holding those rows. A tree's last prefix
        slot predicts the first token of every branch but goes through the head once (per call).
        """
        groups = self._data_parallel
        group_rows = n_rows // groups
        arrays = Rows(*(np.zeros((n_rows, length), np.int32) for _ in Rows._fields))
        entries: list[list[tuple[int, int, int]]] = [[] for _ in range(groups)]  # (slot, target, owner)
        for r, row in enumerate(rows):
            g, slot = r // group_rows, 0
            base = (r % group_rows) * length  # the row's first flat index within its group
            for segment, tree in enumerate(row.trees, start=1):
                prefix_end = slot + len(tree.prefix)
                arrays.tokens[r, slot:prefix_end] = tree.prefix
                arrays.positions[r, slot:prefix_end] = np.arange(len(tree.prefix))
                arrays.segment_ids[r, slot:prefix_end] = segment
                last_prefix = base + prefix_end - 1
                slot = prefix_end
                for branch_id, branch in enumerate(tree.branches, start=1):
                    end = slot + len(branch.tokens)
                    arrays.tokens[r, slot:end] = branch.tokens
                    arrays.positions[r, slot:end] = np.arange(len(tree.prefix), len(tree.prefix) + len(branch.tokens))
                    arrays.segment_ids[r, slot:end] = segment
                    arrays.branch_ids[r, slot:end] = branch_id
                    predictors = [last_prefix, *range(base + slot, base + end)]
                    entries[g] += [(at, target, branch.request) for at, target in zip(predictors, branch.targets)]
                    slot = end
        features = self._body(self.params, Rows(*map(self._place, arrays)))
        slots = group_rows * length
        widths = sorted({min(w, slots) for w in HEAD_WIDTHS}, reverse=True)
        launched = []
        for width, positions, targets in head_calls(entries, widths):
            at = np.zeros((groups, width), np.int32)
            slot_of, target_ids = (np.zeros((groups, TARGETS_PER_POSITION * width), np.int32) for _ in range(2))
            owner = np.full((groups, TARGETS_PER_POSITION * width), -1)
            for g in range(groups):
                at[g, : len(positions[g])] = positions[g]
                index = {position: i for i, position in enumerate(positions[g])}
                n = len(targets[g])
                slot_of[g, :n] = [index[position] for position, _, _ in targets[g]]
                target_ids[g, :n] = [target for _, target, _ in targets[g]]
                owner[g, :n] = [request for _, _, request in targets[g]]
            launched.append((owner, self._head(self.head, features, *map(self._place, (at, slot_of, target_ids)))))
            self.stats.head_calls += 1
            self.stats.scored += groups * width
            self.stats.head_widths.add(width)
        self.stats.rows += n_rows
        self.stats.batches += 1
        self.stats.positions += n_rows * length
        self.stats.shapes.add((n_rows, length))
        return launched

    def _place(self, array: np.ndarray) -> jax.Array | np.ndarray:
        """Shard the batch; every process holds the whole host array, so each fills its own shards."""
        if self._batch_sharding is None:
            return array
        return jax.make_array_from_callback(array.shape, self._batch_sharding, lambda index: array[index])
