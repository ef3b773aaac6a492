"""The packed data of a task or mixture, served by step: `make_dataset(cfg, seq_len, cache_dir).batch(step, n)`.

Which rows make up the global batch at `step` is a pure function of (seed, step, row), computed by
counter-based hashing (sampling.py), so every process of a multi-host run can load just its own rows,
and a restarted run sees exactly the batches it would have seen. With global row index
g = step * batch_size + row:
- Component: in a mixture, the row comes from component c with probability p_c (its normalised rate),
  drawn as uniform(seed, "mixture", step, row). A single task is the one component.
- Row within component c (rows_c packed rows): epoch e = g // rows_c, and the row is entry g % rows_c of
  the permutation (seed, "order:<task>", e). A single task thus walks a fresh permutation of all its rows
  each epoch. A mixture component takes only the positions g where it was drawn: within one of its
  epochs it never repeats a row, and it visits a random fraction of about p_c of them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np
import seqio

from gptjax.config import ConfigError, DataConfig
from gptjax.data import cache, packing, sampling, tasks
from gptjax.rundir import PathLike, as_path
from gptjax.tokenizers import get_vocabulary

Batch = dict[str, np.ndarray]


class PackedDataset:
    """Rows of seq_len + 1 tokens from a task's (or mixture's) cached token streams (see packing.py)."""

    def __init__(
        self,
        components: list[tasks.Component],
        vocab: seqio.Vocabulary,
        seq_len: int,
        seed: int,
        cache_dir: PathLike,
    ):
        self.vocab = vocab
        self.seq_len = seq_len
        self.seed = seed
        self._components = components
        self._cache_dir = cache_dir
        self._cumulative_rates = np.cumsum([c.rate for c in components])
        self._streams: dict[tuple[int, str], np.ndarray] = {}
        # The permutation of the current epoch is reused by every step in it; a few kept for mixtures.
        self._permutation = functools.lru_cache(maxsize=4 * len(components))(self._compute_permutation)

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits every component has."""
        return tuple(s for s in self._components[0].task.splits if all(s in c.task.splits for c in self._components))

    def num_tokens(self, split: str = "train") -> int:
        """Tokens in the split's stream (documents plus one EOS each), over all components."""
        return sum(self.tokens_per_component(split).values())

    def tokens_per_component(self, split: str = "train") -> dict[str, int]:
        """Stream length per component seqio Task name."""
        return {c.task.name: len(self._stream(i, split)) for i, c in enumerate(self._components)}

    def num_rows(self, split: str = "train") -> int:
        return sum(self._rows_in(c, split) for c in range(len(self._components)))

    def batch(self, step: int, batch_size: int, rows: Sequence[int] | np.ndarray | None = None) -> Batch:
        """Rows `rows` (global row indices, in any order; default all) of the global training batch at `step`
        (module docstring): inputs, targets, segment_ids, positions (int32 [n, seq_len]) and loss_mask
        (float32 [n, seq_len]). A process of a multi-host run asks for the rows its devices hold."""
        if step < 0 or batch_size <= 0:
            raise ValueError(f"step must be >= 0 and batch_size > 0, got step={step}, batch_size={batch_size}")
        index = np.arange(batch_size) if rows is None else np.asarray(rows, np.int64).reshape(-1)
        outside = index[(index < 0) | (index >= batch_size)]
        if len(outside):
            raise IndexError(f"rows {outside.tolist()} are not rows of the global batch of {batch_size} rows")
        chosen = self._choose_components(step, index)
        global_index = step * batch_size + index
        row_ids = np.empty_like(global_index)
        for c in np.unique(chosen):
            at = np.flatnonzero(chosen == c)
            epoch, position = np.divmod(global_index[at], self._rows_in(c, "train"))
            for e in np.unique(epoch):
                row_ids[at[epoch == e]] = self._permutation(int(c), int(e))[position[epoch == e]]
        return self._pack(chosen, row_ids, "train", len(index))

    def eval_batches(self, batch_size: int, max_batches: int, split: str = "validation") -> Iterator[Batch]:
        """Up to `max_batches` batches of the split's rows in a fixed order; a short last batch is filled
        with all-padding rows (every mask 0) so batch shapes never change.

        A mixture's rows are interleaved in proportion to its components' sizes (row i of a component with
        n rows sorts at (i + 0.5) / n), so a full pass is the loss over the union of their splits and
        any prefix covers every component.
        """
        if batch_size <= 0 or max_batches <= 0:
            raise ValueError(f"batch_size and max_batches must be positive, got {batch_size}, {max_batches}")
        counts = [self._rows_in(c, split) for c in range(len(self._components))]
        keys = np.concatenate([(np.arange(n) + 0.5) / n for n in counts])
        order = np.argsort(keys, kind="stable")
        chosen = np.repeat(np.arange(len(counts)), counts)[order]
        row_ids = np.concatenate([np.arange(n) for n in counts])[order]
        total = min(len(order), batch_size * max_batches)
        return (
            self._pack(chosen[i : i + batch_size], row_ids[i : i + batch_size], split, batch_size)
            for i in range(0, total, batch_size)
        )

    def _choose_components(self, step: int, index: np.ndarray) -> np.ndarray:
        if len(self._components) == 1:
            return np.zeros(len(index), np.int64)
        u = sampling.uniform(self.seed, "mixture", step, index)
        return np.minimum(np.searchsorted(self._cumulative_rates, u, side="right"), len(self._components) - 1)

    def _compute_permutation(self, component: int, epoch: int) -> np.ndarray:
        purpose = f"order:{self._components[component].task.name}"
        return sampling.permutation(self.seed, purpose, epoch, self._rows_in(component, "train"))

    def _pack(self, chosen: np.ndarray, row_ids: np.ndarray, split: str, size: int) -> Batch:
        """Pack rows `row_ids` of components `chosen`, then all-padding rows up to `size`."""
        tokens = np.zeros((size, self.seq_len + 1), np.int32)
        lengths = np.zeros(size, np.int64)
        for c in np.unique(chosen):
            at = np.flatnonzero(chosen == c)
            tokens[at], lengths[at] = packing.row_tokens(self._stream(c, split), self.seq_len, row_ids[at])
        return packing.pack(tokens, lengths, self.vocab.eos_id)

    def _rows_in(self, component: int, split: str) -> int:
        return packing.num_rows(len(self._stream(component, split)), self.seq_len)

    def _stream(self, component: int, split: str) -> np.ndarray:
        """The component's token stream for `split`, tokenised into the cache on first use."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; this task has {list(self.splits)}")
        if (component, split) not in self._streams:
            c = self._components[component]
            path = cache.cache_file(
                self._cache_dir, c.task.name, split, {"vocab": self.vocab.name, "source": c.fingerprint}
            )
            dtype = cache.token_dtype(self.vocab.vocab_size)
            self._streams[component, split] = cache.load_or_build(path, lambda: cache.tokenize(c.task, split, dtype))
        return self._streams[component, split]


def make_dataset(data_cfg: DataConfig, seq_len: int, cache_dir: PathLike) -> PackedDataset:
    """The packed data of `data_cfg.task`, tokenising its train and validation splits into `cache_dir`
    unless already cached. Fails early on an unknown task, a missing corpus file, or a seq_len for
    which some component's training split does not fill one row."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    if data_cfg.seed < 0:
        raise ConfigError(f"data.seed must be non-negative, got {data_cfg.seed}")
    components = tasks.components(data_cfg.task, data_cfg.vocab, data_cfg.tfds_data_dir)
    dataset = PackedDataset(components, get_vocabulary(data_cfg.vocab), seq_len, data_cfg.seed, as_path(cache_dir))
    if "train" not in dataset.splits:
        raise ConfigError(f"data.task {data_cfg.task!r} has no train split (splits: {list(dataset.splits)})")
    if "validation" in dataset.splits:
        dataset.num_tokens("validation")
    for name, available in dataset.tokens_per_component("train").items():
        if available < seq_len + 1:
            raise ValueError(
                f"seq_len={seq_len} is larger than the data: {name} has {available} training "
                f"tokens, and one row needs seq_len + 1 = {seq_len + 1}"
            )
    return dataset
