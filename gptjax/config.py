"""Typed, frozen configuration: the model presets and the `key=value` override language.

Every knob lives in a frozen dataclass so a resolved config can be written to `config.json`, diffed and
rebuilt exactly. Validation happens at construction and names the offending values.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

AttentionKind = Literal["dense", "banded"]

# GPT-3 does not publish the width of its locally banded sparse layers; we use GPT-Neo's 256 (its public
# replication of the GPT-3 alternating pattern) and keep it a config field.
GPT3_BAND_WIDTH = 256


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the value."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one GPT-family model.

    `d_head` defaults to d_model // n_heads; GPT-3 13B is the one published model where
    n_heads * d_head (5120) differs from d_model (5140), so the attention width is its own field.
    """

    name: str = "custom"
    vocab_size: int = 257
    n_ctx: int = 256
    n_layer: int = 2
    n_head: int = 2
    d_model: int = 32
    d_head: int | None = None
    d_ff: int | None = None  # defaults to 4 * d_model
    norm: Literal["pre", "post"] = "pre"  # GPT-1 is post-norm; GPT-2/3 pre-norm with a final LayerNorm
    final_norm: bool = True
    tie_embeddings: bool = True
    attention_pattern: tuple[AttentionKind, ...] = ("dense",)  # cycled over layers
    band_width: int = GPT3_BAND_WIDTH
    # Query rows per attention block; 0 = one block. With blocks, a cache-free pass skips the scores of key
    # blocks its causal (and band) mask removes entirely: about half the attention work of a long dense
    # layer and all but ~2 x band_width keys of a banded one.
    attention_block: int = 0
    scale_residual_init: bool = True  # std 0.02 / sqrt(2 * n_layer) on residual output projections
    init_std: float = 0.02
    pos_init_std: float = 0.01  # GPT-2's original code initialises wpe with 0.01
    layer_norm_eps: float = 1e-5
    embd_dropout: float = 0.0
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; logits and loss are always fp32
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    # Published training hyper-parameters, recorded for reference (GPT-3 Table 2.1); 0 = unpublished.
    paper_batch_tokens: int = 0
    paper_learning_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_ctx", "n_layer", "n_head", "d_model", "band_width"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.d_head is None and self.d_model % self.n_head:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}; "
                "change one of them or set model.d_head explicitly"
            )
        if self.attention_block < 0:
            raise ConfigError(f"model.attention_block must be >= 0 (0 = one block), got {self.attention_block}")
        if not self.attention_pattern:
            raise ConfigError("model.attention_pattern must name at least one layer kind")
        for kind in self.attention_pattern:
            if kind not in ("dense", "banded"):
                raise ConfigError(f"model.attention_pattern has {kind!r}; valid kinds are 'dense', 'banded'")
        for name in ("embd_dropout", "attn_dropout", "resid_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.norm not in ("pre", "post"):
            raise ConfigError(f"model.norm must be 'pre' or 'post', got {self.norm!r}")

    @property
    def head_dim(self) -> int:
        return self.d_head if self.d_head is not None else self.d_model // self.n_head

    @property
    def d_attn(self) -> int:
        return self.n_head * self.head_dim

    @property
    def d_mlp(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    def layer_kind(self, layer: int) -> AttentionKind:
        return self.attention_pattern[layer % len(self.attention_pattern)]


# Published presets attend in blocks of 256 query rows (= GPT-3's band): on CPU a GPT-2 layer's training
# step at ctx 1024 is 1.3x faster, a GPT-3 dense + banded pair at ctx 2048 1.9x (bench/attention_blocks.py).
_PUBLISHED_BLOCK = 256


def _gpt2(name: str, n_layer: int, d_model: int, n_head: int) -> ModelConfig:
    return ModelConfig(name=name, vocab_size=50257, n_ctx=1024, n_layer=n_layer, n_head=n_head,
                       d_model=d_model, embd_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1,
                       attention_block=_PUBLISHED_BLOCK)


def _gpt3(name: str, n_layer: int, d_model: int, n_head: int, d_head: int, batch_tokens: int,
          lr: float) -> ModelConfig:
    return ModelConfig(name=name, vocab_size=50257, n_ctx=2048, n_layer=n_layer, n_head=n_head,
                       d_model=d_model, d_head=d_head, attention_pattern=("dense", "banded"),
                       attention_block=_PUBLISHED_BLOCK, paper_batch_tokens=batch_tokens, paper_learning_rate=lr)


def _tiny(name: str, n_layer: int, d_model: int, n_head: int) -> ModelConfig:
    return ModelConfig(name=name, vocab_size=257, n_ctx=256, n_layer=n_layer, n_head=n_head, d_model=d_model)


# Tiny ladder for CPU sweeps: d_model / n_layer grows with size as in Kaplan et al.'s shapes; the name is
# the non-embedding parameter count (tests check that it is within 10% of the real count).
_PRESET_LIST = [
    ModelConfig(name="gpt1", vocab_size=40478, n_ctx=512, n_layer=12, n_head=12, d_model=768, norm="post",
                final_norm=False, scale_residual_init=False, pos_init_std=0.02,
                embd_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1, attention_block=_PUBLISHED_BLOCK),
    _gpt2("gpt2-small", 12, 768, 12),
    _gpt2("gpt2-medium", 24, 1024, 16),
    _gpt2("gpt2-large", 36, 1280, 20),
    _gpt2("gpt2-xl", 48, 1600, 25),
    # GPT-3 paper, Table 2.1: n_layer, d_model, n_heads, d_head, batch size (tokens), learning rate.
    # Taken literally: XL's 24 x 128 attention width (3072 != d_model 2048) gives 1.52B parameters, not the
    # quoted 1.3B, and 13B's 40 x 128 = 5120 != 5140; d_head is a separate field so both are representable.
    _gpt3("gpt3-small", 12, 768, 12, 64, 500_000, 6.0e-4),
    _gpt3("gpt3-medium", 24, 1024, 16, 64, 500_000, 3.0e-4),
    _gpt3("gpt3-large", 24, 1536, 16, 96, 500_000, 2.5e-4),
    _gpt3("gpt3-xl", 24, 2048, 24, 128, 1_000_000, 2.0e-4),
    _gpt3("gpt3-2.7b", 32, 2560, 32, 80, 1_000_000, 1.6e-4),
    _gpt3("gpt3-6.7b", 32, 4096, 32, 128, 2_000_000, 1.2e-4),
    _gpt3("gpt3-13b", 40, 5140, 40, 128, 2_000_000, 1.0e-4),
    _gpt3("gpt3-175b", 96, 12288, 96, 128, 3_200_000, 0.6e-4),
    _tiny("tiny-25k", 2, 32, 2),
    _tiny("tiny-80k", 3, 48, 3),
    _tiny("tiny-200k", 4, 64, 4),
    _tiny("tiny-450k", 4, 96, 4),
    _tiny("tiny-1.2m", 6, 128, 4),
    _tiny("tiny-2.7m", 6, 192, 6),
    _tiny("tiny-6.3m", 8, 256, 8),
    _tiny("tiny-14m", 8, 384, 6),
    _tiny("tiny-21m", 12, 384, 6),
]
PRESETS: dict[str, ModelConfig] = {cfg.name: cfg for cfg in _PRESET_LIST}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


# Logical axis -> mesh axes. Parameters: vocab/embed/mlp/heads/kv/norm; activations: batch/length/act_*.
# FSDP shards the embed dimension of every weight; tensor parallelism splits heads, MLP width and vocab.
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", ()),
    ("act_embed", ()),
    ("embed", ("fsdp",)),
    ("vocab", ("tensor",)),
    ("mlp", ("tensor",)),
    ("heads", ("tensor",)),
    ("kv", ()),
    ("norm", ()),
)


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes; one of them may be -1 (= all remaining devices)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_RULES

    def __post_init__(self) -> None:
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        if list(sizes.values()).count(-1) > 1:
            raise ConfigError(f"at most one mesh axis may be -1, got {sizes}")
        bad = {k: v for k, v in sizes.items() if v == 0 or v < -1}
        if bad:
            raise ConfigError(f"mesh sizes must be positive or -1, got {bad}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW as GPT-3 trained: beta2 0.95, eps 1e-8, decoupled weight decay 0.1, clip 1.0, cosine to 10%."""

    learning_rate: float = 1e-3
    warmup_steps: int = 100
    decay_steps: int = 0  # 0 = decay over the whole run (train.steps)
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = False  # GPT-3 leaves embeddings, biases and LayerNorm undecayed
    decay_biases_and_norms: bool = False
    grad_clip: float = 1.0
    on_nonfinite: Literal["error", "skip"] = "error"

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ConfigError(f"optim.learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.on_nonfinite not in ("error", "skip"):
            raise ConfigError(f"optim.on_nonfinite must be 'error' or 'skip', got {self.on_nonfinite!r}")


@dataclass(frozen=True)
class DataConfig:
    """Which registered seqio Task/Mixture to train on, with which vocabulary."""

    task: str = "tinyshakespeare"  # a name from gptjax.data (task or mixture)
    vocab: str = "byte"  # a spec for gptjax.tokenizers.get_vocabulary
    seed: int = 0
    cache_dir: str = ""  # tokenised-and-packed arrays; "" = <run_dir>/../.data_cache
    tfds_data_dir: str = ""  # "" = TFDS default


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; written resolved to <run_dir>/config.json."""

    model: ModelConfig = ModelConfig(name="tiny-200k", n_layer=4, n_head=4, d_model=64)
    mesh: MeshConfig = MeshConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    run_dir: str = "runs/default"
    steps: int = 300
    batch_size: int = 16  # global, in sequences
    seq_len: int = 0  # 0 = model.n_ctx
    micro_batches: int = 1  # gradient accumulation inside the jitted step
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100  # held-out loss
    eval_batches: int = 8
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    peak_flops_per_device: float = 0.0  # 0 = from the device table, or measured on CPU
    # Few-shot evaluation during training (eval/ task names); results go to <run_dir>/eval/<step>.json
    # and their metrics into metrics.jsonl / TensorBoard as eval/<task>/<K>shot/<metric>.
    eval_tasks: tuple[str, ...] = ()
    eval_tasks_every: int = 0  # 0 = only at the end of the run
    eval_shots: tuple[int, ...] = (0,)
    eval_limit: int = 0  # documents per task; 0 = all

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "micro_batches", "log_every", "eval_every", "checkpoint_every",
                     "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.seq_len > self.model.n_ctx:
            raise ConfigError(f"seq_len={self.seq_len} exceeds model.n_ctx={self.model.n_ctx}")
        if self.eval_tasks_every < 0 or self.eval_limit < 0:
            raise ConfigError(f"eval_tasks_every={self.eval_tasks_every} and eval_limit={self.eval_limit} must be >= 0")
        if self.batch_size % self.micro_batches:
            raise ConfigError(f"batch_size={self.batch_size} is not divisible by micro_batches={self.micro_batches}")

    @property
    def sequence_length(self) -> int:
        return self.seq_len or self.model.n_ctx


# ---------------------------------------------------------------------------------------------------------
# key=value overrides and JSON round-trip, shared by every config dataclass.


def _coerce(value: str, annotation: Any, where: str) -> Any:
    """Parse a command-line string into the type a dataclass field declares."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}={value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        items = [v for v in value.split(",") if v]
        return tuple(_coerce(v, args[0], where) for v in items)
    if annotation is bool:
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"{where}={value!r} is not a boolean (true/false)")
    if annotation in (int, float, str):
        try:
            return annotation(float(value)) if annotation is int and "e" in value.lower() else annotation(value)
        except ValueError:
            raise ConfigError(f"{where}={value!r} is not a valid {annotation.__name__}") from None
    raise ConfigError(f"{where} cannot be set from the command line")


def override(cfg: Any, assignments: list[str] | tuple[str, ...]) -> Any:
    """Return `cfg` with dotted `key=value` assignments applied, e.g. `model.n_layer=4`.

    All assignments are applied before anything is validated, so their order never matters
    (`seq_len=512 model.n_ctx=512` works either way round).
    """
    data = to_dict(cfg)
    for assignment in assignments:
        if "=" not in assignment:
            raise ConfigError(f"override {assignment!r} is not of the form key=value")
        key, value = (part.strip() for part in assignment.split("=", 1))
        cls, node = type(cfg), data
        path = key.split(".")
        for depth, name in enumerate(path):
            names = [f.name for f in dataclasses.fields(cls)]
            if name not in names:
                raise ConfigError(f"unknown config key {key!r}; {cls.__name__} has: {', '.join(names)}")
            annotation = typing.get_type_hints(cls)[name]
            if depth == len(path) - 1:
                node[name] = _coerce(value, annotation, key)
            elif not dataclasses.is_dataclass(annotation):
                raise ConfigError(f"config key {key!r}: {name} is not a section")
            else:
                cls, node = annotation, node[name]
    return from_dict(type(cfg), data)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from `to_dict` output, e.g. a run's config.json."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, annotation = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(annotation):
            value = from_dict(annotation, value)
        elif typing.get_origin(annotation) is tuple:
            value = _tuplify(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def _tuplify(value: Any) -> Any:
    """JSON turns nested tuples into lists; frozen configs need them back as tuples."""
    return tuple(_tuplify(v) for v in value) if isinstance(value, (list, tuple)) else value


def dumps(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


__all__ = ["ConfigError", "ModelConfig", "MeshConfig", "OptimConfig", "DataConfig", "RunConfig", "DEFAULT_RULES", "PRESETS", "get_preset", "override", "to_dict", "from_dict",
           "dumps"]
