"""How a generation task decodes: `Decoding` (greedy, sampling, beam; stops, max tokens, N samples) and its
reading from a task YAML's lm-eval keys.

This module is light (no JAX) so the task registry can validate decoding options when it loads a YAML,
before any model exists. `from_generation_kwargs` reads lm-eval's `generation_kwargs` (`do_sample`,
`temperature`, `top_k`, `top_p`, `until`, `max_gen_toks`, which lm-eval passes on to Hugging Face's
`generate`) plus `num_beams` / `length_penalty` (the same names, gptjax's beam search) and gptjax's `seed`,
and lm-eval's `repeats` (N samples per prompt). Invariants: an option that only one method uses is refused
for the others, so a YAML never silently decodes other than it says; `request_options()` is what a
`GenerationRequest` carries, hashable, so requests with equal options batch together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gptjax.errors import GptjaxError

# generation_kwargs keys: lm-eval's, then gptjax's (beam search and the sampling seed).
GENERATION_KEYS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")
GPTJAX_GENERATION_KEYS = ("num_beams", "length_penalty", "seed")


class GenerationError(GptjaxError, ValueError):
    """Inconsistent decoding options or task definition; the message names the value."""


@dataclass(frozen=True)
class Decoding:
    """How to decode: options only meaningful for one method are refused for the others."""

    method: Literal["greedy", "sample", "beam"] = "greedy"
    max_tokens: int = 64
    until: tuple[str, ...] = ()
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    num_beams: int = 1
    length_penalty: float = 0.0
    num_samples: int = 1  # > 1 only for sampling: greedy and beam paths would all be equal

    def __post_init__(self) -> None:
        if self.method not in ("greedy", "sample", "beam"):
            raise GenerationError(f"decoding method={self.method!r}; valid: 'greedy', 'sample', 'beam'")
        if self.max_tokens < 1:
            raise GenerationError(f"decoding max_tokens={self.max_tokens} must be >= 1")
        if self.num_samples < 1 or (self.num_samples > 1 and self.method != "sample"):
            raise GenerationError(f"decoding num_samples={self.num_samples} must be 1 unless method='sample'")
        if self.method != "sample" and (self.temperature != 1.0 or self.top_k is not None or self.top_p is not None):
            raise GenerationError(
                f"temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p} need method='sample', "
                f"got method={self.method!r}"
            )
        if self.method == "sample" and self.temperature <= 0:
            raise GenerationError(f"decoding temperature={self.temperature} must be > 0 (use method='greedy')")
        if self.top_k is not None and self.top_k < 1:
            raise GenerationError(f"decoding top_k={self.top_k} must be >= 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise GenerationError(f"decoding top_p={self.top_p} must be in (0, 1]")
        if self.num_beams < 1:
            raise GenerationError(f"decoding num_beams={self.num_beams} must be >= 1")
        if self.method != "beam" and (self.num_beams != 1 or self.length_penalty != 0.0):
            raise GenerationError(
                f"num_beams={self.num_beams}, length_penalty={self.length_penalty} need method='beam', "
                f"got method={self.method!r}"
            )

    def generate_kwargs(self) -> dict[str, Any]:
        """The options `gptjax.decode.generate` takes for this method (no key: `generate` derives it)."""
        if self.method == "sample":
            return {"method": "sample", "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}
        if self.method == "beam":
            return {"method": "beam", "num_beams": self.num_beams, "length_penalty": self.length_penalty}
        return {"method": "greedy"}

    def request_options(self) -> tuple[tuple[str, Any], ...]:
        """`generate_kwargs()` plus the sampling seed, as sorted pairs (() for greedy: the default request)."""
        if self.method == "greedy":
            return ()
        seed = {"seed": self.seed} if self.method == "sample" else {}
        return tuple(sorted((self.generate_kwargs() | seed).items()))


def _number(kwargs: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = kwargs[key]
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        what = "a number" if kind is float else "an integer"
        raise GenerationError(f"{where}: generation_kwargs.{key} must be {what}, got {value!r}")
    return kind(value)


def from_generation_kwargs(kwargs: Mapping[str, Any], repeats: int, where: str, max_tokens: int) -> Decoding:
    """The `Decoding` a task YAML's `generation_kwargs` and `repeats` ask for; `where` (the file) and the key
    start every error. `do_sample: true` samples (temperature default 1; top-k and top-p off unless set,
    where Hugging Face would default top_k to 50); otherwise decoding is greedy, or beam search with
    `num_beams` > 1. `max_tokens` stands in for an unset `max_gen_toks` (the model's default applies)."""
    unknown = sorted(set(kwargs) - set(GENERATION_KEYS) - set(GPTJAX_GENERATION_KEYS))
    if unknown:
        raise GenerationError(
            f"{where}: unknown generation_kwargs {unknown}; valid: {list(GENERATION_KEYS + GPTJAX_GENERATION_KEYS)}"
        )
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise GenerationError(f"{where}: repeats must be a positive integer, got {repeats!r}")
    do_sample = kwargs.get("do_sample", False)
    if not isinstance(do_sample, bool):
        raise GenerationError(f"{where}: generation_kwargs.do_sample must be true or false, got {do_sample!r}")
    until = kwargs.get("until", ())
    until = [until] if isinstance(until, str) else until
    if not isinstance(until, (list, tuple)) or not all(isinstance(s, str) for s in until):
        raise GenerationError(f"{where}: generation_kwargs.until must be a string or a list of strings, got {until!r}")
    values: dict[str, Any] = {"until": tuple(until), "num_samples": repeats}
    numbers = {"max_gen_toks": int, "temperature": float, "top_k": int, "top_p": float}
    numbers |= {"num_beams": int, "length_penalty": float, "seed": int}
    given = {key: _number(kwargs, key, kind, where) for key, kind in numbers.items() if key in kwargs}
    values["max_tokens"] = given.pop("max_gen_toks", max_tokens)
    if values["max_tokens"] < 1:
        raise GenerationError(f"{where}: generation_kwargs.max_gen_toks must be >= 1, got {values['max_tokens']}")
    if do_sample:
        if given.get("num_beams", 1) != 1 or "length_penalty" in given:
            raise GenerationError(f"{where}: beam search (num_beams, length_penalty) excludes do_sample")
        values |= {"method": "sample", **given}
    else:
        sampling = sorted(k for k in ("top_k", "top_p", "seed") if k in given)
        if given.pop("temperature", 0.0) != 0.0 or sampling:
            raise GenerationError(
                f"{where}: generation_kwargs {sampling or ['temperature']} need do_sample: true "
                "(without it decoding is greedy; temperature 0 is allowed)"
            )
        if repeats > 1:
            raise GenerationError(f"{where}: repeats {repeats} needs do_sample: true (greedy repeats are all equal)")
        beam = given.get("num_beams", 1) > 1 or "length_penalty" in given
        values |= {"method": "beam" if beam else "greedy", **given}
    try:
        return Decoding(**values)
    except GenerationError as err:
        raise GenerationError(f"{where}: generation_kwargs: {err}") from None
