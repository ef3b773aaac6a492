"""Typed, frozen, nested configuration: the model presets, the run's sections, and the override language
(`key=value` strings on the command line, nested tables in sweep files).

Every knob lives in a frozen dataclass so a resolved config can be written to `config.json`, diffed and
rebuilt exactly. Validation happens at construction and names the offending values; the fields a resumed
run may change are marked on the fields themselves (`resumable`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gptjax.errors import ConfigError
from gptjax.sharding import DEFAULT_RULES, MeshConfig

AttentionKind = Literal["dense", "banded"]

# GPT-3 does not publish the width of its locally banded sparse layers; we use GPT-Neo's 256 (its public
# replication of the GPT-3 alternating pattern) and keep it a config field.
GPT3_BAND_WIDTH = 256

# Rematerialisation policies (gptjax.model.REMAT_POLICIES maps each to a jax.checkpoint policy).
RematPolicy = Literal[
    "none", "full", "minimal", "minimal_with_context", "dots_saveable", "save_qkv_proj", "save_dot_except_mlp"
]
AttentionImpl = Literal["auto", "xla", "splash", "cudnn"]


def resumable(default: Any) -> Any:
    """A config field a restarted run may change without invalidating its checkpoints."""
    return field(default=default, metadata={"resumable": True})


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one GPT-family model.

    `d_head` and `d_ff` left at 0 are derived (d_model // n_head and 4 * d_model) when the config is built,
    so every reader sees one resolved value under one name. GPT-3's Table 2.1 read literally has two rows
    where n_heads * d_head differs from d_model (XL and 13B, the `-table` variants), so the attention width
    is its own field.
    """

    name: str = "custom"
    vocab_size: int = 257
    n_ctx: int = 256
    n_layer: int = 2
    n_head: int = 2
    d_model: int = 32
    d_head: int = 0  # 0 = d_model // n_head
    d_ff: int = 0  # 0 = 4 * d_model
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
    # "learned": GPT's absolute position embeddings wpe added to the input; "rotary" (Su et al. 2021): no wpe,
    # queries and keys rotated by their position, so attention scores depend on relative offsets only.
    positions: Literal["learned", "rotary"] = "learned"
    layer_norm_eps: float = 1e-5
    embd_dropout: float = 0.0
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute dtype; logits and loss are always fp32
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    # How the same math is computed (memory and speed only, so a resumed run may change them): which
    # activations each block keeps for the backward pass (gptjax.model.REMAT_POLICIES), the attention kernel
    # (auto = Pallas splash on TPU, cuDNN on GPU, XLA einsums elsewhere and for decoding), and the number of
    # positions of each row whose LM head and loss are computed at once in training (0 = all: full fp32
    # logits [batch, length, vocab]; a divisor of the sequence length bounds them to [batch, loss_chunk, vocab]).
    remat: RematPolicy = resumable("none")
    attention_impl: AttentionImpl = resumable("auto")
    loss_chunk: int = resumable(0)
    # Stack each period of attention_pattern's blocks and scan over the periods: compile time stops growing
    # with depth. This is a different parameter layout (gptjax.model.stack_layers converts), so not resumable.
    scan_layers: bool = False
    mlp: bool = True  # False: attention-only blocks (no MLP, no second LayerNorm), as in Olsson et al. 2022
    # Published training hyper-parameters, recorded for reference (GPT-3 Table 2.1); 0 = unpublished.
    paper_batch_tokens: int = 0
    paper_learning_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_ctx", "n_layer", "n_head", "d_model", "band_width"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        for name in ("d_head", "d_ff"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name} must be positive (or 0 = derived), got {getattr(self, name)}")
        if self.d_head == 0 and self.d_model % self.n_head:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}; "
                "change one of them or set model.d_head explicitly"
            )
        for name, value in self.derived().items():
            if getattr(self, name) == 0:
                object.__setattr__(self, name, value)
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
        if self.positions not in ("learned", "rotary"):
            raise ConfigError(f"model.positions must be 'learned' or 'rotary', got {self.positions!r}")
        if self.positions == "rotary" and self.d_head % 2:
            raise ConfigError(f"model.positions='rotary' rotates pairs of dimensions; d_head={self.d_head} is odd")
        for name, choices in (("remat", RematPolicy), ("attention_impl", AttentionImpl)):
            if getattr(self, name) not in typing.get_args(choices):
                raise ConfigError(
                    f"model.{name}={getattr(self, name)!r} is not one of {list(typing.get_args(choices))}"
                )
        if self.loss_chunk < 0:
            raise ConfigError(f"model.loss_chunk must be >= 0 (0 = unchunked), got {self.loss_chunk}")
        if self.scan_layers and self.n_layer % len(self.attention_pattern):
            raise ConfigError(
                f"model.scan_layers scans over periods of model.attention_pattern={self.attention_pattern}; "
                f"model.n_layer={self.n_layer} is not a multiple of its length {len(self.attention_pattern)}"
            )
        if self.attention_impl in ("splash", "cudnn") and self.attn_dropout > 0:
            raise ConfigError(
                f"model.attention_impl={self.attention_impl!r} has no attention dropout but "
                f"model.attn_dropout={self.attn_dropout}; use attention_impl=xla or auto"
            )

    def derived(self) -> dict[str, int]:
        """The values `d_head` and `d_ff` take when left at 0 (d_head only where n_head divides d_model)."""
        values = {"d_ff": 4 * self.d_model}
        if self.d_model % self.n_head == 0:
            values["d_head"] = self.d_model // self.n_head
        return values

    @property
    def d_attn(self) -> int:
        """The attention width n_head * d_head (d_model except where a preset says otherwise)."""
        return self.n_head * self.d_head

    def layer_kind(self, layer: int) -> AttentionKind:
        return self.attention_pattern[layer % len(self.attention_pattern)]


