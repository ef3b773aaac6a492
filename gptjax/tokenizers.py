"""Tokenizers as seqio Vocabularies: raw UTF-8 bytes, GPT-2 byte-level BPE and SentencePiece.

Every vocabulary reports `vocab_size`, `eos_id` and a `name` derived from its content (so a results file
records exactly which tokenizer produced its numbers), compares equal by that name, and works both in
Python and inside seqio Tasks' `tokenize` preprocessor (`encode_tf` / `decode_tf`). Configs store a short
spec string, which `get_vocabulary` turns into a vocabulary.

`decode` follows seqio's contract (text before the first EOS, as for generated continuations); `decode_all`
renders every id and is the exact inverse of `encode`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import regex
import sentencepiece as spm
import seqio
import tensorflow as tf
from sentencepiece import sentencepiece_model_pb2

from gptjax.errors import InputNotFoundError
from gptjax.paths import data_path

EOT = "<|endoftext|>"  # GPT-2's end-of-text token: the EOS and document separator of every vocabulary here

# GPT-2's pre-tokenisation regex (openai/gpt-2 src/encoder.py), applied with the `regex` module for \p{..}.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Pre-token -> ids cache entries; text is Zipfian, so this covers nearly every word of an eval corpus.
WORD_CACHE_SIZE = 1 << 17


def _id_list(ids: Iterable[int] | np.ndarray | tf.Tensor) -> list[int]:
    """A 1-D id sequence (list, NumPy array or eager tensor) as Python ints."""
    array = np.asarray(ids)
    if array.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of token ids, got shape {array.shape}")
    return [int(i) for i in array]


class _NamedVocabulary:
    """Equality and hashing by `name`, which each vocabulary derives from its content rather than a path."""

    name: str

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.name == self.name

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.name))


class _ByteLevelVocabulary(_NamedVocabulary, seqio.Vocabulary):
    """A vocabulary where every id stands for a fixed byte string, so decoding is a table look-up.

    There is no UNK (every byte is representable), and the EOS token doubles as BOS, as in GPT-2.
    seqio pads with id 0, which is a real token here; seqio's own `decode_tf` would turn everything after
    EOS into that id, so `decode_tf` is overridden to drop those positions instead.
    """

    def __init__(self, token_bytes: Sequence[bytes], eos_id: int):
        super().__init__(extra_ids=0)
        self._token_bytes = tuple(token_bytes)
        self._eos_id = eos_id
        self._token_table: tf.Tensor | None = None

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def bos_id(self) -> int:
        return self._eos_id

    @property
    def unk_id(self) -> None:
        return None

    @property
    def _base_vocab_size(self) -> int:
        return len(self._token_bytes)

    def decode(self, ids: Iterable[int]) -> str:
        """The text before the first EOS."""
        ids = _id_list(ids)
        if self._eos_id in ids:
            ids = ids[: ids.index(self._eos_id)]
        return self._decode(ids)

    def decode_all(self, ids: Iterable[int]) -> str:
        """Every id, EOS included (as `<|endoftext|>`): the inverse of `encode`."""
        return self._decode(_id_list(ids))

    def _decode(self, ids: Sequence[int]) -> str:
        n = len(self._token_bytes)
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"{self.name}: token ids {bad[:8]} are outside [0, {n})")
        return b"".join([self._token_bytes[i] for i in ids]).decode("utf-8", errors="replace")

    def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """The text before the first EOS of each row (ids along the last axis)."""
        ids = tf.convert_to_tensor(ids)
        before_eos = tf.equal(tf.cumsum(tf.cast(tf.equal(ids, self._eos_id), tf.int32), axis=-1), 0)
        return self._decode_tf(tf.ragged.boolean_mask(ids, before_eos))

    def _decode_tf(self, ids: tf.Tensor | tf.RaggedTensor) -> tf.Tensor:
        if self._token_table is None:
            with tf.init_scope():  # an eager constant, so graphs traced later can all capture it
                self._token_table = tf.constant(self._token_bytes, dtype=tf.string)
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

    name = "byte"

    def __init__(self) -> None:
        super().__init__([bytes([b]) for b in range(256)] + [EOT.encode()], eos_id=256)

    def _encode(self, s: str) -> list[int]:
        return list(s.encode("utf-8"))

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.io.decode_raw(s, tf.uint8), tf.int32)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ByteVocabulary, ())

    def __repr__(self) -> str:
        return f"ByteVocabulary(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 bytes to printable characters, so BPE never sees whitespace or
    control bytes: printable Latin-1 bytes map to themselves, the rest to code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = (b for b in range(256) if b not in printable)
    codes = {b: b for b in printable} | {b: 256 + n for n, b in enumerate(extra)}
    return {b: chr(codes[b]) for b in range(256)}


class GPT2BPEVocabulary(_ByteLevelVocabulary):
    """GPT-2's byte-level BPE, in Python, from the original `encoder.json` and `vocab.bpe`.

    The algorithm is openai/gpt-2's `encoder.py`: split text with GPT2_PATTERN, map each pre-token's UTF-8
    bytes through `bytes_to_unicode`, then repeatedly merge the adjacent pair of lowest merge rank. As in
    Hugging Face's GPT-2 tokenizer, the literal `<|endoftext|>` in text is the special token (id 50256).
    Each distinct pre-token is merged once and then served from an LRU cache.
    """

    def __init__(self, encoder_json: str | Path | None = None, vocab_bpe: str | Path | None = None):
        self.encoder_json = Path(encoder_json) if encoder_json else data_path("tokenizers", "gpt2", "encoder.json")
        self.vocab_bpe = Path(vocab_bpe) if vocab_bpe else data_path("tokenizers", "gpt2", "vocab.bpe")
        encoder: dict[str, int] = json.loads(self.encoder_json.read_text(encoding="utf-8"))
        if sorted(encoder.values()) != list(range(len(encoder))):
            raise ValueError(f"{self.encoder_json}: token ids are not exactly 0..{len(encoder) - 1}")
        if EOT not in encoder:
            raise ValueError(f"{self.encoder_json} has no {EOT} token")
        lines = self.vocab_bpe.read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        malformed = [m for m in merges if len(m) != 2]
        if malformed:
            raise ValueError(f"{self.vocab_bpe}: merge lines must hold two symbols, got {malformed[:3]}")

        self._encoder = encoder
        self._ranks: dict[tuple[str, str], int] = {(a, b): rank for rank, (a, b) in enumerate(merges)}
        self._byte_encoder = bytes_to_unicode()
        byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        tokens = sorted(encoder, key=encoder.__getitem__)
        super().__init__([bytes(byte_decoder[c] for c in token) for token in tokens], eos_id=encoder[EOT])
        self._pattern = regex.compile(GPT2_PATTERN)
        self._word_ids = functools.lru_cache(maxsize=WORD_CACHE_SIZE)(self._bpe)
        content = json.dumps([tokens, merges], ensure_ascii=False).encode("utf-8")
        self.name = f"gpt2-bpe-{hashlib.sha256(content).hexdigest()[:12]}"

    def _bpe(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-token: merge the lowest-ranked adjacent pair until no pair has a rank."""
        parts = [self._byte_encoder[b] for b in word.encode("utf-8")]
        ranks = self._ranks
        while len(parts) > 1:
            best = min(zip(parts, parts[1:]), key=lambda pair: ranks.get(pair, len(ranks)))
            if best not in ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(self._encoder[part] for part in parts)

    def _encode(self, s: str) -> list[int]:
        ids: list[int] = []
        for n, segment in enumerate(s.split(EOT)):
            if n:
                ids.append(self._eos_id)
            for word in self._pattern.findall(segment):
                ids.extend(self._word_ids(word))
        return ids

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


