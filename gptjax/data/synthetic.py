"""Synthetic in-context-learning data, generated from a seed: no file is read or written.

Models small enough for a CPU score at chance on natural benchmarks at every K, but they do learn in context
on tasks built for it. Each generator is a frozen dataclass of its parameters, and sequence i of a split is
a pure function of (seed, split, i): every draw is gptjax.data.sampling's counter-based hash of (seed,
purpose, split, index), so any subset of sequences is the same whoever asks for it (a probe, the training
pipeline, another process), and NumPy's generator algorithms, which NumPy does not promise to keep, are
never used. Splits are "train" and "validation" (fresh sequences of the same distribution) and "test"
(FewShotClassification: classes never trained on).

- RepeatedTokens (Olsson et al. 2022, "In-context learning and induction heads"): a segment of uniformly
  random tokens, repeated. Only a model that looks back at the earlier copy predicts the repeats; the first
  copy is unpredictable (its loss is the unigram entropy ln n_symbols). CopiedSegments copies random
  segments to random later places, so that only content, not position, finds the earlier copy.
- FewShotClassification (Chan et al. 2022, "Data distributional properties drive emergent in-context
  learning in transformers"; Reddy 2023, "The mechanistic basis of data dependence and abrupt learning in
  an in-context classification task"): N (item, label) pairs and a query item whose label is the target.
  Items are short strings of tokens, one prototype per class, each token replaced by a random one with
  probability `noise` (within-class noise). Labels are either each class's fixed label (learnable in the
  weights) or remapped at random in every sequence (learnable only from the context). Sequences are bursty
  (the N items come from N / B classes, B copies each, the query's class among them) with probability
  `p_bursty`, else uniform (N items and the query drawn independently); class frequencies are Zipfian
  with exponent `zipf` (0 = uniform). Reddy's minimal version is N=8, L labels, K classes and noise.
- LinearRegression (Garg et al. 2022, "What can transformers learn in-context?"): points x ~ N(0, I_d) and
  y = w.x + noise with w ~ N(0, I_d) per sequence. Real-valued: gptjax.regression trains a transformer on
  it with a linear read-in and read-out (not a token LM), and eval.icl.regression scores it.

Token tasks emit ids directly (the vocabulary only supplies EOS and bounds the ids); every id lies in
[first_id, max_id], which must lie below the vocabulary's size and avoid its EOS. A token sequence of
`length` tokens becomes one document, so with `seq_len = length` every training row is exactly one sequence.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from gptjax.data import sampling
from gptjax.errors import ConfigError

SPLITS = ("train", "validation", "test")


def _counter(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; synthetic tasks have {list(SPLITS)}")
    return SPLITS.index(split)


def uniform(seed: int, purpose: str, split: str, rows: np.ndarray, width: int) -> np.ndarray:
    """Floats in [0, 1), [len(rows), width]: entry (r, j) depends only on (seed, purpose, split, rows[r], j)."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    index = rows[:, None] * width + np.arange(width)
    return sampling.uniform(seed, purpose, _counter(split), index)


def integers(seed: int, purpose: str, split: str, rows: np.ndarray, width: int, n: int) -> np.ndarray:
    """Uniform ints in [0, n), [len(rows), width] (int64)."""
    return np.minimum((uniform(seed, purpose, split, rows, width) * n).astype(np.int64), n - 1)


def normal(seed: int, purpose: str, split: str, rows: np.ndarray, width: int) -> np.ndarray:
    """Standard normals, [len(rows), width], by Box-Muller from two uniform streams."""
    u1 = uniform(seed, purpose + ":r", split, rows, width)
    u2 = uniform(seed, purpose + ":theta", split, rows, width)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def _check_positive(owner: object, *names: str) -> None:
    for name in names:
        if getattr(owner, name) <= 0:
            raise ConfigError(f"{type(owner).__name__}.{name} must be positive, got {getattr(owner, name)}")


