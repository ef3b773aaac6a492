"""Batched scoring of (context, continuation) token requests with one jitted function.

Identical requests run once; the rest are sorted by length and padded into a few length buckets (powers of
two up to the window) with a fixed number of rows per bucket, so XLA compiles one program per bucket
however many requests there are. Rows are right-padded: under a causal mask the padding never affects the
scored positions. Given a mesh, each batch is sharded over its batch axes and the parameters are replicated
(or placed with the shardings given).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from eval.requests import Tokens, model_input

# (params, tokens [batch, length], positions [batch, n]) -> fp32 logits [batch, n, vocab] at those positions
LogitsFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
BATCH_AXIS_NAMES = ("data", "fsdp")  # the trainer mesh's batch axes (gptjax.config.DEFAULT_RULES)


@dataclass
class ScoreStats:
    requests: int = 0
    unique: int = 0  # requests actually run after deduplication
    rows: int = 0  # rows computed, padding rows included
    batches: int = 0
    shapes: set[tuple[int, int, int]] = field(default_factory=set)  # (rows, length, scored width) per batch


def bucket_lengths(max_length: int, min_bucket: int = 16) -> list[int]:
    """Powers of two from `min_bucket` below `max_length`, then `max_length` itself."""
    buckets = []
    length = min_bucket
    while length < max_length:
        buckets.append(length)
        length *= 2
    return buckets + [max_length]


def _score_rows(logits_fn: LogitsFn, params: Any, tokens: jax.Array, positions: jax.Array, targets: jax.Array,
                mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row: sum of log P(target) over the masked scored positions, and whether every masked target is
    the argmax. Only `positions` (the continuation's, right-aligned in a power-of-two width) get logits."""
    logits = logits_fn(params, tokens, positions).astype(jnp.float32)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    logprobs = target_logits - jax.nn.logsumexp(logits, axis=-1)
    greedy = jnp.argmax(logits, axis=-1) == targets
    return jnp.sum(jnp.where(mask, logprobs, 0.0), axis=-1), jnp.all(greedy | ~mask, axis=-1)


@functools.lru_cache(maxsize=16)
def _jitted(logits_fn: LogitsFn, out_shardings: Any) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """One jitted scorer per (logits function, output sharding), so scorers built again for the same model
    (e.g. at every in-training evaluation) reuse the programs already compiled."""
    return jax.jit(partial(_score_rows, logits_fn), out_shardings=out_shardings)


class BatchScorer:
    """Callable on a list of (context, continuation) token requests -> [(sum log-prob, is_greedy)];
    `stats` counts requests, deduplicated requests, rows, batches and compiled shapes."""

    def __init__(self, logits_fn: LogitsFn, params: Any, max_length: int, *, batch_tokens: int = 1024,
                 min_bucket: int = 16, mesh: Mesh | None = None, batch_axes: Sequence[str] | None = None,
                 param_shardings: Any = None) -> None:
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens={batch_tokens} must be positive")
        self.max_length = max_length
        self.batch_tokens = batch_tokens
        self.buckets = bucket_lengths(max_length, min_bucket)
        self.stats = ScoreStats()
        self._batch_sharding: NamedSharding | None = None
        self._data_parallel = 1
        out_shardings = None
        if mesh is not None:
            if AxisType.Explicit in mesh.axis_types:
                raise ValueError(f"mesh axes {mesh.axis_names} have types {mesh.axis_types}; the model needs "
                                 "AxisType.Auto axes, as gptjax.sharding.make_mesh creates them")
            axes = tuple(batch_axes) if batch_axes is not None else (
                tuple(a for a in BATCH_AXIS_NAMES if a in mesh.axis_names) or tuple(mesh.axis_names))
            unknown = [a for a in axes if a not in mesh.axis_names]
            if unknown:
                raise ValueError(f"batch axes {unknown} are not in the mesh axes {mesh.axis_names}")
            self._batch_sharding = NamedSharding(mesh, PartitionSpec(axes))
            self._data_parallel = math.prod(mesh.shape[a] for a in axes)
            replicated = NamedSharding(mesh, PartitionSpec())
            params = jax.device_put(params, param_shardings if param_shardings is not None else replicated)
            out_shardings = (replicated, replicated)
        self.params = params
        self._score = _jitted(logits_fn, out_shardings)

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
        rows = []
        for ctx, cont in unique:
            inputs, _ = model_input(ctx, cont, self.max_length)
            whole = (list(ctx) + list(cont))[-(self.max_length + 1):]
            rows.append((inputs, whole[1:], len(cont)))
        results: dict[int, tuple[float, bool]] = {}
        by_bucket: dict[int, list[int]] = {}
        for i in sorted(range(len(rows)), key=lambda i: len(rows[i][0])):
            by_bucket.setdefault(self._bucket(len(rows[i][0])), []).append(i)
        for length, members in by_bucket.items():
            n_rows = self.rows_per_batch(length)
            for start in range(0, len(members), n_rows):
                chunk = members[start:start + n_rows]
                sums, greedy = self._run_batch([rows[i] for i in chunk], n_rows, length)
                results.update({i: (float(s), bool(g)) for i, s, g in zip(chunk, sums, greedy)})
        index = {key: i for i, key in enumerate(unique)}
        return [results[index[key]] for key in keys]

    def _run_batch(self, rows: list[tuple[Tokens, Tokens, int]], n_rows: int,
                   length: int) -> tuple[np.ndarray, np.ndarray]:
        scored = [min(n_cont, len(inputs)) for inputs, _, n_cont in rows]
        width = min(length, 1 << max(max(scored) - 1, 0).bit_length())  # power of two >= longest continuation
        tokens = np.zeros((n_rows, length), np.int32)
        positions = np.zeros((n_rows, width), np.int32)
        targets = np.zeros((n_rows, width), np.int32)
        mask = np.zeros((n_rows, width), bool)
        for r, ((inputs, target, _), n_scored) in enumerate(zip(rows, scored)):
            n = len(inputs)
            tokens[r, :n] = inputs
            cols = np.arange(n - n_scored, n)  # the continuation's positions, right-aligned in the width
            positions[r, width - n_scored:] = cols
            targets[r, width - n_scored:] = np.asarray(target)[cols]
            mask[r, width - n_scored:] = True
        arrays = [self._place(a) for a in (tokens, positions, targets, mask)]
        sums, greedy = self._score(self.params, *arrays)
        self.stats.rows += n_rows
        self.stats.batches += 1
        self.stats.shapes.add((n_rows, length, width))
        return np.asarray(sums), np.asarray(greedy)

    def _place(self, array: np.ndarray) -> jax.Array | np.ndarray:
        """Shard the batch; every process holds the whole host array, so each fills its own shards."""
        if self._batch_sharding is None:
            return array
        return jax.make_array_from_callback(array.shape, self._batch_sharding, lambda index: array[index])