# Published presets attend in blocks of 256 query rows (= GPT-3's band); bench/attention_blocks.py and its
# README section measure what that buys.
_PUBLISHED_BLOCK = 256


def _gpt2(name: str, n_layer: int, d_model: int, n_head: int) -> ModelConfig:
    return ModelConfig(
        name=name,
        vocab_size=50257,
        n_ctx=1024,
        n_layer=n_layer,
        n_head=n_head,
        d_model=d_model,
        embd_dropout=0.1,
        attn_dropout=0.1,
        resid_dropout=0.1,
        attention_block=_PUBLISHED_BLOCK,
    )


def _gpt3(name: str, n_layer: int, d_model: int, n_head: int, d_head: int, batch_tokens: int, lr: float) -> ModelConfig:
    return ModelConfig(
        name=name,
        vocab_size=50257,
        n_ctx=2048,
        n_layer=n_layer,
        n_head=n_head,
        d_model=d_model,
        d_head=d_head,
        attention_pattern=("dense", "banded"),
        attention_block=_PUBLISHED_BLOCK,
        paper_batch_tokens=batch_tokens,
        paper_learning_rate=lr,
    )


def _tiny(name: str, n_layer: int, d_model: int, n_head: int) -> ModelConfig:
    return ModelConfig(name=name, vocab_size=257, n_ctx=256, n_layer=n_layer, n_head=n_head, d_model=d_model)