class SentencePieceVocabulary(_NamedVocabulary, seqio.SentencePieceVocabulary):
    """seqio's SentencePiece vocabulary with a content-derived name and `decode_all`.

    Models from `train_sentencepiece` follow seqio's id convention (PAD 0, EOS 1, UNK 2, no BOS).
    """

    def __init__(self, model_file: str | Path):
        if not Path(model_file).is_file():
            raise InputNotFoundError(f"SentencePiece model {model_file} does not exist")
        super().__init__(str(model_file))

    @functools.cached_property
    def name(self) -> str:  # type: ignore[override]  # computed from the model, where the base declares a field
        proto = sentencepiece_model_pb2.ModelProto.FromString(self.sp_model)  # type: ignore[attr-defined]
        spec = sentencepiece_model_pb2.TrainerSpec  # type: ignore[attr-defined]  # generated protobuf module
        kind = spec.ModelType.Name(proto.trainer_spec.model_type).lower()
        return f"sentencepiece-{kind}-{self.vocab_size}-{hashlib.md5(self.sp_model).hexdigest()[:12]}"

    def decode_all(self, ids: Iterable[int]) -> str:
        """Every id, not stopping at EOS (control tokens such as EOS render as empty text)."""
        return self._decode(_id_list(ids))

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


SPEC_FORMS = ("'byte'", "'gpt2'", "'gpt2:DIR' (DIR holds encoder.json and vocab.bpe)", "'sentencepiece:FILE.model'")


@functools.cache
def get_vocabulary(spec: str) -> seqio.Vocabulary:
    """The vocabulary a spec string names; cached, since loading GPT-2's files takes a noticeable fraction
    of a second and seqio Tasks ask for their vocabulary repeatedly."""
    kind, _, arg = spec.partition(":")
    if spec == "byte":
        return ByteVocabulary()
    if kind == "gpt2":
        directory = Path(arg).expanduser() if arg else data_path("tokenizers", "gpt2")
        return GPT2BPEVocabulary(directory / "encoder.json", directory / "vocab.bpe")
    if kind == "sentencepiece" and arg:
        return SentencePieceVocabulary(Path(arg).expanduser())
    raise ValueError(f"unknown tokenizer spec {spec!r}; valid forms: {', '.join(SPEC_FORMS)}")


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
