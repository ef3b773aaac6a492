"""The gptjax implementation of the eval `LanguageModel`: (params, ModelConfig, vocabulary) behind
`gptjax.model.forward` for scoring and `gptjax.decode.generate` (greedy, sampling or beam) for generation.

A Hugging Face directory is scored with the tokenizer saved in it (`hf_tokenizer`), and everything that can
be checked without the weights (tokenizer, config.json, their agreement) is checked before they are read.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh

from eval.lm import DEFAULT_MAX_GEN_TOKS, ModelInfo, TokenizedLM
from eval.requests import Tokenizer, Tokens
from eval.scoring import BatchScorer, FeaturesFn, Rows
from gptjax import decode
from gptjax.config import ConfigError, ModelConfig
from gptjax.errors import InputNotFoundError
from gptjax.hf import config_from_hf, import_hf
from gptjax.model import forward, output_embedding, param_count
from gptjax.plain_tokenizers import TokenizerError, get_tokenizer, hf_dir_tokenizer
from gptjax.rundir import RunDir
from gptjax.runs import load_for_inference

DEFAULT_TOKENIZER = "gpt2"  # for a Hugging Face directory that holds no tokenizer files


@functools.lru_cache(maxsize=16)
def _features_fn(cfg: ModelConfig) -> FeaturesFn:
    """The same function object for equal configs, so compiled scorers are shared (see scoring._jitted_body)."""

    def features(params: Any, rows: Rows) -> jax.Array:
        return forward(
            params,
            rows.tokens,
            cfg,
            positions=rows.positions,
            segment_ids=rows.segment_ids,
            branch_ids=rows.branch_ids,
            return_features=True,
        )

    return features


def hf_tokenizer(model_dir: str | Path, tokenizer: str | None = None) -> tuple[Tokenizer, str]:
    """The tokenizer to score a Hugging Face directory with, and where it came from: the directory's own
    (gptjax.plain_tokenizers.hf_dir_tokenizer) when it holds one, else `tokenizer` (default gpt2). An
    explicit `tokenizer` that differs from the directory's is an error: one of the two is wrong."""
    own = hf_dir_tokenizer(model_dir)
    if own is None:
        spec = tokenizer or DEFAULT_TOKENIZER
        given = "given" if tokenizer else "the default"
        return get_tokenizer(spec), f"tokenizer spec {spec!r} ({given}; {model_dir} holds no tokenizer files)"
    if tokenizer is not None and (other := get_tokenizer(tokenizer)).name != own.name:
        raise TokenizerError(
            f"{model_dir} holds its own tokenizer {own.name} ({own.source}), but tokenizer {tokenizer!r} is "
            f"{other.name}; leave the tokenizer unset to use the directory's"
        )
    return own, own.source


def check_vocab(cfg: ModelConfig, tokenizer: Tokenizer, eos_token_id: int | None = None) -> None:
    """The tokenizer's ids are the model's: same vocabulary size and, when the model declares one, EOS id."""
    if cfg.vocab_size != tokenizer.vocab_size:
        raise ConfigError(
            f"the model has vocab_size={cfg.vocab_size} but tokenizer {tokenizer.name!r} has "
            f"{tokenizer.vocab_size} ids; evaluate with the tokenizer the model was trained with"
        )
    if eos_token_id is not None and eos_token_id != tokenizer.eos_id:
        raise ConfigError(
            f"the model's eos_token_id is {eos_token_id} but tokenizer {tokenizer.name!r} has EOS id "
            f"{tokenizer.eos_id}; evaluate with the tokenizer the model was trained with"
        )