# Tiny ladder for CPU sweeps: d_model / n_layer grows with size as in Kaplan et al.'s shapes; the name is
# the non-embedding parameter count (tests check that it is within 10% of the real count).
_PRESET_LIST = [
    ModelConfig(
        name="gpt1",
        vocab_size=40478,
        n_ctx=512,
        n_layer=12,
        n_head=12,
        d_model=768,
        norm="post",
        final_norm=False,
        scale_residual_init=False,
        pos_init_std=0.02,
        embd_dropout=0.1,
        attn_dropout=0.1,
        resid_dropout=0.1,
        attention_block=_PUBLISHED_BLOCK,
    ),
    _gpt2("gpt2-small", 12, 768, 12),
    _gpt2("gpt2-medium", 24, 1024, 16),
    _gpt2("gpt2-large", 36, 1280, 20),
    _gpt2("gpt2-xl", 48, 1600, 25),
    # GPT-3 paper, Table 2.1: n_layer, d_model, n_heads, d_head, batch size (tokens), learning rate.
    # Two rows have n_heads x d_head != d_model. XL's 24 x 128 = 3072 != 2048 gives 1.52B parameters, not the
    # quoted 1.3B: gpt3-xl is the 1.3B model (16 x 128 = d_model, as GPT-Neo 1.3B has it). 13B's 40 x 128 =
    # 5120 != 5140 gives its quoted size either way, but 5140 = 4 x 5 x 257 shards over at most 4 devices:
    # gpt3-13b is 5120 wide (as OPT-13B, the public replication at this size). The -table variants keep
    # the literal readings.
    _gpt3("gpt3-small", 12, 768, 12, 64, 500_000, 6.0e-4),
    _gpt3("gpt3-medium", 24, 1024, 16, 64, 500_000, 3.0e-4),
    _gpt3("gpt3-large", 24, 1536, 16, 96, 500_000, 2.5e-4),
    _gpt3("gpt3-xl", 24, 2048, 16, 128, 1_000_000, 2.0e-4),
    _gpt3("gpt3-xl-table", 24, 2048, 24, 128, 1_000_000, 2.0e-4),
    _gpt3("gpt3-2.7b", 32, 2560, 32, 80, 1_000_000, 1.6e-4),
    _gpt3("gpt3-6.7b", 32, 4096, 32, 128, 2_000_000, 1.2e-4),
    _gpt3("gpt3-13b", 40, 5120, 40, 128, 2_000_000, 1.0e-4),
    _gpt3("gpt3-13b-table", 40, 5140, 40, 128, 2_000_000, 1.0e-4),
    _gpt3("gpt3-175b", 96, 12288, 96, 128, 3_200_000, 0.6e-4),
    _tiny("tiny-1.8k", 2, 8, 2),
    _tiny("tiny-4k", 2, 12, 2),
    _tiny("tiny-7k", 2, 16, 2),
    _tiny("tiny-10k", 2, 20, 2),
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


@dataclass(frozen=True)
class OptimConfig:
    """AdamW as GPT-3 trained: beta2 0.95, eps 1e-8, decoupled weight decay 0.1, clip 1.0, cosine to 10%
    (`schedule="linear"`: linear warm-up, then linear decay to min_lr_ratio, as GPT-1 fine-tuned)."""

    learning_rate: float = 1e-3
    warmup_steps: int = 100
    decay_steps: int = 0  # 0 = decay over the whole run (train.steps)
    schedule: Literal["cosine", "linear"] = "cosine"
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
        if self.schedule not in ("cosine", "linear"):
            raise ConfigError(f"optim.schedule must be 'cosine' or 'linear', got {self.schedule!r}")


@dataclass(frozen=True)
class DataConfig:
    """Which registered seqio Task/Mixture to train on, with which vocabulary."""

    task: str = "tinyshakespeare"  # a gptjax.data task or mixture, a prepared corpus path, or "a:3,b:1" (tasks.resolve)
    vocab: str = "byte"  # a spec for gptjax.tokenizers.get_vocabulary
    seed: int = 0
    cache_dir: str = ""  # tokenised-and-packed arrays; "" = <run_dir>/../.data_cache
    tfds_data_dir: str = ""  # "" = TFDS default


def _positive(cfg: Any, section: str, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{section + '.' if section else ''}{name} must be positive, got {getattr(cfg, name)}")


@dataclass(frozen=True)
class LoggingConfig:
    """Training metrics: how often they are logged, the peak FLOP/s MFU is measured against, how often a
    gs:// metrics file is uploaded, and how often the run's heartbeat is rewritten."""

    every: int = 10
    peak_flops_per_device: float = 0.0  # 0 = from the device table, or measured on CPU
    flush_seconds: float = 60.0  # gs:// metrics and TensorBoard files: at most one upload per interval
    heartbeat_seconds: float = 30.0

    def __post_init__(self) -> None:
        _positive(self, "logging", "every", "flush_seconds", "heartbeat_seconds")
        if self.peak_flops_per_device < 0:
            raise ConfigError(
                f"logging.peak_flops_per_device must be positive (or 0 = automatic), got {self.peak_flops_per_device}"
            )


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 100
    keep: int = 3

    def __post_init__(self) -> None:
        _positive(self, "checkpoint", "every", "keep")


@dataclass(frozen=True)
class HeldOutConfig:
    """Held-out loss: the mean over the first `batches` validation batches, every `every` steps."""

    every: int = 100
    batches: int = 8

    def __post_init__(self) -> None:
        _positive(self, "held_out", "every", "batches")


@dataclass(frozen=True)
class FinetuneConfig:
    """GPT-1 supervised fine-tuning (gptjax/finetune): the labelled task ("" = not a fine-tuning run), the
    weight λ of the auxiliary LM loss on the transformed labelled text (L3 = L2 + λ·L1; 0 = the
    classification loss alone), the dropout on the extract token's state before the linear head, and what
    trains: "all" parameters, or only the "head" and the new special-token rows (the transformer frozen)."""

    task: str = ""
    aux_lm_weight: float = 0.5
    clf_dropout: float = 0.1
    trainable: Literal["all", "head"] = "all"

    def __post_init__(self) -> None:
        if self.aux_lm_weight < 0:
            raise ConfigError(f"finetune.aux_lm_weight must be >= 0, got {self.aux_lm_weight}")
        if not 0 <= self.clf_dropout < 1:
            raise ConfigError(f"finetune.clf_dropout must be in [0, 1), got {self.clf_dropout}")
        if self.trainable not in ("all", "head"):
            raise ConfigError(f"finetune.trainable must be 'all' or 'head', got {self.trainable!r}")


@dataclass(frozen=True)
class FewShotConfig:
    """Few-shot evaluation during training (eval/ task names): results go to <run_dir>/eval/<step>.json and
    their metrics into metrics.jsonl / TensorBoard as eval/<task>/<K>shot/<metric>."""

    tasks: tuple[str, ...] = ()
    every: int = 0  # 0 = only at the end of the run
    shots: tuple[int, ...] = (0,)
    limit: int = 0  # documents per task; 0 = all

    def __post_init__(self) -> None:
        if self.every < 0 or self.limit < 0:
            raise ConfigError(f"fewshot.every={self.every} and fewshot.limit={self.limit} must be >= 0")
        if any(k < 0 for k in self.shots):
            raise ConfigError(f"fewshot.shots must be >= 0, got {list(self.shots)}")


@dataclass(frozen=True)
class ICLConfig:
    """In-context-learning probes during training (eval/icl): results go to <run_dir>/icl/<step>.json and
    their metrics into metrics.jsonl / TensorBoard as icl/<task>/<K>shot/<metric>, beside the loss.

    `probes` are "induction" (induction heads on `induction_task`'s repeated random tokens), "icl_score"
    (Olsson et al.'s loss on token `late` minus token `early` of held-out text: `icl_score_task`'s
    validation split, "" = the run's data.task) and synthetic FewShotClassification task names (accuracy
    after each K of `shots` context pairs). `early` and `late` of 0 are Olsson et al.'s 50th and 500th
    token of 512, scaled to the sequence length."""

    probes: tuple[str, ...] = ()
    every: int = 0  # 0 = only at the end of the run
    shots: tuple[int, ...] = (0, 1, 2, 4, 8)
    examples: int = 256  # probe sequences per task and K (held-out rows for the ICL score)
    induction_task: str = "repeat_tokens"
    icl_score_task: str = ""
    early: int = 0
    late: int = 0

    def __post_init__(self) -> None:
        if self.every < 0 or self.early < 0 or self.late < 0:
            raise ConfigError(f"icl.every={self.every}, icl.early={self.early}, icl.late={self.late} must be >= 0")
        _positive(self, "icl", "examples")
        if not self.shots or any(k < 0 for k in self.shots):
            raise ConfigError(f"icl.shots must be non-empty and >= 0, got {list(self.shots)}")
        if self.early and self.late and self.early >= self.late:
            raise ConfigError(f"icl.early={self.early} must be < icl.late={self.late}")


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; written resolved to <run_dir>/config.json."""

    model: ModelConfig = ModelConfig(name="tiny-200k", n_layer=4, n_head=4, d_model=64)
    mesh: MeshConfig = resumable(MeshConfig())
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    logging: LoggingConfig = resumable(LoggingConfig())
    checkpoint: CheckpointConfig = resumable(CheckpointConfig())
    held_out: HeldOutConfig = resumable(HeldOutConfig())
    fewshot: FewShotConfig = resumable(FewShotConfig())
    icl: ICLConfig = resumable(ICLConfig())
    finetune: FinetuneConfig = FinetuneConfig()
    run_dir: str = resumable("runs/default")  # where the run lives, not what it computes
    steps: int = resumable(300)
    # "START:END": a jax.profiler trace of steps START+1..END into <run_dir>/profile/ ("" = none).
    profile_steps: str = resumable("")
    # Provenance, not semantics: the git commit the code of the latest (re)start was checked out at
    # (tpu_scripts resolve it once and pass it to every worker; "" = not recorded).
    code_commit: str = resumable("")
    batch_size: int = 16  # global, in sequences
    seq_len: int = 0  # 0 = model.n_ctx
    micro_batches: int = 1  # gradient accumulation inside the jitted step
    seed: int = 0

    def __post_init__(self) -> None:
        _positive(self, "", "steps", "batch_size", "micro_batches")
        if self.seq_len > self.model.n_ctx:
            raise ConfigError(f"seq_len={self.seq_len} exceeds model.n_ctx={self.model.n_ctx}")
        if self.model.loss_chunk and self.sequence_length % self.model.loss_chunk:
            raise ConfigError(
                f"model.loss_chunk={self.model.loss_chunk} does not divide the sequence length {self.sequence_length}"
            )
        if self.batch_size % self.micro_batches:
            raise ConfigError(f"batch_size={self.batch_size} is not divisible by micro_batches={self.micro_batches}")
        self.profile_range  # noqa: B018 - validates profile_steps
        decay_steps = self.optim.decay_steps or self.steps
        if self.optim.warmup_steps >= decay_steps:
            raise ConfigError(
                f"optim.warmup_steps={self.optim.warmup_steps} must be < the decay length {decay_steps} "
                "(optim.decay_steps, or steps when it is 0)"
            )

    @property
    def sequence_length(self) -> int:
        return self.seq_len or self.model.n_ctx

    @property
    def profile_range(self) -> tuple[int, int] | None:
        """profile_steps as (START, END): trace the steps after START up to END; None when empty."""
        if not self.profile_steps:
            return None
        start, sep, end = self.profile_steps.partition(":")
        if not (sep and start.isdigit() and end.isdigit() and int(start) < int(end)):
            raise ConfigError(f"profile_steps={self.profile_steps!r} must be START:END with 0 <= START < END")
        return int(start), int(end)


def changed_fields(saved: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """The fields (dotted paths) in which `new` differs from `saved` and which a resumed run may not change:
    {path: (saved value, new value)}."""
    changed: dict[str, tuple[Any, Any]] = {}

    def walk(a: Any, b: Any, prefix: str) -> None:
        for f in dataclasses.fields(a):
            if f.metadata.get("resumable"):
                continue
            x, y = getattr(a, f.name), getattr(b, f.name)
            if dataclasses.is_dataclass(x):
                walk(x, y, f"{prefix}{f.name}.")
            elif x != y:
                changed[prefix + f.name] = (x, y)

    walk(saved, new, "")
    return changed


# ---------------------------------------------------------------------------------------------------------
# key=value overrides and JSON round-trip, shared by every config dataclass.


def _coerce(value: Any, annotation: Any, where: str, text: bool) -> Any:
    """A command-line string (`text`) or an already typed value from a sweep file's table as the type a
    dataclass field declares; typed values are never parsed (a TOML "8" is not the number 8)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    text = text and isinstance(value, str)
    if origin in (typing.Union, types.UnionType):
        if value is None or (text and value.lower() in ("none", "null") and type(None) in args):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where, text)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}={value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        items: Any = [v for v in value.split(",") if v] if text else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where}={value!r} is not a list")
        element = args[0] if args[-1] is Ellipsis or len(args) == 1 else Any
        return tuple(_coerce(v, element, where, text) for v in items)
    if annotation is Any:
        return _tuplify(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if text and value.lower() in ("1", "true", "yes"):
            return True
        if text and value.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"{where}={value!r} is not a boolean (true/false)")
    if annotation in (int, float, str):
        if not text:
            if annotation is str:
                if not isinstance(value, str):
                    raise ConfigError(f"{where}={value!r} is not a valid str")
                return value
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not numeric or (annotation is int and value != int(value)):
                raise ConfigError(f"{where}={value!r} is not a valid {annotation.__name__}")
            return annotation(value)
        try:
            return annotation(float(value)) if annotation is int and "e" in value.lower() else annotation(value)
        except ValueError:
            raise ConfigError(f"{where}={value!r} is not a valid {annotation.__name__}") from None
    raise ConfigError(f"{where} cannot be set from the command line")


