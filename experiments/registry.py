"""The registry of a sweep: `<sweep_dir>/registry.jsonl`, one record per finished point, derived entirely
from the run directories under `<sweep_dir>/runs/` so it can always be rebuilt (`rebuild_registry`).

A record holds:

| field | meaning |
|---|---|
| name, preset, seed | the point: run directory name, model preset, RunConfig.seed |
| steps, batch_size, seq_len, tokens_per_step | the training length and shape |
| params, non_embedding_params | `gptjax.model.param_count` of the model |
| tokens | tokens trained on (from metrics.jsonl) |
| flops_per_token, flops | training FLOPs per token and in total, by `gptjax.model.FLOPS_CONVENTION` (metrics.jsonl) |
| flops_6nd | Kaplan et al.'s estimate C = 6 N D, N = non-embedding parameters, D = tokens |
| final_train_loss | the last logged training loss (one batch) |
| final_eval_loss | the held-out loss at the last step |
| wall_time_s | seconds the runner spent on the point, over all attempts (null if the runner did not train it) |
| tokens_per_s, mfu | medians over the logged intervals (the first step, mostly compilation, is never one) |
| run_dir, eval_results | paths relative to the sweep directory: the run, and its latest eval/<step>.json or null |

Paths are relative so a sweep directory can be moved or copied and its registry stays valid.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from gptjax import model
from gptjax.config import RunConfig, from_dict
from gptjax.metrics import read_metrics
from gptjax.train import DONE_MARKER

REGISTRY_FILE = "registry.jsonl"
RUNS_DIR = "runs"
POINT_FILE = "sweep_point.json"  # written by the runner into each run directory: the wall time it spent

RECORD_FIELDS = ("name", "preset", "seed", "steps", "batch_size", "seq_len", "tokens_per_step", "params",
                 "non_embedding_params", "tokens", "flops_per_token", "flops", "flops_6nd", "final_train_loss",
                 "final_eval_loss", "wall_time_s", "tokens_per_s", "mfu", "run_dir", "eval_results")


class RegistryError(ValueError):
    """A finished run directory lacks what its registry record needs; the message names the file."""


def read_run(run_dir: Path) -> tuple[RunConfig, list[dict[str, Any]]]:
    """A run's config and its metrics records."""
    config_path, metrics_path = run_dir / "config.json", run_dir / "metrics.jsonl"
    for path in (config_path, metrics_path):
        if not path.is_file():
            raise RegistryError(f"{path} is missing: {run_dir} is not a complete gptjax run directory")
    return from_dict(RunConfig, json.loads(config_path.read_text())), read_metrics(metrics_path)


def _median(records: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records if key in r]
    return statistics.median(values) if values else None


def run_record(run_dir: Path, sweep_dir: Path) -> dict[str, Any]:
    """The registry record of one finished run directory."""
    run, records = read_run(run_dir)
    train = [r for r in records if "loss" in r]
    held_out = [r for r in records if "eval_loss" in r]
    if not train or not held_out:
        raise RegistryError(f"{run_dir / 'metrics.jsonl'} has no {'training' if not train else 'held-out'} loss "
                            "record, yet the run is marked done")
    counts = model.param_count(run.model)
    tokens_per_step = run.batch_size * run.sequence_length
    flops_per_token = model.flops_per_token(run.model, run.sequence_length)
    totals = [r for r in records if "tokens_seen" in r and r["step"] == run.steps]
    # A run whose last step was also the first of an attempt logs no throughput for it: count directly.
    tokens = totals[-1]["tokens_seen"] if totals else run.steps * tokens_per_step
    flops = totals[-1]["flops_seen"] if totals else tokens * flops_per_token
    point_file = run_dir / POINT_FILE
    wall_time = json.loads(point_file.read_text())["wall_time_s"] if point_file.is_file() else None
    evals = sorted((run_dir / "eval").glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
    return {
        "name": run_dir.name, "preset": run.model.name, "seed": run.seed, "steps": run.steps,
        "batch_size": run.batch_size, "seq_len": run.sequence_length, "tokens_per_step": tokens_per_step,
        "params": counts.total, "non_embedding_params": counts.non_embedding, "tokens": tokens,
        "flops_per_token": flops_per_token, "flops": flops, "flops_6nd": 6.0 * counts.non_embedding * tokens,
        "final_train_loss": train[-1]["loss"], "final_eval_loss": held_out[-1]["eval_loss"],
        "wall_time_s": wall_time, "tokens_per_s": _median(records, "tokens_per_s"), "mfu": _median(records, "mfu"),
        "run_dir": os.path.relpath(run_dir, sweep_dir),
        "eval_results": os.path.relpath(evals[-1], sweep_dir) if evals else None,
    }


def finished_run_dirs(sweep_dir: Path) -> list[Path]:
    runs = Path(sweep_dir) / RUNS_DIR
    if not runs.is_dir():
        return []
    return sorted(p for p in runs.iterdir() if p.is_dir() and (p / DONE_MARKER).exists())


def rebuild_registry(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Rewrite `<sweep_dir>/registry.jsonl` from the finished runs under `<sweep_dir>/runs/` (smallest model,
    then shortest run, then seed first) and return its records."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist")
    records = [run_record(run_dir, sweep_dir) for run_dir in finished_run_dirs(sweep_dir)]
    records.sort(key=lambda r: (r["non_embedding_params"], r["tokens"], r["seed"], r["name"]))
    path = sweep_dir / REGISTRY_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)  # a reader never sees half a registry
    return records


def read_registry(sweep_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(sweep_dir) / REGISTRY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {sweep_dir} is not a sweep directory (no registry)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


__all__ = ["POINT_FILE", "RECORD_FIELDS", "REGISTRY_FILE", "RUNS_DIR", "RegistryError", "finished_run_dirs",
           "read_registry", "read_run", "rebuild_registry", "run_record"]
