"""Synthetic multi-digit addition in three answer formats, for training and evaluating tiny reasoners.

Formats (one example per line, "a+b=" is the prompt, the rest up to the newline the target):
- plain:      "357+468=825"
- reversed:   "357+468=528"            the sum's digits least significant first (Lee et al. 2023)
- scratchpad: "357+468=7+8+0=15,5+6+1=12,3+4+1=8|825"  one "x+y+carry=s" step per digit, least significant
  first, then the sum after "|" (a compact form of Nye et al. 2021's scratchpad)
- multipath:  one of three reasoning paths to the same "|sum", chosen per example (`variant`): the
  scratchpad's column steps, or partial sums adding the second operand's places to the first from the top
  ("357+400=757,757+60=817,817+8=825|825"), or the first's to the second ("468+300=768,...|825"). Paths that
  differ are what self-consistency votes over (Wang et al. 2022); the other formats have one path each.
Operands are drawn uniformly with exactly `digits` digits from `random.Random(seed)`, so a (seed, n, digits)
triple always names the same problems. `answer(fmt)` reads the sum back from a generation in that format
(eval.cot.FALLBACK when it cannot); `task` is the eval.generation task scoring the sum by exact match.
"""

from __future__ import annotations

import random
from typing import Literal

from eval import cot
from eval.decoding import Decoding
from eval.generation import GenerationTask

Format = Literal["plain", "reversed", "scratchpad", "multipath"]
FORMATS: tuple[Format, ...] = ("plain", "reversed", "scratchpad", "multipath")
N_VARIANTS = {"plain": 1, "reversed": 1, "scratchpad": 1, "multipath": 3}
ALPHABET = "0123456789+=,|\n"  # every character any format uses


def problems(n: int, digits: int, seed: int) -> list[tuple[int, int]]:
    """`n` (a, b) pairs of `digits`-digit operands."""
    rnd = random.Random(seed)
    low, high = 10 ** (digits - 1), 10**digits - 1
    return [(rnd.randint(low, high), rnd.randint(low, high)) for _ in range(n)]


def scratchpad(a: int, b: int) -> str:
    """The per-digit steps "x+y+carry=s", least significant first, joined by ','."""
    xs, ys = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(xs), len(ys))):
        x, y = int(xs[i]) if i < len(xs) else 0, int(ys[i]) if i < len(ys) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s}")
        carry = s // 10
    return ",".join(steps)


def partial_sums(a: int, b: int) -> str:
    """`a` plus each place of `b` from the most significant: "a+b_k=s,s+b_(k-1)=s',..." joined by ','."""
    steps, total = [], a
    for place, digit in enumerate(str(b)):
        term = int(digit) * 10 ** (len(str(b)) - 1 - place)
        steps.append(f"{total}+{term}={total + term}")
        total += term
    return ",".join(steps)


def target(a: int, b: int, fmt: Format, variant: int = 0) -> str:
    """What follows "a+b=" in format `fmt` (for multipath, reasoning path `variant` of N_VARIANTS)."""
    if fmt == "plain":
        return str(a + b)
    if fmt == "reversed":
        return str(a + b)[::-1]
    if fmt == "scratchpad" or (fmt == "multipath" and variant == 0):
        return f"{scratchpad(a, b)}|{a + b}"
    if fmt == "multipath" and variant in (1, 2):
        return f"{partial_sums(a, b) if variant == 1 else partial_sums(b, a)}|{a + b}"
    raise ValueError(f"format {fmt!r} variant {variant}; valid: {N_VARIANTS}")


def max_target_length(pairs: list[tuple[int, int]], fmt: Format) -> int:
    return max(len(target(a, b, fmt, v)) for a, b in pairs for v in range(N_VARIANTS[fmt]))


def prompt(a: int, b: int) -> str:
    return f"{a}+{b}="


def example(a: int, b: int, fmt: Format, variant: int = 0) -> str:
    """One training line, newline included."""
    return f"{prompt(a, b)}{target(a, b, fmt, variant)}\n"


def answer(fmt: Format) -> cot.Filter:
    """The filter reading the sum (as a decimal string) out of a generated target in `fmt`."""

    def read(text: str) -> str:
        text = cot.first_line(text)
        if fmt in ("scratchpad", "multipath"):
            text = text.rsplit("|", 1)[1] if "|" in text else ""
        elif fmt == "reversed":
            text = text[::-1]
        return text if text.isdigit() else cot.FALLBACK

    return read


def task(pairs: list[tuple[int, int]], fmt: Format, decoding: Decoding | None = None) -> GenerationTask:
    """Exact match of the sum read from each generation (greedy to the newline unless `decoding` says)."""
    return GenerationTask(
        f"addition_{fmt}",
        [{"a": a, "b": b} for a, b in pairs],
        prompt=lambda d: prompt(d["a"], d["b"]),
        references=lambda d: [str(d["a"] + d["b"])],
        decoding=decoding or Decoding(max_tokens=max_target_length(pairs, fmt) + 8, until=("\n",)),
        metrics=("exact_match",),
        extract=answer(fmt),
    )
