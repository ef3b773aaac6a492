"""Tokenizers as seqio Vocabularies: raw UTF-8 bytes, GPT-2 byte-level BPE and SentencePiece.

The algorithms are gptjax.plain_tokenizers' (plain Python, usable without TensorFlow); the classes here add
what seqio Tasks' `tokenize` preprocessor needs (`encode_tf` / `decode_tf`) and report the same
content-derived `name`, so a results file records exactly which tokenizer produced its numbers whichever
side tokenised. Configs store a short spec string, which `get_vocabulary` turns into a vocabulary.

`decode` follows seqio's contract (text before the first EOS, as for generated continuations); `decode_all`
renders every id and is the exact inverse of `encode`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import sentencepiece as spm
import seqio
import tensorflow as tf

from gptjax.errors import InputNotFoundError
from gptjax.plain_tokenizers import (
    EOT,
    GPT2_PATTERN,
    ByteLevelTokenizer,
    ByteTokenizer,
    GPT2BPETokenizer,
    NamedByContent,
    SentencePieceTokenizer,
    bytes_to_unicode,
    get_tokenizer,
    id_list,
    sentencepiece_name,
)


class _ByteLevelVocabulary(NamedByContent, seqio.Vocabulary):
    """A plain byte-level tokenizer (every id a fixed byte string) as a seqio Vocabulary.

    There is no UNK (every byte is representable), and the EOS token doubles as BOS, as in GPT-2.
    seqio pads with id 0, which is a real token here; seqio's own `decode_tf` would turn everything after
    EOS into that id, so `decode_tf` is overridden to drop those positions instead.
    """

    def __init__(self, plain: ByteLevelTokenizer):
        super().__init__(extra_ids=0)
        self.plain = plain
        self.name = plain.name
        self._token_table: tf.Tensor | None = None

    @property
    def eos_id(self) -> int:
        return self.plain.eos_id

    @property
    def bos_id(self) -> int:
        return self.plain.eos_id

    @property
    def unk_id(self) -> None:
        return None

    @property
    def _base_vocab_size(self) -> int:
        return self.plain.vocab_size

    def _encode(self, s: str) -> list[int]:
        return self.plain.encode(s)

    def decode(self, ids: Iterable[int]) -> str:
        """The text before the first EOS."""
        return self.plain.decode(ids)

    def decode_all(self, ids: Iterable[int]) -> str:
        """Every id, EOS included (as `<|endoftext|>`): the inverse of `encode`."""
        return self.plain.decode_all(ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.plain.decode_all(ids)

    def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """The text before the first EOS of each row (ids along the last axis)."""
        ids = tf.convert_to_tensor(ids)
        before_eos = tf.equal(tf.cumsum(tf.cast(tf.equal(ids, self.eos_id), tf.int32), axis=-1), 0)
        return self._decode_tf(tf.ragged.boolean_mask(ids, before_eos))

    def _decode_tf(self, ids: tf.Tensor | tf.RaggedTensor) -> tf.Tensor:
        if self._token_table is None:
            with tf.init_scope():  # an eager constant, so graphs traced later can all capture it
                self._token_table = tf.constant(self.plain.token_bytes, dtype=tf.string)
        text = tf.strings.reduce_join(tf.gather(self._token_table, ids), axis=-1)
        # Same replacement of invalid UTF-8 as Python's errors="replace" (the tests check they agree).
        return tf.strings.unicode_transcode(
            text, input_encoding="UTF-8", output_encoding="UTF-8", errors="replace", replacement_char=0xFFFD
        )


class ByteVocabulary(_ByteLevelVocabulary):
    """Ids 0..255 are raw UTF-8 bytes and 256 is `<|endoftext|>`: the tokenizer of the tiny presets.

    Unlike seqio's ByteVocabulary (ByT5: ids shifted by 3 for PAD/EOS/UNK) a byte is its own id, and the
    literal text `<|endoftext|>` is encoded as its 13 bytes; only the data pipeline inserts id 256.
    """

    def __init__(self) -> None:
        super().__init__(ByteTokenizer())

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.io.decode_raw(s, tf.uint8), tf.int32)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ByteVocabulary, ())

    def __repr__(self) -> str:
        return f"ByteVocabulary(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


class GPT2BPEVocabulary(_ByteLevelVocabulary):
    """GPT-2's byte-level BPE (gptjax.plain_tokenizers.GPT2BPETokenizer) from `encoder.json` and `vocab.bpe`
    (or Hugging Face's `vocab.json` and `merges.txt`); the defaults are the shared GPT-2 files."""

    plain: GPT2BPETokenizer

    def __init__(self, encoder_json: str | Path | None = None, vocab_bpe: str | Path | None = None):
        super().__init__(GPT2BPETokenizer.from_files(encoder_json, vocab_bpe))
        self.encoder_json, self.vocab_bpe = self.plain.files

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        """Runs the Python encoder through tf.numpy_function: fine for tf.data, not for a SavedModel."""
        if s.shape.rank not in (None, 0):
            raise ValueError(f"{self.name}: encode_tf takes one scalar string, got shape {s.shape}")
        ids = tf.numpy_function(self._encode_numpy, [s], tf.int32, stateful=False)
        ids.set_shape([None])
        return ids

    def _encode_numpy(self, s: bytes | np.ndarray) -> np.ndarray:
        """numpy_function hands over `bytes` when traced and a 0-d object array when eager."""
        data = s.item() if isinstance(s, np.ndarray) else s
        return np.asarray(self._encode(data.decode("utf-8")), np.int32)

    def __reduce__(self) -> tuple[Any, ...]:
        return (GPT2BPEVocabulary, (self.encoder_json, self.vocab_bpe))

    def __repr__(self) -> str:
        return (
            f"GPT2BPEVocabulary(name={self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id}, "
            f"encoder_json='{self.encoder_json}', vocab_bpe='{self.vocab_bpe}')"
        )


class SentencePieceVocabulary(NamedByContent, seqio.SentencePieceVocabulary):
    """seqio's SentencePiece vocabulary with a content-derived name and `decode_all`.

    Models from `train_sentencepiece` follow seqio's id convention (PAD 0, EOS 1, UNK 2, no BOS).
    """

    def __init__(self, model_file: str | Path):
        if not Path(model_file).is_file():
            raise InputNotFoundError(f"SentencePiece model {model_file} does not exist")
        super().__init__(str(model_file))

    @functools.cached_property
    def name(self) -> str:  # type: ignore[override]  # computed from the model, where the base declares a field
        return sentencepiece_name(self.sp_model)

    def decode_all(self, ids: Iterable[int]) -> str:
        """Every id, not stopping at EOS (control tokens such as EOS render as empty text)."""
        return self._decode(id_list(ids))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("name", None)  # the cached name is recomputed from the model after unpickling
        return state

    def __repr__(self) -> str:
        return (
            f"SentencePieceVocabulary(name={self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id}, "
            f"model_file='{self.sentencepiece_model_file}')"
        )

    def __str__(self) -> str:
        return repr(self)


def train_sentencepiece(
    corpus_paths: Sequence[str | Path],
    model_prefix: str | Path,
    vocab_size: int,
    model_type: Literal["bpe", "unigram"] = "bpe",
    *,
    character_coverage: float = 1.0,
    byte_fallback: bool = False,
    verbose: bool = False,
    **options: Any,
) -> Path:
    """Train a SentencePiece model on text files; returns the path of `{model_prefix}.model`.

    Defaults are chosen so `decode(encode(text)) == text` for every character seen in training: no
    normalisation and no whitespace collapsing (perplexities must be over the real text), "\\n" as a piece
    of its own (SentencePiece trains line by line and would otherwise map newlines to UNK), and
    whitespace-only pieces allowed. `byte_fallback` makes unseen characters lossless too, at the cost of
    256 byte pieces. `options` are further SentencePiece trainer flags and override these defaults.
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    paths = [Path(p) for p in corpus_paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise InputNotFoundError(f"corpus files not found: {missing or 'none given'}")
    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = dict(
        input=[str(p) for p in paths],
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=byte_fallback,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=["\n"],
        num_threads=os.cpu_count() or 1,
    )
    settings.update(options)
    # minloglevel rather than `logstream`, which redirects the process's stderr file descriptor.
    spm.SentencePieceTrainer.train(minloglevel=0 if verbose else 2, **settings)
    return prefix.with_name(prefix.name + ".model")


def tokenizer_command(argv: Sequence[str]) -> int:
    """`gptjax tokenizer train --corpus FILE... --vocab-size N --out PREFIX`; returns the exit code."""
    parser = argparse.ArgumentParser(prog="gptjax tokenizer", description="Build tokenizers.")
    actions = parser.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help="train a SentencePiece model (writes PREFIX.model, PREFIX.vocab)")
    train.add_argument("--corpus", nargs="+", required=True, type=Path, metavar="FILE")
    train.add_argument("--vocab-size", required=True, type=int)
    train.add_argument("--out", required=True, type=Path, metavar="PREFIX")
    train.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    train.add_argument("--character-coverage", type=float, default=1.0)
    train.add_argument("--byte-fallback", action="store_true", help="encode unseen characters as bytes")
    train.add_argument("--verbose", action="store_true", help="show SentencePiece's training log")
    args = parser.parse_args(list(argv))
    try:
        model = train_sentencepiece(
            args.corpus,
            args.out,
            args.vocab_size,
            args.model_type,
            character_coverage=args.character_coverage,
            byte_fallback=args.byte_fallback,
            verbose=args.verbose,
        )
    except (ValueError, OSError, RuntimeError) as e:
        print(f"gptjax tokenizer: error: {e}", file=sys.stderr)
        return 1
    vocab = SentencePieceVocabulary(model)
    print(f"wrote {model} ({vocab.name}); use --tokenizer sentencepiece:{model}")
    return 0


@functools.cache
def get_vocabulary(spec: str) -> seqio.Vocabulary:
    """The vocabulary a spec string names (forms: gptjax.plain_tokenizers.SPEC_FORMS): the seqio wrapper of
    `get_tokenizer(spec)`; cached, since seqio Tasks ask for their vocabulary repeatedly."""
    plain = get_tokenizer(spec)
    if isinstance(plain, SentencePieceTokenizer):
        return SentencePieceVocabulary(plain.model_file)
    if isinstance(plain, GPT2BPETokenizer):
        return GPT2BPEVocabulary(*plain.files)
    return ByteVocabulary()


__all__ = [
    "EOT",
    "GPT2_PATTERN",
    "ByteVocabulary",
    "GPT2BPEVocabulary",
    "SentencePieceVocabulary",
    "bytes_to_unicode",
    "get_vocabulary",
    "tokenizer_command",
    "train_sentencepiece",
]
