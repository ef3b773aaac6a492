"""Import and export Hugging Face GPT-2 checkpoints (`config.json` + safetensors).

Weights are read and written with `safetensors.numpy`, so neither torch nor transformers is needed here and no
pickle is ever loaded. Imported params are host numpy arrays in fp32: the caller decides placement and sharding.
Exported tensors are fp32 too (lossless for fp32/bf16 params; `safetensors.numpy` has no bfloat16).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from gptjax.config import ConfigError, ModelConfig
from gptjax.errors import InputNotFoundError
from gptjax.model import Params, abstract_params, unstack_layers

PREFIX = "transformer."  # GPT2LMHeadModel's body; bare GPT2Model checkpoints (e.g. OpenAI's) omit it
LM_HEAD = "lm_head.weight"
QKV = ("query", "key", "value")  # c_attn's order along its output dim
GPT2_EOS = 50256  # <|endoftext|> in GPT-2's BPE vocabulary
# Every spelling of the tanh-approximated GELU that gptjax's MLP computes.
TANH_GELUS = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_accurate")
# Causal-mask buffers that older transformers versions saved alongside the weights.
_BUFFER = re.compile(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)")
# GPT2Config defaults, for the optional fields older config.json files leave out.
_HF_DEFAULTS: dict[str, Any] = {
    "model_type": "gpt2",
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}
# HF name of each tokenizer file, and the names it may have in the source dir (HF's, then OpenAI's).
_TOKENIZER_FILES = {"vocab.json": ("vocab.json", "encoder.json"), "merges.txt": ("merges.txt", "vocab.bpe")}


def config_from_hf(hf: dict[str, Any], name: str) -> ModelConfig:
    """The gptjax config of a GPT-2 `config.json`; refuses settings gptjax's forward pass does not compute."""
    missing = [k for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head") if k not in hf]
    if missing:
        raise ConfigError(f"{name}: config.json lacks {missing}")
    hf = _HF_DEFAULTS | hf
    required = {
        "model_type": "gpt2",
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False,
    }
    problems = [f"{k}={hf[k]!r} (gptjax needs {v!r})" for k, v in required.items() if hf[k] != v]
    if hf["activation_function"] not in TANH_GELUS:
        problems.append(
            f"activation_function={hf['activation_function']!r} (gptjax's MLP is the tanh GELU: "
            f"one of {list(TANH_GELUS)})"
        )
    if problems:
        raise ConfigError(f"{name}: config.json cannot be imported: {'; '.join(problems)}")
    return ModelConfig(
        name=name,
        vocab_size=hf["vocab_size"],
        n_ctx=hf["n_positions"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        d_model=hf["n_embd"],
        d_ff=hf["n_inner"] or 0,
        norm="pre",
        final_norm=True,
        tie_embeddings=hf["tie_word_embeddings"],
        init_std=hf["initializer_range"],
        layer_norm_eps=hf["layer_norm_epsilon"],
        embd_dropout=hf["embd_pdrop"],
        attn_dropout=hf["attn_pdrop"],
        resid_dropout=hf["resid_pdrop"],
    )


def config_to_hf(cfg: ModelConfig, eos_token_id: int | None) -> dict[str, Any]:
    """GPT2Config fields for `cfg`; raises ConfigError naming every field GPT-2 cannot represent."""
    problems = []
    if cfg.norm != "pre":
        problems.append(f"model.norm={cfg.norm!r} (GPT-2 is pre-norm)")
    if not cfg.final_norm:
        problems.append("model.final_norm=False (GPT-2 always applies ln_f)")
    if "banded" in cfg.attention_pattern:
        problems.append(f"model.attention_pattern={cfg.attention_pattern} (GPT-2 attention is dense only)")
    if cfg.positions != "learned":
        problems.append(f"model.positions={cfg.positions!r} (GPT-2 has learned absolute position embeddings)")
    if cfg.d_attn != cfg.d_model:
        problems.append(
            f"model.d_head={cfg.d_head} gives n_head*d_head={cfg.d_attn} != "
            f"d_model={cfg.d_model} (GPT-2 ties the attention width to n_embd)"
        )
    if problems:
        raise ConfigError(f"{cfg.name} cannot be exported as GPT-2: {'; '.join(problems)}")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "dtype": "float32",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_ctx,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None if cfg.d_ff == 4 * cfg.d_model else cfg.d_ff,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": cfg.init_std,
        "embd_pdrop": cfg.embd_dropout,
        "attn_pdrop": cfg.attn_dropout,
        "resid_pdrop": cfg.resid_dropout,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
    }


# ---------------------------------------------------------------------------------------------------------
# Tensor layouts. HF's Conv1D weights are [in, out]; c_attn fuses q, k, v along out, each head-major.


def _ln_to_hf(ln: Params, name: str) -> dict[str, Any]:
    return {f"{PREFIX}{name}.weight": ln["scale"], f"{PREFIX}{name}.bias": ln["bias"]}


def _to_hf(params: Params, cfg: ModelConfig, xp: Any = np) -> dict[str, Any]:
    """gptjax params -> GPT2LMHeadModel state dict (fp32).

    Export runs it with numpy on the host (no device copies, nothing to compile); `_hf_shapes` runs it
    abstractly with `xp=jnp`, so the expected checkpoint layout is derived from the model, never restated.
    """
    params = jax.tree.map(lambda x: xp.asarray(x, xp.float32), params)
    d = cfg.d_model
    out = {f"{PREFIX}wte.weight": params["wte"], f"{PREFIX}wpe.weight": params["wpe"]}
    for i in range(cfg.n_layer):
        layer, p = params[f"h_{i}"], f"{PREFIX}h.{i}."
        attn, mlp = layer["attn"], layer["mlp"]
        out |= _ln_to_hf(layer["ln_1"], f"h.{i}.ln_1") | _ln_to_hf(layer["ln_2"], f"h.{i}.ln_2")
        out |= {
            p + "attn.c_attn.weight": xp.concatenate([attn[f"{n}_kernel"].reshape(d, -1) for n in QKV], axis=1),
            p + "attn.c_attn.bias": xp.concatenate([attn[f"{n}_bias"].reshape(-1) for n in QKV]),
            p + "attn.c_proj.weight": attn["out_kernel"].reshape(-1, d),
            p + "attn.c_proj.bias": attn["out_bias"],
            p + "mlp.c_fc.weight": mlp["fc_kernel"],
            p + "mlp.c_fc.bias": mlp["fc_bias"],
            p + "mlp.c_proj.weight": mlp["proj_kernel"],
            p + "mlp.c_proj.bias": mlp["proj_bias"],
        }
    out |= _ln_to_hf(params["ln_f"], "ln_f")
    if not cfg.tie_embeddings:
        out[LM_HEAD] = params["lm_head"].T
    return out


def _ln_from_hf(t: dict[str, np.ndarray], name: str) -> Params:
    return {"scale": t[f"{PREFIX}{name}.weight"], "bias": t[f"{PREFIX}{name}.bias"]}


def _from_hf(t: dict[str, np.ndarray], cfg: ModelConfig) -> Params:
    """GPT2LMHeadModel state dict (already shape-checked) -> gptjax params; the inverse of `_to_hf`."""
    d, h, k = cfg.d_model, cfg.n_head, cfg.d_head
    params: dict[str, Any] = {"wte": t[f"{PREFIX}wte.weight"], "wpe": t[f"{PREFIX}wpe.weight"]}
    for i in range(cfg.n_layer):
        p = f"{PREFIX}h.{i}."
        weights = np.split(t[p + "attn.c_attn.weight"], 3, axis=1)
        biases = np.split(t[p + "attn.c_attn.bias"], 3)
        attn: dict[str, np.ndarray] = {f"{n}_kernel": w.reshape(d, h, k) for n, w in zip(QKV, weights)}
        attn |= {f"{n}_bias": b.reshape(h, k) for n, b in zip(QKV, biases)}
        attn |= {"out_kernel": t[p + "attn.c_proj.weight"].reshape(h, k, d), "out_bias": t[p + "attn.c_proj.bias"]}
        mlp = {
            "fc_kernel": t[p + "mlp.c_fc.weight"],
            "fc_bias": t[p + "mlp.c_fc.bias"],
            "proj_kernel": t[p + "mlp.c_proj.weight"],
            "proj_bias": t[p + "mlp.c_proj.bias"],
        }
        params[f"h_{i}"] = {
            "ln_1": _ln_from_hf(t, f"h.{i}.ln_1"),
            "attn": attn,
            "ln_2": _ln_from_hf(t, f"h.{i}.ln_2"),
            "mlp": mlp,
        }
    params["ln_f"] = _ln_from_hf(t, "ln_f")
    if not cfg.tie_embeddings:
        params["lm_head"] = t[LM_HEAD].T
    return jax.tree.map(lambda x: np.ascontiguousarray(x, np.float32), params)


def _hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    abstract = jax.eval_shape(lambda p: _to_hf(p, cfg, jnp), abstract_params(cfg))
    return {key: tuple(x.shape) for key, x in abstract.items()}


def _param_shapes(params: Params) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(str(k.key) for k in path): tuple(np.shape(x)) for path, x in leaves}