def _editable(cfg: Any) -> dict[str, Any]:
    """`to_dict(cfg)` with derived values (ModelConfig.derived) put back to 0, so that overriding what they
    derive from (e.g. model.d_model on a preset) derives them again."""
    data = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        data[f.name] = _editable(value) if dataclasses.is_dataclass(value) else value
    derived = cfg.derived() if hasattr(cfg, "derived") else {}
    return data | {name: 0 for name, value in derived.items() if data[name] == value}


def _assign(cls: Any, data: dict[str, Any], key: str, value: Any, text: bool) -> None:
    """Set dotted `key` in the nested dict `data` of config class `cls` to `value`, coerced to its type."""
    node = data
    path = key.split(".")
    for depth, name in enumerate(path):
        names = [f.name for f in dataclasses.fields(cls)]
        if name not in names:
            raise ConfigError(f"unknown config key {key!r}; {cls.__name__} has: {', '.join(names)}")
        annotation = typing.get_type_hints(cls)[name]
        if depth == len(path) - 1:
            if dataclasses.is_dataclass(annotation):
                raise ConfigError(f"config key {key!r} is a section; set its fields ({key}.<field>)")
            node[name] = _coerce(value, annotation, key, text)
        elif not dataclasses.is_dataclass(annotation):
            raise ConfigError(f"config key {key!r}: {name} is not a section")
        else:
            cls, node = annotation, node[name]


