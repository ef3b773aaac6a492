"""Sweep files: a base run config and the axes swept over it, expanded into one run config per point.

```toml
name = "my_sweep"                      # default: the file's stem; names the default output directory
description = "what the sweep is for"  # optional, shown in the report

[base]                                 # RunConfig fields, sections as tables (TOML's dotted keys work too)
batch_size = 16
seq_len = 64
optim.learning_rate = 3e-3
# preset = "tiny-200k"                 # the model, when [axes].presets does not sweep it

[axes]
presets = ["tiny-25k", "tiny-80k"]     # model sizes (or [base].preset: one of the two)
steps = [100, 200]                     # training lengths, and/or:
# tokens = [1e5, 2e5]                  # token budgets: steps = ceil(tokens / (batch_size * seq_len)), and/or:
# flops = [1e12, 4e12]                 # compute budgets (IsoFLOP profiles): every preset at every budget,
                                       # steps = round(flops / (flops_per_token * batch_size * seq_len))
seeds = [0, 1]                         # RunConfig.seed (initialisation and dropout); the data order is fixed

[per_preset."tiny-80k"]                # optional: what differs for one size (a learning-rate or batch rule)
optim.learning_rate = 2e-3

[per_length."200steps"]                # optional: what differs for one length, named as in the point names
fewshot.tasks = ["copa"]               # (e.g. "2Mtok", "1e12flops"): evaluate only these runs
```

Points are the product presets x lengths x seeds, in that order, where the lengths are the steps, then the
tokens, then the flops values given (at least one axis), each named `<preset>_<steps>steps_seed<seed>`,
`<preset>_<tokens>tok_seed<seed>` or `<preset>_<flops>flops_seed<seed>`, so a point keeps its name and run
directory when other values are added to an axis. A point's config is [base], then its preset's
[per_preset] table, then its length's [per_length] table. A point's preset is only looked up when the
point runs, so one bad value fails that point alone; everything else in the file is checked on loading.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptjax.config import ConfigError, RunConfig, apply_table, flatten, get_preset
from gptjax.errors import GptjaxError, InputNotFoundError
from gptjax.model import flops_per_token
from gptjax.rundir import PathLike, as_path

EMBEDDED_DIR = Path(__file__).resolve().parent / "sweeps"
_TOP_KEYS = {"name", "description", "base", "axes", "per_preset", "per_length"}
_AXIS_KEYS = {"presets", "steps", "tokens", "flops", "seeds"}
_SET_BY_SWEEP = {"run_dir", "steps", "seed"}  # keys the sweep sets itself; overriding them is an error


class SweepFileError(GptjaxError, ValueError):
    """A sweep file is malformed; the message names the file, the key and the value."""


@dataclass(frozen=True)
class Point:
    """One run of a sweep: a model preset trained for a number of steps, a token or a compute budget from
    one seed."""

    name: str
    preset: str
    seed: int
    steps: int | None  # exactly one of steps, tokens and flops is set
    tokens: int | None
    flops: float | None = None  # training FLOPs by gptjax.model.FLOPS_CONVENTION
    length: str = ""  # the length's label in the name ("200steps", "2Mtok", "1e12flops")

    def run_config(self, sweep: Sweep, run_dir: Path) -> RunConfig:
        """The full run config of this point (raises ConfigError for an unknown preset)."""
        run = apply_table(
            RunConfig(model=get_preset(self.preset)), {**sweep.base, "run_dir": os.fspath(run_dir), "seed": self.seed}
        )
        run = apply_table(run, sweep.per_preset.get(self.preset, {}))
        run = apply_table(run, sweep.per_length.get(self.length, {}))
        steps = self.steps
        per_step = run.batch_size * run.sequence_length
        if self.tokens is not None:
            steps = math.ceil(self.tokens / per_step)
        elif self.flops is not None:
            steps = max(1, round(self.flops / (flops_per_token(run.model, run.sequence_length) * per_step)))
        assert steps is not None
        return apply_table(run, {"steps": steps})


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file; `text` is the file itself, copied into the sweep directory for provenance."""

    name: str
    description: str
    base: dict[str, Any]  # the [base] table without `preset`: what every point's RunConfig starts from
    points: tuple[Point, ...]
    text: str
    per_preset: dict[str, dict[str, Any]] = field(default_factory=dict)  # preset -> its overrides of [base]
    per_length: dict[str, dict[str, Any]] = field(default_factory=dict)  # length label -> its overrides


def embedded_sweeps() -> dict[str, Path]:
    """The sweeps shipped in experiments/sweeps, by name."""
    return {path.stem: path for path in sorted(EMBEDDED_DIR.glob("*.toml"))}


def resolve_sweep_file(spec: str | Path) -> Path:
    """A path to a sweep file, or the name of an embedded sweep (e.g. `tiny_ladder`)."""
    path = Path(spec)
    if path.is_file():
        return path
    embedded = embedded_sweeps()
    if str(spec) in embedded:
        return embedded[str(spec)]
    raise InputNotFoundError(
        f"sweep file {spec} does not exist and is not an embedded sweep (embedded: {', '.join(sorted(embedded))})"
    )