@dataclass(frozen=True)
class RepeatedTokens:
    """A segment of `segment` tokens drawn uniformly from ids [first_id, first_id + n_symbols), repeated
    `repeats` times (Olsson et al. 2022). A token at position t >= segment was seen at t - segment; the
    token after that occurrence, at t - segment + 1, is the one to predict (what an induction head attends to).

    With a fixed period a head can find the earlier copy by position alone (attend to t - segment + 1),
    which one layer can learn; so for training, `min_segment` > 0 draws each sequence's period uniformly
    from [min_segment, segment] and repeats that shorter segment to fill the same `length`: only matching
    content (an induction head, two layers) finds the earlier copy then."""

    segment: int = 32
    repeats: int = 2
    first_id: int = 33  # '!' in the byte vocabulary: the 94 printable non-space ASCII bytes by default
    n_symbols: int = 94
    min_segment: int = 0  # 0 = every period is `segment`
    kind: ClassVar[str] = "tokens"

    def __post_init__(self) -> None:
        _check_positive(self, "segment", "repeats", "first_id", "n_symbols")
        if not 0 <= self.min_segment <= self.segment:
            raise ConfigError(f"min_segment={self.min_segment} must be in [0, segment={self.segment}]")

    @property
    def length(self) -> int:
        return self.segment * self.repeats

    @property
    def max_id(self) -> int:
        return self.first_id + self.n_symbols - 1

    def periods(self, seed: int, split: str, rows: np.ndarray) -> np.ndarray:
        """Each sequence's period, [len(rows)]."""
        if not self.min_segment:
            return np.full(len(np.asarray(rows).reshape(-1)), self.segment)
        return self.min_segment + integers(seed, "period", split, rows, 1, self.segment - self.min_segment + 1)[:, 0]

    def tokens(self, seed: int, split: str, rows: np.ndarray) -> np.ndarray:
        """int32 [len(rows), length]: token j of a sequence of period p is its segment's token j mod p."""
        segment = self.first_id + integers(seed, "repeat", split, rows, self.segment, self.n_symbols)
        index = np.arange(self.length)[None, :] % self.periods(seed, split, rows)[:, None]
        return np.take_along_axis(segment, index, axis=1).astype(np.int32)