def _shape_problems(want: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]]) -> list[str]:
    problems = [f"missing {k} {want[k]}" for k in want if k not in got]
    problems += [f"unexpected {k} {got[k]}" for k in got if k not in want]
    problems += [f"{k} has shape {got[k]}, expected {want[k]}" for k in want if k in got and got[k] != want[k]]
    return problems


def _raise_shape_problems(problems: list[str], what: str) -> None:
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise ValueError(f"{what}: {'; '.join(problems[:10])}{more}")


# ---------------------------------------------------------------------------------------------------------
# Files.


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise InputNotFoundError(f"{path} does not exist")
    return json.loads(path.read_text())


def _read_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint, keyed as GPT2LMHeadModel names it (`transformer.` prefix added)."""
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = sorted({model_dir / f for f in _read_json(index)["weight_map"].values()})
    else:
        found = sorted(p.name for p in model_dir.iterdir())
        raise InputNotFoundError(
            f"{model_dir} has no model.safetensors (files: {found}); gptjax reads only safetensors and never "
            "unpickles pytorch_model.bin. Convert it once in a trusted environment with "
            "GPT2LMHeadModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
        )
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        tensors |= {
            key if key == LM_HEAD or key.startswith(PREFIX) else PREFIX + key: value
            for key, value in load_file(file).items()
        }
    return tensors


def import_hf(model_dir: str | Path) -> tuple[ModelConfig, Params]:
    """Read a Hugging Face GPT-2 dir (`config.json` + `model.safetensors`) as (config, fp32 numpy params)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputNotFoundError(f"Hugging Face model dir {model_dir} does not exist")
    cfg = config_from_hf(_read_json(model_dir / "config.json"), name=f"hf:{model_dir.resolve().name}")
    tensors = _read_tensors(model_dir)
    # Tied checkpoints may still carry lm_head.weight; transformers overwrites it with wte, so do we.
    ignored = {k for k in tensors if _BUFFER.fullmatch(k) or (k == LM_HEAD and cfg.tie_embeddings)}
    got = {k: tuple(v.shape) for k, v in tensors.items() if k not in ignored}
    _raise_shape_problems(_shape_problems(_hf_shapes(cfg), got), f"{model_dir} does not match its config.json")
    return cfg, _from_hf(tensors, cfg)


