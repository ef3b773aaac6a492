"""Answer extraction and self-consistency: what turns N free-form generations into one scored answer.

A `Filter` maps one generation to a string (lm-eval's per-response filters: `regex`, first line, first
sentence, GSM8K's "#### N" and chain-of-thought's "The answer is N"); a pipeline applies filters in order.
`majority_vote` is Wang et al. (2022)'s self-consistency: the most frequent extracted answer over the
sampled reasoning paths. Invariants: filters never raise on any string (a miss gives `FALLBACK`, as in
lm-eval's RegexFilter), and votes are exact counts with ties broken by the answer that occurred first in
sampling order, which is also what lm-eval's `Counter.most_common(1)` returns (insertion order). The
fallback is a vote like any other unless `ignore_fallback`: a path whose answer could not be parsed then
abstains, and only an all-abstaining document votes `FALLBACK`. `filter_pipelines` reads a task YAML's
lm-eval `filter_list` into `FilterPipeline`s over a document's N responses (`regex`, `remove_whitespace`,
`take_first`, `take_first_k`, `majority_vote`, as lm-eval's filters of those names, plus the GPT-2
extraction filters `first_line`, `first_sentence`, `first_sentences`); there, as in lm-eval, the fallback votes.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gptjax.errors import GptjaxError

Filter = Callable[[str], str]
FALLBACK = "[invalid]"  # lm-eval's RegexFilter fallback

GSM8K_PATTERN = r"#### (\-?[0-9\.\,]+)"  # lm-eval gsm8k "strict-match"
ANSWER_IS_PATTERN = r"The answer is (\-?[0-9\.\,]*[0-9]+)"  # lm-eval gsm8k-cot / self-consistency


def regex(pattern: str, group_select: int = 0, fallback: str = FALLBACK) -> Filter:
    """lm-eval's `regex` filter: the `group_select`-th match (negative counts from the end), its first
    non-empty group when the pattern has several, stripped; `fallback` when nothing matches."""
    compiled = re.compile(pattern)

    def extract(text: str) -> str:
        matches = compiled.findall(text)
        if not matches:
            return fallback
        match = matches[group_select]
        if isinstance(match, tuple):
            match = next((m for m in match if m), fallback)
        return match.strip()

    return extract


def first_line(text: str) -> str:
    """The text up to its first newline, stripped (GPT-2's translation keeps only the first sentence/line)."""
    return text.strip().split("\n", 1)[0].strip()


_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def first_sentence(text: str) -> str:
    """The first line up to and including its first '.', '!' or '?' followed by whitespace."""
    return _SENTENCE_END.split(first_line(text), maxsplit=1)[0]


def first_sentences(n: int) -> Filter:
    """The first `n` sentences of the text (GPT-2 scored its TL;DR summaries on the first 3)."""

    def extract(text: str) -> str:
        return " ".join(_SENTENCE_END.split(" ".join(text.split()), maxsplit=n)[:n])

    return extract


def normalize_number(text: str) -> str:
    """A numeric answer's canonical string: commas, '$' and a trailing '.' dropped ("1,000." -> "1000")."""
    return text.replace(",", "").replace("$", "").rstrip(".")


def gsm8k_answer(text: str) -> str:
    """The number after GSM8K's "#### " marker, normalised."""
    found = regex(GSM8K_PATTERN)(text)
    return found if found == FALLBACK else normalize_number(found)


def answer_is(text: str) -> str:
    """The number in chain-of-thought's "The answer is N", normalised."""
    found = regex(ANSWER_IS_PATTERN)(text)
    return found if found == FALLBACK else normalize_number(found)


def pipeline(*filters: Filter) -> Filter:
    """The filters applied left to right."""

    def run(text: str) -> str:
        for f in filters:
            text = f(text)
        return text

    return run


def majority_vote(answers: Sequence[str], ignore_fallback: bool = False) -> tuple[str, int]:
    """(the most frequent answer, its count). Ties go to the tied answer that appears first in `answers`.

    With `ignore_fallback`, `FALLBACK` answers abstain (an all-fallback list still returns FALLBACK, count 0).
    """
    if not answers:
        raise ValueError("majority_vote needs at least one answer")
    votes = [a for a in answers if not (ignore_fallback and a == FALLBACK)]
    if not votes:
        return FALLBACK, 0
    counts = Counter(votes)  # insertion ordered: max() keeps the first of equal counts
    winner = max(counts, key=counts.__getitem__)
    return winner, counts[winner]


# ---------------------------------------------------------------------------------------------------------
# lm-eval's filter pipelines (a task YAML's `filter_list`), over all N responses of a document.


class FilterError(GptjaxError, ValueError):
    """A `filter_list` entry names an unknown function or bad options; the message says which."""


Step = Callable[[list[str]], list[str]]


def _each(f: Filter) -> Step:
    return lambda responses: [f(r) for r in responses]


def _take_first_k(k: int) -> Step:
    return lambda responses: responses[:k]


def _vote(responses: list[str]) -> list[str]:
    return [majority_vote(responses)[0]]  # lm-eval's MajorityVoteFilter: a fallback is a vote like any other


# function name -> (its options and their defaults, the step it builds, how many responses it leaves: None =
# as many as it was given). lm-eval's functions first, then gptjax's GPT-2 extraction filters.
FILTER_FUNCTIONS: dict[str, tuple[dict[str, Any], Callable[..., Step], Callable[[int, dict], int] | None]] = {
    "regex": (
        {"regex_pattern": GSM8K_PATTERN, "group_select": 0, "fallback": FALLBACK},
        lambda regex_pattern, group_select, fallback: _each(regex(regex_pattern, group_select, fallback)),
        None,
    ),
    "remove_whitespace": ({}, lambda: _each(str.strip), None),
    "take_first": ({}, lambda: _take_first_k(1), lambda n, o: 1),
    "take_first_k": ({"k": None}, _take_first_k, lambda n, o: o["k"]),
    "majority_vote": ({}, lambda: _vote, lambda n, o: 1),
    "first_line": ({}, lambda: _each(first_line), None),
    "first_sentence": ({}, lambda: _each(first_sentence), None),
    "first_sentences": ({"n": None}, lambda n: _each(first_sentences(n)), None),
}


@dataclass(frozen=True)
class FilterPipeline:
    """One named lm-eval filter pipeline: steps applied in order to a document's responses, which must leave
    exactly one answer (lm-eval scores `results[0]` after its `take_first`)."""

    name: str
    steps: tuple[Step, ...]

    def __call__(self, responses: Sequence[str]) -> str:
        out = list(responses)
        for step in self.steps:
            out = step(out)
        return out[0]


def filter_pipelines(filter_list: Any, repeats: int, where: str) -> tuple[FilterPipeline, ...]:
    """lm-eval's `filter_list` ([{name, filter: [{function, **options}]}]) as pipelines, checked here: known
    functions and options, take_first_k within `repeats`, one answer left at the end."""
    if not isinstance(filter_list, (list, tuple)) or not filter_list:
        raise FilterError(f"{where}: filter_list must be a non-empty list of {{name, filter}} entries")
    pipelines, names = [], set()
    for i, entry in enumerate(filter_list):
        if not isinstance(entry, dict) or set(entry) != {"name", "filter"} or not isinstance(entry["filter"], list):
            raise FilterError(f"{where}: filter_list[{i}] must be {{name: NAME, filter: [...]}}, got {entry!r}")
        name = str(entry["name"])
        if name in names:
            raise FilterError(f"{where}: filter_list names {name!r} twice")
        names.add(name)
        steps, n = [], repeats
        for j, step in enumerate(entry["filter"]):
            at = f"{where}: filter_list[{i}] ({name}) filter[{j}]"
            function = step.get("function") if isinstance(step, dict) else None
            if function not in FILTER_FUNCTIONS:
                raise FilterError(f"{at}: function {function!r} is not one of {list(FILTER_FUNCTIONS)}")
            defaults, build, count = FILTER_FUNCTIONS[function]
            options = {k: v for k, v in step.items() if k != "function"}
            unknown = sorted(set(options) - set(defaults))
            if unknown:
                raise FilterError(f"{at}: {function} has no options {unknown}; valid: {list(defaults)}")
            options = defaults | options
            for key in ("k", "n", "group_select"):
                if key in options and (isinstance(options[key], bool) or not isinstance(options[key], int)):
                    raise FilterError(f"{at}: {function} needs an integer {key}, got {options[key]!r}")
            if function == "take_first_k" and not 1 <= options["k"] <= n:
                raise FilterError(f"{at}: take_first_k k={options['k']} needs 1 <= k <= {n} responses (repeats)")
            if function == "regex":
                try:
                    re.compile(options["regex_pattern"])
                except (re.error, TypeError) as err:
                    raise FilterError(f"{at}: regex_pattern {options['regex_pattern']!r} is invalid: {err}") from None
            steps.append(build(**options))
            n = n if count is None else count(n, options)
        if n != 1:
            raise FilterError(
                f"{where}: filter_list[{i}] ({name}) leaves {n} responses; end it with take_first or majority_vote"
            )
        pipelines.append(FilterPipeline(name, tuple(steps)))
    return tuple(pipelines)