@dataclass(frozen=True)
class CopiedSegments:
    """`length` tokens (ids as in RepeatedTokens) in pieces of `min_segment` .. `segment` tokens (the last one
    cut at `length`): the first piece is uniformly random, each later one, with probability `p_copy`, a copy
    of an earlier window of its size starting uniformly anywhere before it (so at any distance), else
    uniformly random too. A copy's tokens other than its first are predictable from the earlier window.

    For training induction heads (Olsson et al. 2022) where positions cannot find the earlier copy: in
    RepeatedTokens the copy follows at a period of a few values, so a head attending to a fixed band of
    distances predicts the repeats (bench/README.md, icl_evidence.py); here the distance takes any value, so
    only matching content does (find the earlier occurrence of the current token, predict its successor)."""

    length: int = 64
    segment: int = 16
    min_segment: int = 8
    p_copy: float = 0.75
    first_id: int = 33
    n_symbols: int = 94
    kind: ClassVar[str] = "tokens"

    def __post_init__(self) -> None:
        _check_positive(self, "length", "segment", "min_segment", "first_id", "n_symbols")
        if not self.min_segment <= self.segment <= self.length // 2 or not 0 <= self.p_copy <= 1:
            raise ConfigError(
                f"CopiedSegments needs min_segment={self.min_segment} <= segment={self.segment} <= length / 2 "
                f"= {self.length // 2} (a piece and a copy must fit) and p_copy={self.p_copy} in [0, 1]"
            )

    @property
    def max_id(self) -> int:
        return self.first_id + self.n_symbols - 1

    def sources(self, seed: int, split: str, rows: np.ndarray) -> np.ndarray:
        """int64 [len(rows), length]: the position each token is copied from (itself when freshly drawn)."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        pieces = -(-self.length // self.min_segment)
        sizes = self.min_segment + integers(seed, "size", split, rows, pieces, self.segment - self.min_segment + 1)
        ends = np.minimum(np.cumsum(sizes, axis=1), self.length)
        begins = np.concatenate([np.zeros((len(rows), 1), np.int64), ends[:, :-1]], axis=1)
        u = uniform(seed, "copy", split, rows, 2 * pieces).reshape(len(rows), pieces, 2)
        copied = (u[..., 0] < self.p_copy) & (begins >= sizes)  # a whole window of the piece's size fits before it
        starts = np.minimum((u[..., 1] * (begins - sizes + 1)).astype(np.int64), np.maximum(begins - sizes, 0))
        offset = np.where(copied, begins - starts, 0)  # distance back to the window, per piece
        j = np.arange(self.length)
        piece = np.sum(j[None, :, None] >= ends[:, None, :], axis=2)  # [rows, length]: the piece each token is in
        return j[None, :] - np.take_along_axis(offset, piece, axis=1)

    def tokens(self, seed: int, split: str, rows: np.ndarray) -> np.ndarray:
        """int32 [len(rows), length]: fresh tokens where sources() is the position itself, else a copy."""
        source = self.sources(seed, split, rows)
        tokens = self.first_id + integers(seed, "fresh", split, rows, self.length, self.n_symbols)
        for j in range(self.length):  # left to right, so a copy of a copy is resolved
            tokens[:, j] = tokens[np.arange(len(tokens)), source[:, j]]
        return tokens.astype(np.int32)


@dataclass(frozen=True)
class Episodes:
    """Classification sequences and where to score them: `tokens` [n, length]; the label of pair j is the
    target at input position `label_positions[j]` (the item's last token) and is `labels[:, j]`."""

    tokens: np.ndarray
    labels: np.ndarray  # [n, pairs] label ids
    label_positions: np.ndarray  # [pairs]
    classes: np.ndarray  # [n, pairs] class indices (held-out classes count from n_classes)


@dataclass(frozen=True)
class FewShotClassification:
    """N (item, label) pairs then a query item and its label, as tokens (module docstring; Chan et al. 2022,
    Reddy 2023). Labels are ids [first_id, first_id + n_labels); item tokens follow them, n_symbols ids.
    Classes 0 .. n_classes - 1 are the training classes; n_classes .. n_classes + n_heldout - 1 appear only
    in the test split and in probes, always with remapped labels."""

    n_classes: int = 512
    n_heldout: int = 256
    n_labels: int = 8
    context: int = 8  # N pairs before the query
    burstiness: int = 4  # B: copies of each class in a bursty context; divides `context`
    p_bursty: float = 1.0
    zipf: float = 0.0  # class k is drawn with probability proportional to (k + 1) ** -zipf
    labels: Literal["remap", "fixed"] = "remap"
    item_len: int = 2
    n_symbols: int = 64
    noise: float = 0.0  # probability that each item token is replaced by a random symbol
    first_id: int = 33
    kind: ClassVar[str] = "tokens"

    def __post_init__(self) -> None:
        _check_positive(self, "n_classes", "n_heldout", "n_labels", "context", "burstiness", "item_len", "n_symbols")
        _check_positive(self, "first_id")
        if self.context % self.burstiness:
            raise ConfigError(f"burstiness={self.burstiness} must divide context={self.context}")
        if not (0 <= self.p_bursty <= 1 and 0 <= self.noise <= 1 and self.zipf >= 0):
            raise ConfigError(
                f"p_bursty={self.p_bursty} and noise={self.noise} must be in [0, 1] and zipf={self.zipf} >= 0"
            )
        if self.labels not in ("remap", "fixed"):
            raise ConfigError(f"labels must be 'remap' or 'fixed', got {self.labels!r}")
        codes = self.n_symbols**self.item_len
        if not self.n_classes + self.n_heldout <= codes <= 1 << 24:
            raise ConfigError(
                f"{self.n_classes + self.n_heldout} classes need that many distinct items; n_symbols ** item_len "
                f"= {codes} (at most 2**24)"
            )

    @property
    def pair_len(self) -> int:
        return self.item_len + 1

    @property
    def length(self) -> int:
        return (self.context + 1) * self.pair_len

    @property
    def max_id(self) -> int:
        return self.first_id + self.n_labels + self.n_symbols - 1

    @property
    def label_ids(self) -> np.ndarray:
        return np.arange(self.first_id, self.first_id + self.n_labels)

    def class_probabilities(self) -> np.ndarray:
        """The training classes' frequencies: Zipfian with exponent `zipf`."""
        weights = (np.arange(self.n_classes) + 1.0) ** -self.zipf
        return weights / weights.sum()

    def fixed_labels(self, seed: int) -> np.ndarray:
        """Each training class's label index in [0, n_labels) under labels="fixed"."""
        return integers(seed, "fixed_label", "train", np.arange(1), self.n_classes, self.n_labels)[0]

    def prototypes(self, seed: int) -> np.ndarray:
        """Distinct item strings per class (training then held-out), symbol indices [classes, item_len]."""
        total = self.n_classes + self.n_heldout
        codes = sampling.permutation(seed, "prototypes", 0, self.n_symbols**self.item_len)[:total]
        digits = codes[:, None] // self.n_symbols ** np.arange(self.item_len) % self.n_symbols
        return digits.astype(np.int64)

    def tokens(self, seed: int, split: str, rows: np.ndarray) -> np.ndarray:
        """Training-distribution sequences (bursty or uniform, per the parameters); the test split draws
        held-out classes uniformly and remaps their labels. int32 [len(rows), length]."""
        return self.sequences(seed, split, rows).tokens

    def sequences(self, seed: int, split: str, rows: np.ndarray) -> Episodes:
        rows = np.asarray(rows, np.int64).reshape(-1)
        n, groups = len(rows), self.context // self.burstiness
        if split == "test":
            draw = (
                integers(seed, "heldout_class", split, rows, groups + self.context + 1, self.n_heldout) + self.n_classes
            )
        else:
            u = uniform(seed, "class", split, rows, groups + self.context + 1)
            draw = np.minimum(
                np.searchsorted(np.cumsum(self.class_probabilities()), u, side="right"), self.n_classes - 1
            )
        group_classes, iid = draw[:, :groups], draw[:, groups:]
        order = np.argsort(uniform(seed, "order", split, rows, self.context), axis=1)
        bursty_context = np.repeat(group_classes, self.burstiness, axis=1)[np.arange(n)[:, None], order]
        bursty = uniform(seed, "bursty", split, rows, 1)[:, 0] < self.p_bursty
        classes = np.where(
            bursty[:, None],
            np.concatenate([bursty_context, group_classes[:, :1]], axis=1),
            iid,
        )
        remap = self.labels == "remap" or split == "test"
        return self._episodes(seed, split, rows, classes, remap)

    def episodes(self, seed: int, rows: np.ndarray, k: int, mode: Literal["icl", "iwl"], ways: int = 2) -> Episodes:
        """Probe sequences of k context pairs and a query (split "test", so never a training sequence).

        - "icl": `ways` distinct held-out classes with distinct random labels; each context item and the
          query from one of them uniformly. Only the context can tell the query's label.
        - "iwl": the query from the training class distribution with its fixed label, the context from
          other training classes (each with its fixed label): only the weights can tell it.
        """
        rows = np.asarray(rows, np.int64).reshape(-1)
        if mode == "icl":
            if not 1 <= ways <= min(self.n_labels, self.n_heldout):
                raise ConfigError(f"ways={ways} must be in [1, min(n_labels, n_heldout)]")
            pool = np.argsort(uniform(seed, f"ways{k}", "test", rows, self.n_heldout), axis=1)[:, :ways]
            pick = integers(seed, f"pick{k}", "test", rows, k + 1, ways)
            classes = np.take_along_axis(pool, pick, axis=1) + self.n_classes
            return self._episodes(seed, "test", rows, classes, remap=True, distinct=pool + self.n_classes)
        if self.labels != "fixed":
            raise ConfigError("in-weights episodes need labels='fixed' (remapped labels are not in the weights)")
        cdf = np.cumsum(self.class_probabilities())
        u = uniform(seed, f"iwl{k}", "test", rows, k + 1)
        classes = np.minimum(np.searchsorted(cdf, u, side="right"), self.n_classes - 1)
        query = classes[:, -1:]
        context = np.where(classes[:, :-1] == query, (classes[:, :-1] + 1) % self.n_classes, classes[:, :-1])
        return self._episodes(seed, "test", rows, np.concatenate([context, query], axis=1), remap=False)

    def _episodes(
        self,
        seed: int,
        split: str,
        rows: np.ndarray,
        classes: np.ndarray,
        remap: bool,
        distinct: np.ndarray | None = None,
    ) -> Episodes:
        """Tokens of pairs of `classes` [n, pairs] (the last pair is the query). Remapped labels are a fresh
        random label per (sequence, class); with `distinct` [n, ways] classes, a random permutation of the
        labels instead, so those classes never share a label."""
        n, pairs = classes.shape
        total = self.n_classes + self.n_heldout
        if distinct is not None:
            perm = np.argsort(uniform(seed, f"labels{pairs}", split, rows, self.n_labels), axis=1)
            slot = np.argmax(classes[:, :, None] == distinct[:, None, :], axis=2)
            labels = np.take_along_axis(perm, slot, axis=1)
        elif remap:
            per_class = uniform(seed, "remap", split, rows, total)
            labels = (np.take_along_axis(per_class, classes, axis=1) * self.n_labels).astype(np.int64)
            labels = np.minimum(labels, self.n_labels - 1)
        else:
            labels = self.fixed_labels(seed)[classes]
        items = self.prototypes(seed)[classes]  # [n, pairs, item_len]
        width = pairs * self.item_len
        noisy = uniform(seed, "noise", split, rows, width).reshape(items.shape) < self.noise
        random_items = integers(seed, "noise_symbol", split, rows, width, self.n_symbols).reshape(items.shape)
        items = np.where(noisy, random_items, items)
        label_ids = self.first_id + labels
        tokens = np.concatenate([self.first_id + self.n_labels + items, label_ids[:, :, None]], axis=2)
        positions = np.arange(pairs) * self.pair_len + self.item_len - 1
        return Episodes(tokens.reshape(n, -1).astype(np.int32), label_ids, positions, classes)


@dataclass(frozen=True)
class LinearRegression:
    """`points` (x, y) pairs per sequence: x ~ N(0, I_dim), y = w.x + noise * N(0, 1), w ~ N(0, I_dim) drawn
    per sequence (Garg et al. 2022). E[y^2] = dim, so squared errors divided by dim put the zero predictor at 1."""

    dim: int = 5
    points: int = 20
    noise: float = 0.0
    kind: ClassVar[str] = "regression"

    def __post_init__(self) -> None:
        _check_positive(self, "dim", "points")
        if self.noise < 0:
            raise ConfigError(f"LinearRegression.noise must be >= 0, got {self.noise}")

    def sample(self, seed: int, split: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xs [n, points, dim], ys [n, points], w [n, dim]), float32."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        xs = normal(seed, "x", split, rows, self.points * self.dim).reshape(-1, self.points, self.dim)
        w = normal(seed, "w", split, rows, self.dim)
        ys = np.einsum("npd,nd->np", xs, w) + self.noise * normal(seed, "noise", split, rows, self.points)
        return xs.astype(np.float32), ys.astype(np.float32), w.astype(np.float32)


Generator = RepeatedTokens | CopiedSegments | FewShotClassification | LinearRegression


@dataclass(frozen=True)
class SyntheticSource:
    """A generator as a data source of gptjax.data.tasks: `sizes` sequences in its train, validation and
    test splits, generated from `seed`."""

    generator: Generator
    seed: int = 0
    sizes: tuple[int, int, int] = (1 << 15, 1024, 1024)
    splits: ClassVar[tuple[str, ...]] = SPLITS
    VERSION: ClassVar[int] = 2  # bump when a generator's output changes, so cached streams are rebuilt

    def __post_init__(self) -> None:
        if self.seed < 0 or len(self.sizes) != len(SPLITS) or min(self.sizes) <= 0:
            raise ConfigError(f"a synthetic source needs seed >= 0 and three positive sizes, got {self}")

    def arrays(self, split: str) -> dict[str, np.ndarray]:
        """The whole split: {"targets": tokens} for token tasks, {"xs", "ys"} for regression."""
        rows = np.arange(self.sizes[_counter(split)])
        if isinstance(self.generator, LinearRegression):
            xs, ys, _ = self.generator.sample(self.seed, split, rows)
            return {"xs": xs, "ys": ys}
        return {"targets": self.generator.tokens(self.seed, split, rows)}

    def check_vocabulary(self, name: str, vocab_size: int, eos_id: int) -> None:
        """Token ids must be ids of the vocabulary other than its EOS."""
        if isinstance(self.generator, LinearRegression):
            return
        low, high = self.generator.first_id, self.generator.max_id
        if high >= vocab_size or low <= eos_id <= high:
            raise ConfigError(
                f"synthetic task {name!r} uses token ids {low}..{high}, which must lie below the vocabulary's "
                f"size {vocab_size} and avoid its EOS id {eos_id}"
            )

    def fingerprint(self, tfds_data_dir: str = "") -> dict[str, Any]:
        return {
            "kind": "synthetic",
            "version": self.VERSION,
            "generator": type(self.generator).__name__,
            "parameters": dataclasses.asdict(self.generator),
            "seed": self.seed,
            "sizes": list(self.sizes),
        }


def unigram_entropy(n_symbols: int) -> float:
    """The loss (nats) of predicting a uniform random token over n_symbols ids: ln n_symbols."""
    return math.log(n_symbols)


__all__ = [
    "SPLITS",
    "CopiedSegments",
    "Episodes",
    "FewShotClassification",
    "Generator",
    "LinearRegression",
    "RepeatedTokens",
    "SyntheticSource",
    "integers",
    "normal",
    "uniform",
    "unigram_entropy",
]
