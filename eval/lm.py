"""The model boundary: eval talks to a `LanguageModel` and nothing else.

`TokenizedLM` turns the string-level requests into token requests with lm-eval's rules (eval.requests), so
a backend only implements two token-level primitives: `score` (sum log-prob and greedy flag of a
continuation given a context) and `generate` (continuations of prompts: greedy, or as a request's
`options` say).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from eval.requests import (
    GenerationRequest,
    LoglikelihoodResult,
    Tokenizer,
    Tokens,
    encode_request,
    model_input,
    rolling_requests,
    split_request,
    truncate_generation,
)

log = logging.getLogger(__name__)

EOS_TEXT = "<|endoftext|>"  # lm-eval adds the EOS string to every generation's stop strings
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HFLM.max_gen_toks


@dataclass(frozen=True)
class ModelInfo:
    """What the results file records about the model."""

    name: str
    params: int
    non_embedding_params: int
    checkpoint: str | None = None
    step: int | None = None
    tokenizer_source: str | None = None  # where the tokenizer was read from, when the model knows


class LanguageModel(Protocol):
    info: ModelInfo
    tokenizer_name: str
    max_length: int  # context window in tokens

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[LoglikelihoodResult]:
        """log P(continuation | context) for each (context, continuation)."""
        ...

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """log P(text) of each whole text, scored in rolling windows."""
        ...

    def generate_until(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Continuation of each context (greedy unless its `options` say otherwise), cut at the first stop
        string. Equal requests are separate draws when sampling (lm-eval's `repeats`)."""
        ...


class TokenizedLM(abc.ABC):
    """A LanguageModel built from a tokenizer and two token-level primitives."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS) -> None:
        if max_gen_toks >= max_length:
            raise ValueError(
                f"max_gen_toks={max_gen_toks} leaves no room for a prompt in the model window max_length={max_length}"
            )
        self.tokenizer = tokenizer
        self.tokenizer_name = tokenizer.name
        self.max_length = max_length
        self.max_gen_toks = max_gen_toks

    @abc.abstractmethod
    def score(self, requests: Sequence[tuple[Tokens, Tokens]]) -> list[tuple[float, bool]]:
        """(sum log-prob, is_greedy) of each continuation; inputs are truncated with `model_input`."""

    @abc.abstractmethod
    def generate(
        self,
        prompts: Sequence[Tokens],
        max_new_tokens: int,
        until: Sequence[str],
        options: tuple[tuple[str, Any], ...] = (),
    ) -> list[Tokens]:
        """New tokens for each prompt, greedy unless `options` (GenerationRequest.options) say otherwise; may
        stop early once the decoded text holds a stop string."""

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[LoglikelihoodResult]:
        pieces = [split_request(*encode_request(self.tokenizer, ctx, cont), self.max_length) for ctx, cont in requests]
        truncated = [any(model_input(c, k, self.max_length)[1] for c, k in p) for p in pieces]
        if any(truncated):
            log.warning(
                "%d of %d requests exceed the %d-token window and lose context tokens on the left",
                sum(truncated),
                len(truncated),
                self.max_length,
            )
        scores = iter(self.score([piece for p in pieces for piece in p]))
        results = []
        for p, t in zip(pieces, truncated):
            scored = [next(scores) for _ in p]
            results.append(LoglikelihoodResult(sum(lp for lp, _ in scored), all(g for _, g in scored), t))
        return results

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        per_text = [rolling_requests(self.tokenizer, text, self.max_length) for text in texts]
        scores = iter(self.score([w for windows in per_text for w in windows]))
        return [sum(next(scores)[0] for _ in windows) for windows in per_text]

    def generate_until(self, requests: Sequence[GenerationRequest]) -> list[str]:
        out: list[str] = [""] * len(requests)
        groups: dict[tuple[int, tuple[str, ...], tuple[tuple[str, Any], ...]], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.max_gen_toks or self.max_gen_toks, r.until, r.options), []).append(i)
        for (max_new, until, options), rows in groups.items():
            if max_new >= self.max_length:
                raise ValueError(
                    f"max_gen_toks={max_new} leaves no room for a prompt in the model window "
                    f"max_length={self.max_length}"
                )
            stops = list(until) + ([EOS_TEXT] if EOS_TEXT not in until else [])
            # lm-eval keeps the last max_length - max_gen_toks context tokens; an empty prompt gets the EOS.
            prompts = [
                list(self.tokenizer.encode(requests[i].context))[-(self.max_length - max_new) :]
                or [self.tokenizer.eos_id]
                for i in rows
            ]
            for i, ids in zip(rows, self.generate(prompts, max_new, stops, options)):
                out[i] = truncate_generation(self.tokenizer.decode(ids), stops)
        return out