class GptjaxLM(TokenizedLM):
    """Scores with a jitted, prefix-sharing, packed `BatchScorer`; optionally shards batches over a mesh.

    `max_gen_toks` defaults to lm-eval's 256, capped at half the window so tiny models keep room for a prompt.
    """

    def __init__(
        self,
        params: Any,
        cfg: ModelConfig,
        tokenizer: Tokenizer,
        *,
        name: str | None = None,
        checkpoint: str | None = None,
        step: int | None = None,
        tokenizer_source: str | None = None,
        mesh: Mesh | None = None,
        batch_axes: Sequence[str] | None = None,
        param_shardings: Any = None,
        batch_tokens: int = 1024,
        max_gen_toks: int | None = None,
        generate_batch_size: int = 32,
    ) -> None:
        check_vocab(cfg, tokenizer)
        super().__init__(tokenizer, cfg.n_ctx, max_gen_toks or min(DEFAULT_MAX_GEN_TOKS, cfg.n_ctx // 2))
        counts = param_count(cfg)
        self.info = ModelInfo(name or cfg.name, counts.total, counts.non_embedding, checkpoint, step, tokenizer_source)
        self.cfg = cfg
        self.generate_batch_size = generate_batch_size
        self.scorer = BatchScorer(
            _features_fn(cfg),
            params,
            output_embedding(params, cfg),
            cfg.n_ctx,
            batch_tokens=batch_tokens,
            mesh=mesh,
            batch_axes=batch_axes,
            param_shardings=param_shardings,
        )
        self._token_texts: list[str] | None = None

    @classmethod
    def from_run(cls, run_dir: str | Path, step: int | None = None, **kwargs: Any) -> GptjaxLM:
        """A run directory's checkpoint (the latest unless `step` is given) with the run's tokenizer."""
        params, cfg, vocab, step = load_for_inference(run_dir, step)
        run = RunDir(run_dir)
        kwargs.setdefault("name", run.path.resolve().name)
        source = f"tokenizer spec {run.read_config().data.vocab!r} (the run's data.vocab)"
        return cls(
            params, cfg, vocab, checkpoint=str(run.checkpoints_dir), step=step, tokenizer_source=source, **kwargs
        )

    @classmethod
    def from_hf(cls, model_dir: str | Path, tokenizer: str | None = None, **kwargs: Any) -> GptjaxLM:
        """A Hugging Face GPT-2 directory (config.json + safetensors) with its own tokenizer (`hf_tokenizer`;
        `tokenizer` is a spec for a directory without one). The tokenizer and config.json are read and
        checked against each other before the weights."""
        if not Path(model_dir).is_dir():
            raise InputNotFoundError(f"Hugging Face model dir {model_dir} does not exist")
        vocab, source = hf_tokenizer(model_dir, tokenizer)
        config_json = Path(model_dir) / "config.json"
        if not config_json.is_file():
            raise InputNotFoundError(f"{config_json} does not exist (is {model_dir} a Hugging Face model dir?)")
        hf_config = json.loads(config_json.read_text())
        check_vocab(config_from_hf(hf_config, str(model_dir)), vocab, hf_config.get("eos_token_id"))
        cfg, params = import_hf(model_dir)
        return cls(params, cfg, vocab, checkpoint=str(model_dir), tokenizer_source=source, **kwargs)

    @property
    def params(self) -> Any:
        return self.scorer.params

    def score(self, requests: Sequence[tuple[Tokens, Tokens]]) -> list[tuple[float, bool]]:
        return self.scorer(requests)

    def _stop_sequences(self, until: Sequence[str]) -> list[list[int]]:
        """Token sequences that end generation early: each stop string's encoding, and every single token
        whose text contains a stop string (e.g. "\\n\\n" for "\\n"). The cut itself is made on the text."""
        if self._token_texts is None:
            self._token_texts = [self.tokenizer.decode([i]) for i in range(self.cfg.vocab_size)]
        stops = [list(self.tokenizer.encode(s)) for s in until if s]
        stops += [[i] for i, text in enumerate(self._token_texts) if any(s and s in text for s in until)]
        return [s for s in stops if s]

    def generate(
        self,
        prompts: Sequence[Tokens],
        max_new_tokens: int,
        until: Sequence[str],
        options: tuple[tuple[str, Any], ...] = (),
    ) -> list[Tokens]:
        """Batch b of the prompts sorted by length samples with fold_in(key(seed), b): a fixed seed and request
        list give the same generations, and equal prompts in a batch are independent draws."""
        kwargs = dict(options) or {"method": "greedy"}
        seed = kwargs.pop("seed", None)
        key = None if seed is None else jax.random.key(seed)
        stops = self._stop_sequences(until)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Tokens] = [[] for _ in prompts]
        n = self.generate_batch_size
        for b, start in enumerate(range(0, len(order), n)):
            rows = order[start : start + n]
            batch = [prompts[i] for i in rows]
            batch += [batch[-1]] * (n - len(batch))  # a fixed batch size keeps the compiled shapes few
            generated = decode.generate(
                self.params,
                self.cfg,
                batch,
                max_new_tokens=max_new_tokens,
                stop_sequences=stops,
                eos_id=self.tokenizer.eos_id,
                include_stop=True,
                rng=None if key is None else jax.random.fold_in(key, b),
                **kwargs,
            )
            for i, ids in zip(rows, generated):
                out[i] = ids
        return out
