"""Answer extraction and self-consistency: what turns N free-form generations into one scored answer.

A `Filter` maps one generation to a string (lm-eval's per-response filters: `regex`, first line, first
sentence, GSM8K's "#### N" and chain-of-thought's "The answer is N"); a pipeline applies filters in order.
`majority_vote` is Wang et al. (2022)'s self-consistency: the most frequent extracted answer over the
sampled reasoning paths. Invariants: filters never raise on any string (a miss gives `FALLBACK`, as in
lm-eval's RegexFilter), and votes are exact counts with ties broken by the answer that occurred first in
sampling order, which is also what lm-eval's `Counter.most_common(1)` returns (insertion order). The
fallback is a vote like any other unless `ignore_fallback`: a path whose answer could not be parsed then
abstains, and only an all-abstaining document votes `FALLBACK`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

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
