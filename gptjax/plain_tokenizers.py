"""Tokenizers in plain Python: raw UTF-8 bytes, GPT-2 byte-level BPE and SentencePiece, without TensorFlow.

Inference (evaluation, generation, export) needs only `encode` and `decode`, and importing TensorFlow, which
seqio needs, takes about 4 s: longer than loading a model and scoring a small benchmark. So the algorithms
live here, and gptjax.tokenizers wraps these same objects as seqio Vocabularies for the data pipeline; both
report the same content-derived `name`, which is what results files record.

Every tokenizer reports `vocab_size`, `eos_id` and `name`, compares equal by type and name, and follows
seqio's decode contract: `decode` gives the text before the first EOS (as for generated continuations),
`decode_all` renders every id and is the exact inverse of `encode`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import regex
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from gptjax.errors import GptjaxError, InputNotFoundError
from gptjax.paths import data_path

EOT = "<|endoftext|>"  # GPT-2's end-of-text token: the EOS and document separator of every vocabulary here

# GPT-2's pre-tokenisation regex (openai/gpt-2 src/encoder.py), applied with the `regex` module for \p{..}.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Pre-token -> ids cache entries; text is Zipfian, so this covers nearly every word of an eval corpus.
WORD_CACHE_SIZE = 1 << 17

# The two files of a GPT-2 BPE, as Hugging Face names them and as OpenAI's release does.
BPE_FILE_NAMES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))

SPEC_FORMS = (
    "'byte'",
    "'gpt2'",
    "'gpt2:DIR' (DIR holds vocab.json + merges.txt or encoder.json + vocab.bpe)",
    "'sentencepiece:FILE.model'",
)


def id_list(ids: Iterable[int] | np.ndarray) -> list[int]:
    """A 1-D id sequence (list, NumPy array or anything NumPy converts, e.g. an eager tensor) as Python ints."""
    array = np.asarray(ids)
    if array.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of token ids, got shape {array.shape}")
    return [int(i) for i in array]


class TokenizerError(GptjaxError, ValueError):
    """Tokenizer files are malformed, or are not the tokenizer they are read as; the message names them."""


class NamedByContent:
    """Equality and hashing by type and `name`, which each tokenizer derives from its content, not a path."""

    name: str

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.name == self.name  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.name))


class ByteLevelTokenizer(NamedByContent):
    """A tokenizer where every id stands for a fixed byte string, so decoding is a table look-up; the EOS
    token doubles as BOS, as in GPT-2."""

    def __init__(self, token_bytes: Sequence[bytes], eos_id: int):
        self.token_bytes = tuple(token_bytes)
        self._eos_id = eos_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    def encode(self, s: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """The text before the first EOS."""
        ids = id_list(ids)
        if self._eos_id in ids:
            ids = ids[: ids.index(self._eos_id)]
        return self._decode(ids)

    def decode_all(self, ids: Iterable[int]) -> str:
        """Every id, EOS included (as `<|endoftext|>`): the inverse of `encode`."""
        return self._decode(id_list(ids))

    def _decode(self, ids: Sequence[int]) -> str:
        n = len(self.token_bytes)
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"{self.name}: token ids {bad[:8]} are outside [0, {n})")
        return b"".join([self.token_bytes[i] for i in ids]).decode("utf-8", errors="replace")


class ByteTokenizer(ByteLevelTokenizer):
    """Ids 0..255 are raw UTF-8 bytes and 256 is `<|endoftext|>` (the literal text encodes as its 13 bytes)."""

    name = "byte"

    def __init__(self) -> None:
        super().__init__([bytes([b]) for b in range(256)] + [EOT.encode()], eos_id=256)

    def encode(self, s: str) -> list[int]:
        return list(s.encode("utf-8"))

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 bytes to printable characters, so BPE never sees whitespace or
    control bytes: printable Latin-1 bytes map to themselves, the rest to code points from 256 up."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = (b for b in range(256) if b not in printable)
    codes = {b: b for b in printable} | {b: 256 + n for n, b in enumerate(extra)}
    return {b: chr(codes[b]) for b in range(256)}


def bpe_files(directory: str | Path) -> tuple[Path, Path] | None:
    """(vocabulary, merges) of the GPT-2 BPE in `directory` (Hugging Face's names first, then OpenAI's),
    or None when it holds neither pair."""
    directory = Path(directory)
    for vocab, merges in BPE_FILE_NAMES:
        if (directory / vocab).is_file() and (directory / merges).is_file():
            return directory / vocab, directory / merges
    return None


class GPT2BPETokenizer(ByteLevelTokenizer):
    """GPT-2's byte-level BPE from its vocabulary (token -> id) and ranked merges; `from_files` reads them
    from `encoder.json` + `vocab.bpe` (or `vocab.json` + `merges.txt`; the defaults are the shared GPT-2
    files), `from_tokenizer_json` from a Hugging Face `tokenizer.json` that describes the same algorithm.

    The algorithm is openai/gpt-2's `encoder.py`: split text with GPT2_PATTERN, map each pre-token's UTF-8
    bytes through `bytes_to_unicode`, then repeatedly merge the adjacent pair of lowest merge rank. As in
    Hugging Face's GPT-2 tokenizer, the literal `<|endoftext|>` in text is the special token (id 50256).
    Each distinct pre-token is merged once and then served from an LRU cache. `source` says where the
    vocabulary was read from.
    """

    def __init__(self, encoder: dict[str, int], merges: Sequence[tuple[str, ...]], source: str):
        if sorted(encoder.values()) != list(range(len(encoder))):
            raise TokenizerError(f"{source}: token ids are not exactly 0..{len(encoder) - 1}")
        if EOT not in encoder:
            raise TokenizerError(f"{source} has no {EOT} token")
        malformed = [m for m in merges if len(m) != 2]
        if malformed:
            raise TokenizerError(f"{source}: merges must hold two symbols each, got {malformed[:3]}")
        self.source = source
        self.files: tuple[Path, ...] = ()  # the files it was read from, when it was
        self._encoder = encoder
        self._merges = [(a, b) for a, b in merges]
        self._ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(self._merges)}
        self._byte_encoder = bytes_to_unicode()
        byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        tokens = sorted(encoder, key=encoder.__getitem__)
        super().__init__([bytes(byte_decoder[c] for c in token) for token in tokens], eos_id=encoder[EOT])
        self._pattern = regex.compile(GPT2_PATTERN)
        self._word_ids = functools.lru_cache(maxsize=WORD_CACHE_SIZE)(self._bpe)
        content = json.dumps([tokens, self._merges], ensure_ascii=False).encode("utf-8")
        self.name = f"gpt2-bpe-{hashlib.sha256(content).hexdigest()[:12]}"

    @classmethod
    def from_files(
        cls, encoder_json: str | Path | None = None, vocab_bpe: str | Path | None = None
    ) -> GPT2BPETokenizer:
        encoder_json = Path(encoder_json) if encoder_json else data_path("tokenizers", "gpt2", "encoder.json")
        vocab_bpe = Path(vocab_bpe) if vocab_bpe else data_path("tokenizers", "gpt2", "vocab.bpe")
        encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
        lines = vocab_bpe.read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        tokenizer = cls(encoder, merges, f"{encoder_json} + {vocab_bpe}")
        tokenizer.files = (encoder_json, vocab_bpe)
        return tokenizer

    @classmethod
    def from_tokenizer_json(cls, path: str | Path) -> GPT2BPETokenizer:
        """A Hugging Face `tokenizer.json` (what transformers 5 saves) that is GPT-2's BPE; any setting that
        would tokenise differently is refused, naming it."""
        path = Path(path)
        spec = json.loads(path.read_text(encoding="utf-8"))
        model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
        expected = {
            "model.type": (model.get("type"), "BPE"),
            "model.dropout": (model.get("dropout"), None),
            "model.continuing_subword_prefix": (model.get("continuing_subword_prefix") or "", ""),
            "model.end_of_word_suffix": (model.get("end_of_word_suffix") or "", ""),
            "model.ignore_merges": (model.get("ignore_merges", False), False),
            "model.byte_fallback": (model.get("byte_fallback", False), False),
            "normalizer": (spec.get("normalizer"), None),
            "pre_tokenizer.type": (pre.get("type"), "ByteLevel"),
            "pre_tokenizer.add_prefix_space": (pre.get("add_prefix_space"), False),
            "pre_tokenizer.use_regex": (pre.get("use_regex", True), True),
        }
        wrong = [f"{key}={got!r} (GPT-2: {want!r})" for key, (got, want) in expected.items() if got != want]
        vocab = model.get("vocab") or {}
        extra = [t for t in spec.get("added_tokens", []) if vocab.get(t["content"]) != t["id"]]
        if extra:
            wrong.append(f"added_tokens outside the vocabulary: {[t['content'] for t in extra][:5]}")
        if wrong:
            raise TokenizerError(f"{path} is not GPT-2's byte-level BPE: {'; '.join(wrong)}")
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        tokenizer = cls(vocab, merges, str(path))
        tokenizer.files = (path,)
        return tokenizer

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

    def encode(self, s: str) -> list[int]:
        ids: list[int] = []
        for n, segment in enumerate(s.split(EOT)):
            if n:
                ids.append(self._eos_id)
            for word in self._pattern.findall(segment):
                ids.extend(self._word_ids(word))
        return ids

    def __reduce__(self) -> tuple[Any, ...]:
        return (GPT2BPETokenizer, (self._encoder, self._merges, self.source))

    def __repr__(self) -> str:
        return f"GPT2BPETokenizer(name={self.name!r}, vocab_size={self.vocab_size}, source='{self.source}')"


# Files of tokenizers of other kinds than GPT-2's BPE (SentencePiece, WordPiece) that a model dir may hold.
OTHER_TOKENIZER_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.txt")
GPT2_TOKENIZER_CLASSES = ("GPT2Tokenizer", "GPT2TokenizerFast")


def hf_dir_tokenizer(directory: str | Path) -> GPT2BPETokenizer | None:
    """The tokenizer saved in a Hugging Face model dir, or None when it holds none.

    `tokenizer.json` (what transformers loads first, and all that transformers 5 saves) if present, else the
    BPE file pair (vocab.json + merges.txt, or encoder.json + vocab.bpe); when both are present they must
    agree. A tokenizer gptjax does not implement (tokenizer_config.json naming another class, SentencePiece
    or WordPiece files) is an error rather than None, so it is never silently replaced by another one.
    """
    directory = Path(directory)
    config = directory / "tokenizer_config.json"
    if config.is_file():
        tokenizer_class = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
        if tokenizer_class is not None and tokenizer_class not in GPT2_TOKENIZER_CLASSES:
            raise TokenizerError(
                f"{config}: tokenizer_class {tokenizer_class!r} is not one of {list(GPT2_TOKENIZER_CLASSES)}, "
                "the only tokenizer gptjax implements"
            )
    files = bpe_files(directory)
    from_files = GPT2BPETokenizer.from_files(*files) if files else None
    if not (directory / "tokenizer.json").is_file():
        other = [name for name in OTHER_TOKENIZER_FILES if (directory / name).is_file()]
        if from_files is None and other:
            raise TokenizerError(f"{directory} holds {other}, not a GPT-2 BPE: the only tokenizer gptjax implements")
        return from_files
    tokenizer = GPT2BPETokenizer.from_tokenizer_json(directory / "tokenizer.json")
    if from_files is not None and from_files.name != tokenizer.name:
        raise TokenizerError(
            f"{directory}: tokenizer.json ({tokenizer.name}) and {from_files.source} ({from_files.name}) are "
            "different tokenizers"
        )
    return tokenizer


def sentencepiece_name(model_proto: bytes) -> str:
    """The content-derived name of a serialised SentencePiece model: its type, size and a hash."""
    proto = sentencepiece_model_pb2.ModelProto.FromString(model_proto)  # type: ignore[attr-defined]
    spec = sentencepiece_model_pb2.TrainerSpec  # type: ignore[attr-defined]  # generated protobuf module
    kind = spec.ModelType.Name(proto.trainer_spec.model_type).lower()
    return f"sentencepiece-{kind}-{len(proto.pieces)}-{hashlib.md5(model_proto).hexdigest()[:12]}"


class SentencePieceTokenizer(NamedByContent):
    """A SentencePiece model as seqio's SentencePieceVocabulary (no extra ids) uses it: the model is
    re-serialised as seqio does (so the name hashes the same bytes), ids outside the model decode as UNK."""

    def __init__(self, model_file: str | Path):
        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise InputNotFoundError(f"SentencePiece model {model_file} does not exist")
        proto = sentencepiece_model_pb2.ModelProto.FromString(self.model_file.read_bytes())  # type: ignore[attr-defined]
        self.sp_model = proto.SerializeToString()
        self.processor = spm.SentencePieceProcessor()
        self.processor.LoadFromSerializedProto(self.sp_model)
        self.name = sentencepiece_name(self.sp_model)

    @property
    def eos_id(self) -> int:
        return self.processor.eos_id()

    @property
    def vocab_size(self) -> int:
        return self.processor.GetPieceSize()

    def encode(self, s: str) -> list[int]:
        return self.processor.EncodeAsIds(s)

    def decode(self, ids: Iterable[int]) -> str:
        """The text up to the first EOS (a control token, rendered as nothing)."""
        ids = id_list(ids)
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id) + 1]
        return self.decode_all(ids)

    def decode_all(self, ids: Iterable[int]) -> str:
        unk, size = self.processor.unk_id(), self.vocab_size
        return self.processor.DecodeIds([i if i < size else unk for i in id_list(ids)])

    def __reduce__(self) -> tuple[Any, ...]:
        return (SentencePieceTokenizer, (self.model_file,))

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(name={self.name!r}, model_file='{self.model_file}')"


Tokenizer = ByteTokenizer | GPT2BPETokenizer | SentencePieceTokenizer


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """(kind, path) of a tokenizer spec: ("byte", None), ("gpt2", DIR or None), ("sentencepiece", FILE)."""
    kind, _, arg = spec.partition(":")
    if spec == "byte":
        return "byte", None
    if kind == "gpt2" and (spec == "gpt2" or arg):
        return "gpt2", Path(arg).expanduser() if arg else None
    if kind == "sentencepiece" and arg:
        return "sentencepiece", Path(arg).expanduser()
    raise ValueError(f"unknown tokenizer spec {spec!r}; valid forms: {', '.join(SPEC_FORMS)}")


def gpt2_files(directory: Path | None) -> tuple[Path, Path]:
    """The BPE files of a `gpt2[:DIR]` spec (DIR's, else the shared GPT-2 files); OpenAI's names when DIR
    holds neither pair, so the error names the files that were looked for."""
    directory = directory or data_path("tokenizers", "gpt2")
    return bpe_files(directory) or (directory / "encoder.json", directory / "vocab.bpe")


@functools.cache
def get_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer a spec string names; cached, since loading GPT-2's files takes a noticeable fraction of
    a second."""
    kind, path = parse_spec(spec)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "gpt2":
        return GPT2BPETokenizer.from_files(*gpt2_files(path))
    return SentencePieceTokenizer(path)  # type: ignore[arg-type]


__all__ = [
    "EOT",
    "GPT2_PATTERN",
    "ByteLevelTokenizer",
    "ByteTokenizer",
    "GPT2BPETokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "bpe_files",
    "bytes_to_unicode",
    "get_tokenizer",
    "hf_dir_tokenizer",
    "parse_spec",
]