def _list(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> list[Any] | None:
    if key not in table:
        return None
    values = table[key]
    if not isinstance(values, list) or not values:
        raise SweepFileError(f"{where}.{key} must be a non-empty list, got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise SweepFileError(f"{where}.{key} must hold {names} values, got {value!r}")
    if len(set(values)) != len(values):
        raise SweepFileError(f"{where}.{key} repeats a value: {values!r}")
    return values


def _unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise SweepFileError(f"{where} has unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    table = data.get(key, {})
    if not isinstance(table, dict):
        raise SweepFileError(f"{where}: [{key}] must be a table, got {table!r}")
    return table


def _tokens_label(tokens: int) -> str:
    """An exact short form: 102400 -> 102.4k, 2000000 -> 2M, 1234567 -> 1234.567k."""
    for divisor, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if tokens >= divisor and tokens % (divisor // 1000) == 0:
            return f"{tokens / divisor:.3f}".rstrip("0").rstrip(".") + suffix
    return str(tokens)


def _flops_label(flops: float) -> str:
    """3e9 -> 3e9, 1.25e12 -> 1.25e12: scientific notation without the '+' and leading zeros of '%g'."""
    mantissa, _, exponent = f"{flops:.4e}".partition("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _checked(run: RunConfig, table: dict[str, Any], where: str, place: str, reserved: set[str]) -> RunConfig:
    """`run` with `table` applied; a key the sweep sets itself, or a bad key or value, fails the whole sweep
    now, not every point later."""
    swept = sorted({key for key, _ in flatten(table)} & reserved)
    if swept:
        raise SweepFileError(
            f"{where} {place} sets {', '.join(swept)}, which the sweep sets per point "
            "(use [axes] presets/steps/tokens/seeds; run directories go under the sweep directory)"
        )
    try:
        return apply_table(run, table)
    except ConfigError as err:
        raise SweepFileError(f"{where} {place}: {err}") from None


def load_sweep(path: PathLike) -> Sweep:
    """Parse and check a sweep file, local or gs:// (see the module docstring for its format)."""
    path = as_path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SweepFileError(f"{path} is not valid TOML: {err}") from None
    where = str(path)
    _unknown(data, _TOP_KEYS, where)
    base, axes = _table(data, "base", where), _table(data, "axes", where)
    _unknown(axes, _AXIS_KEYS, f"{where} [axes]")
    name = data.get("name", path.stem)
    description = data.get("description", "")
    if not isinstance(name, str) or not name or "/" in name:
        raise SweepFileError(f"{where}: name must be a non-empty string without '/', got {name!r}")
    if not isinstance(description, str):
        raise SweepFileError(f"{where}: description must be a string, got {description!r}")

    config = {k: v for k, v in base.items() if k != "preset"}
    per_preset, per_length = _table(data, "per_preset", where), _table(data, "per_length", where)
    base_run = _checked(RunConfig(), config, where, "[base]", _SET_BY_SWEEP)
    for kind, tables in (("per_preset", per_preset), ("per_length", per_length)):
        for key, table in tables.items():
            if not isinstance(table, dict):
                raise SweepFileError(f"{where} [{kind}.{key!r}] must be a table, got {table!r}")
            _checked(base_run, table, where, f"[{kind}.{key!r}]", _SET_BY_SWEEP | {"preset"})

    presets = _list(axes, "presets", str, f"{where} [axes]")
    if "preset" in base and presets is not None:
        raise SweepFileError(f"{where}: give the model as [base].preset or as [axes].presets, not both")
    if presets is None:
        if not isinstance(base.get("preset"), str):
            raise SweepFileError(f"{where}: name the model(s) with [axes].presets or [base].preset")
        presets = [base["preset"]]
    steps = _list(axes, "steps", int, f"{where} [axes]")
    tokens = _list(axes, "tokens", (int, float), f"{where} [axes]")
    flops = _list(axes, "flops", (int, float), f"{where} [axes]")
    if steps is None and tokens is None and flops is None:
        raise SweepFileError(f"{where} [axes] must give at least one of steps, tokens and flops")
    seeds = _list(axes, "seeds", int, f"{where} [axes]") or [0]
    if any(t != int(t) for t in tokens or []):
        raise SweepFileError(f"{where} [axes].tokens must be whole numbers of tokens, got {tokens}")
    for key, values in (("steps", steps), ("tokens", tokens), ("flops", flops), ("seeds", seeds)):
        bad = [v for v in values or [] if v < (0 if key == "seeds" else 1)]
        if bad:
            raise SweepFileError(f"{where} [axes].{key} must be {'>= 0' if key == 'seeds' else 'positive'}, got {bad}")

    lengths: list[tuple[int | None, int | None, float | None, str]] = [
        *((s, None, None, f"{s}steps") for s in steps or []),
        *((None, int(t), None, f"{_tokens_label(int(t))}tok") for t in tokens or []),
        *((None, None, float(f), f"{_flops_label(float(f))}flops") for f in flops or []),
    ]
    for kind, tables, known in (
        ("per_preset", per_preset, presets),
        ("per_length", per_length, [x[3] for x in lengths]),
    ):
        unknown = sorted(set(tables) - set(known))
        if unknown:
            raise SweepFileError(f"{where} [{kind}] names {', '.join(unknown)}, not among {', '.join(known)}")
    points = tuple(
        Point(f"{preset}_{label}_seed{seed}", preset, seed, s, t, f, label)
        for preset in presets
        for s, t, f, label in lengths
        for seed in seeds
    )
    return Sweep(name, description, config, points, text, per_preset, per_length)


__all__ = ["Point", "Sweep", "SweepFileError", "embedded_sweeps", "load_sweep", "resolve_sweep_file"]