def _tokenizer_files(tokenizer_dir: Path) -> dict[str, Path]:
    files = {}
    for target, names in _TOKENIZER_FILES.items():
        found = [tokenizer_dir / n for n in names if (tokenizer_dir / n).is_file()]
        if not found:
            raise InputNotFoundError(f"GPT-2 BPE tokenizer dir {tokenizer_dir} has none of {list(names)}")
        files[target] = found[0]
    return files


def export_hf(
    params: Params,
    cfg: ModelConfig,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    added_tokens: Mapping[str, int] | None = None,
) -> Path:
    """Write `out_dir` so that `GPT2LMHeadModel.from_pretrained(out_dir)` loads `params` exactly.

    With `tokenizer_dir` (a GPT-2 BPE dir, HF `vocab.json`/`merges.txt` or OpenAI `encoder.json`/`vocab.bpe`),
    the tokenizer is copied too so `AutoTokenizer`/lm-eval can load the dir, and bos/eos are its
    <|endoftext|>; `added_tokens` (e.g. a fine-tuned run's special tokens, name -> id beyond the BPE
    vocabulary) go to its tokenizer_config.json as special tokens. Everything is checked before anything is
    written. Scanned parameters (`model.scan_layers`) are unstacked: Hugging Face has one entry per layer.
    """
    eos = GPT2_EOS if cfg.vocab_size > GPT2_EOS else None
    tokenizer = None
    if tokenizer_dir is not None:
        tokenizer = _tokenizer_files(Path(tokenizer_dir))
        vocab = _read_json(tokenizer["vocab.json"])
        if max(vocab.values()) >= cfg.vocab_size:
            raise ConfigError(
                f"tokenizer {tokenizer['vocab.json']} has token ids up to {max(vocab.values())}, "
                f"outside model.vocab_size={cfg.vocab_size}"
            )
        eos = vocab.get("<|endoftext|>")
        ids = set(vocab.values())
        bad = {k: i for k, i in (added_tokens or {}).items() if k in vocab or i in ids or not 0 <= i < cfg.vocab_size}
        if bad:
            raise ConfigError(
                f"added tokens {bad} clash with a name or id of {tokenizer['vocab.json']} or are not below "
                f"model.vocab_size={cfg.vocab_size}"
            )
    hf_config = config_to_hf(cfg, eos)
    _raise_shape_problems(
        _shape_problems(_param_shapes(abstract_params(cfg)), _param_shapes(params)),
        f"params do not match config {cfg.name}",
    )
    if cfg.scan_layers:
        params, cfg = unstack_layers(params, cfg), dataclasses.replace(cfg, scan_layers=False)

    tensors = {k: np.ascontiguousarray(v) for k, v in _to_hf(params, cfg).items()}  # save_file needs contiguous
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    # The metadata save_pretrained writes; transformers 4.x refuses safetensors files without it.
    save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    for target, source in (tokenizer or {}).items():
        shutil.copyfile(source, out_dir / target)
    if tokenizer and added_tokens:
        decoder = {
            str(i): {"content": name, "special": True, "lstrip": False, "rstrip": False, "normalized": False}
            for name, i in sorted(added_tokens.items(), key=lambda item: item[1])
        }
        tokenizer_config = {"added_tokens_decoder": decoder, "additional_special_tokens": list(added_tokens)}
        (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return out_dir


__all__ = ["config_from_hf", "config_to_hf", "import_hf", "export_hf"]
