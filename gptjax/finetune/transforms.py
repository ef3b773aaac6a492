"""GPT-1's task input transformations (Radford et al. 2018, §3.3): structured inputs become token sequences
with three new tokens, start ⟨s⟩, delimiter ($) and extract ⟨e⟩, appended after the pretrained vocabulary.

A labelled example is a tuple of *sequences*, each a tuple of text segments; every sequence becomes
⟨s⟩ seg_1 $ seg_2 ... $ seg_n ⟨e⟩, so one rule covers every task kind:
- classification: ((text,),)                         -> ⟨s⟩ text ⟨e⟩
- entailment:     ((premise, hypothesis),)           -> ⟨s⟩ premise $ hypothesis ⟨e⟩
- similarity:     ((a, b), (b, a))                   -> both orders, states added before the head
- multiple choice: ((context, answer_1), ..., (context, answer_K)) -> one score per sequence, softmax over K

Invariants: the extract token is always the last real token of a sequence (the head reads that position);
a sequence too long for the context loses tokens from the *start* of its first segment (the end of the
context, next to the delimiter, is kept), down to half the room; beyond that later segments lose their
ends; every batch array is [batch, ...] with rank >= 2, as the
trainer's batch sharding expects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gptjax.config import RunConfig
from gptjax.errors import GptjaxError


class TransformError(GptjaxError, ValueError):
    """An example cannot be turned into a sequence (e.g. its later segments alone exceed the context)."""


@dataclass(frozen=True)
class SpecialTokens:
    """The ids of ⟨s⟩, $ and ⟨e⟩: the three rows after the pretrained model's `vocab_size` rows."""

    start: int
    delimiter: int
    extract: int

    @classmethod
    def after(cls, vocab_size: int) -> SpecialTokens:
        return cls(vocab_size, vocab_size + 1, vocab_size + 2)

    def named(self) -> dict[str, int]:
        """Name -> id (how a Hugging Face export lists them)."""
        return dict(zip(NAMES, (self.start, self.delimiter, self.extract)))


NAMES = ("_start_", "_delimiter_", "_classify_")  # ⟨s⟩, $ and ⟨e⟩ as GPT-1's reference code names them
NUM_SPECIAL = len(NAMES)


def added_tokens(run: RunConfig) -> dict[str, int]:
    """The tokens a run added to its vocabulary: a fine-tuning run's three special tokens, else none."""
    return SpecialTokens.after(run.model.vocab_size - NUM_SPECIAL).named() if run.finetune.task else {}


@dataclass(frozen=True)
class Example:
    """One labelled example: its sequences (each a tuple of text segments) and the label (a class, or the
    index of the right sequence for multiple choice)."""

    sequences: tuple[tuple[str, ...], ...]
    label: int


def render(example: Example) -> str:
    """How `example` reads before tokenisation: one line per sequence, special tokens by name, then the label."""
    start, delimiter, extract = NAMES
    lines = [f"{start} {f' {delimiter} '.join(seq)} {extract}" for seq in example.sequences]
    return "\n".join([*lines, f"label: {example.label}"])


def transform(segments: Sequence[Sequence[int]], special: SpecialTokens, max_len: int) -> list[int]:
    """⟨s⟩ seg_1 $ seg_2 ... ⟨e⟩ as token ids, at most `max_len` long (module docstring: truncation)."""
    budget = max_len - len(segments) - 1
    if budget < len(segments):
        raise TransformError(f"max_len={max_len} leaves no room for {len(segments)} segments and special tokens")
    rest = sum(len(s) for s in segments[1:])
    keep = min(len(segments[0]), max(budget - rest, budget // 2))
    ids = [special.start] + list(segments[0])[len(segments[0]) - keep :]
    for j, seg in enumerate(segments[1:]):
        room = max(0, max_len - 1 - len(ids) - (len(segments) - 1 - j))  # ⟨e⟩ and this and later delimiters
        ids += [special.delimiter] + list(seg)[:room]
    return ids + [special.extract]


def encode_examples(
    examples: Sequence[Example],
    encode: Callable[[str], list[int]],
    special: SpecialTokens,
    max_len: int,
    num_sequences: int,
) -> dict[str, np.ndarray]:
    """Arrays for `examples`, padded to `num_sequences` sequences of `max_len` tokens:
    inputs/targets/lm_mask [n, K, L] (targets = inputs shifted by one; lm_mask marks the predicted real
    tokens, ⟨e⟩ included, as GPT-1's reference code does), extract [n, K] (the ⟨e⟩ position),
    sequence_mask [n, K] (real sequences) and label [n, 1]."""
    n = len(examples)
    tokens = np.zeros((n, num_sequences, max_len + 1), np.int32)
    lm_mask = np.zeros((n, num_sequences, max_len), np.float32)
    extract = np.zeros((n, num_sequences), np.int32)
    sequence_mask = np.zeros((n, num_sequences), np.float32)
    cache: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        if len(example.sequences) > num_sequences:
            raise TransformError(f"example {i} has {len(example.sequences)} sequences, more than {num_sequences}")
        for k, sequence in enumerate(example.sequences):
            ids = transform([cache.setdefault(s, encode(s)) for s in sequence], special, max_len)
            tokens[i, k, : len(ids)] = ids
            lm_mask[i, k, : len(ids) - 1] = 1.0
            extract[i, k] = len(ids) - 1
            sequence_mask[i, k] = 1.0
    return {
        "inputs": tokens[..., :-1],
        "targets": tokens[..., 1:],
        "lm_mask": lm_mask,
        "extract": extract,
        "sequence_mask": sequence_mask,
        "label": np.array([[e.label] for e in examples], np.int32).reshape(n, 1),
    }


__all__ = [
    "NUM_SPECIAL",
    "Example",
    "SpecialTokens",
    "TransformError",
    "added_tokens",
    "encode_examples",
    "render",
    "transform",
]