def override(cfg: Any, assignments: list[str] | tuple[str, ...]) -> Any:
    """Return `cfg` with dotted `key=value` assignments applied, e.g. `model.n_layer=4`.

    All assignments are applied before anything is validated, so their order never matters
    (`seq_len=512 model.n_ctx=512` works either way round).
    """
    pairs = []
    for assignment in assignments:
        if "=" not in assignment:
            raise ConfigError(f"override {assignment!r} is not of the form key=value")
        key, value = (part.strip() for part in assignment.split("=", 1))
        pairs.append((key, value))
    return _apply(cfg, pairs, text=True)


def flatten(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """A nested table ({"optim": {"learning_rate": 3e-3}}) as dotted (key, value) pairs."""
    pairs = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            pairs += flatten(value, f"{prefix}{key}.")
        else:
            pairs.append((prefix + key, value))
    return pairs


def apply_table(cfg: Any, table: Mapping[str, Any]) -> Any:
    """Return `cfg` with a nested table of typed values applied (a sweep file's `[base]`, e.g.
    `[base.optim] learning_rate = 3e-3`)."""
    return _apply(cfg, flatten(table), text=False)


def _apply(cfg: Any, pairs: list[tuple[str, Any]], text: bool) -> Any:
    data = _editable(cfg)
    for key, value in pairs:
        _assign(type(cfg), data, key, value, text)
    return from_dict(type(cfg), data)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: Any, data: dict[str, Any]) -> Any:
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


__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DEFAULT_RULES",
    "DataConfig",
    "FewShotConfig",
    "FinetuneConfig",
    "ICLConfig",
    "HeldOutConfig",
    "LoggingConfig",
    "MeshConfig",
    "ModelConfig",
    "OptimConfig",
    "PRESETS",
    "RunConfig",
    "apply_table",
    "changed_fields",
    "dumps",
    "flatten",
    "from_dict",
    "get_preset",
    "override",
    "resumable",
    "to_dict",
]
