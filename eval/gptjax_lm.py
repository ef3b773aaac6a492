"""The gptjax implementation of the eval `LanguageModel`: (params, ModelConfig, vocabulary) behind
`gptjax.model.forward` for scoring and `gptjax.decode.generate` for greedy generation."""

from __future__ import annotations

import functools
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
from gptjax.hf import import_hf
from gptjax.model import forward, output_embedding, param_count
from gptjax.rundir import RunDir
from gptjax.runs import load_for_inference
from gptjax.tokenizers import get_vocabulary


@functools.lru_cache(maxsize=16)
def _features_fn(cfg: ModelConfig) -> FeaturesFn:
    """The same function object for equal configs, so compiled scorers are shared (see scoring._jitted)."""

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
        mesh: Mesh | None = None,
        batch_axes: Sequence[str] | None = None,
        param_shardings: Any = None,
        batch_tokens: int = 1024,
        max_gen_toks: int | None = None,
        generate_batch_size: int = 32,
    ) -> None:
        if cfg.vocab_size != tokenizer.vocab_size:
            raise ConfigError(
                f"the model has vocab_size={cfg.vocab_size} but tokenizer {tokenizer.name!r} has "
                f"{tokenizer.vocab_size} ids; evaluate with the tokenizer the model was trained with"
            )
        super().__init__(tokenizer, cfg.n_ctx, max_gen_toks or min(DEFAULT_MAX_GEN_TOKS, cfg.n_ctx // 2))
        counts = param_count(cfg)
        self.info = ModelInfo(name or cfg.name, counts.total, counts.non_embedding, checkpoint, step)
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
        return cls(params, cfg, vocab, checkpoint=str(run.checkpoints_dir), step=step, **kwargs)

    @classmethod
    def from_hf(cls, model_dir: str | Path, tokenizer: str = "gpt2", **kwargs: Any) -> GptjaxLM:
        """A Hugging Face GPT-2 directory (config.json + safetensors)."""
        cfg, params = import_hf(model_dir)
        return cls(params, cfg, get_vocabulary(tokenizer), checkpoint=str(model_dir), **kwargs)

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

    def generate(self, prompts: Sequence[Tokens], max_new_tokens: int, until: Sequence[str]) -> list[Tokens]:
        stops = self._stop_sequences(until)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Tokens] = [[] for _ in prompts]
        n = self.generate_batch_size
        for start in range(0, len(order), n):
            rows = order[start : start + n]
            batch = [prompts[i] for i in rows]
            batch += [batch[-1]] * (n - len(batch))  # a fixed batch size keeps the compiled shapes few
            generated = decode.generate(
                self.params,
                self.cfg,
                batch,
                max_new_tokens=max_new_tokens,
                method="greedy",
                stop_sequences=stops,
                eos_id=self.tokenizer.eos_id,
                include_stop=True,
            )
            for i, ids in zip(rows, generated):
                out[i] = ids
        return out
