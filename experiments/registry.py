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
| cpu_time_s | CPU seconds (user + system, all threads) the runner's process spent on it, over all attempts |
| tokens_per_s, mfu | medians over the logged intervals (the first step, mostly compilation, is never one) |
| run_dir, eval_results | paths relative to the sweep directory: the run, and its latest eval/<step>.json or null |

Paths are relative so a sweep directory can be moved or copied and its registry stays valid.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from gptjax import model
from gptjax.config import RunConfig
from gptjax.errors import GptjaxError, InputNotFoundError
from gptjax.metrics import read_metrics
from gptjax.rundir import PathLike, RunDir, SweepDir, write_atomic

RECORD_FIELDS = (
    "name",
    "preset",
    "seed",
    "steps",
    "batch_size",
    "seq_len",
    "tokens_per_step",
    "params",
    "non_embedding_params",
    "tokens",
    "flops_per_token",
    "flops",
    "flops_6nd",
    "final_train_loss",
    "final_eval_loss",
    "wall_time_s",
    "cpu_time_s",
    "tokens_per_s",
    "mfu",
    "run_dir",
    "eval_results",
)


class RegistryError(GptjaxError, ValueError):
    """A finished run directory lacks what its registry record needs; the message names the file."""


def read_run(run_dir: RunDir | PathLike) -> tuple[RunConfig, list[dict[str, Any]]]:
    """A run's config and its metrics records."""
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    for path in (run_dir.config_file, run_dir.metrics_file):
        if not path.is_file():
            raise RegistryError(f"{path} is missing: {run_dir.path} is not a complete gptjax run directory")
    return run_dir.read_config(), read_metrics(run_dir.metrics_file)


def _median(records: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records if key in r]
    return statistics.median(values) if values else None


def run_record(run_dir: RunDir, sweep_dir: SweepDir) -> dict[str, Any]:
    """The registry record of one finished run directory."""
    run, records = read_run(run_dir)
    train = [r for r in records if "loss" in r]
    held_out = [r for r in records if "eval_loss" in r]
    if not train or not held_out:
        raise RegistryError(
            f"{run_dir.metrics_file} has no {'training' if not train else 'held-out'} loss "
            "record, yet the run is marked done"
        )
    counts = model.param_count(run.model)
    tokens_per_step = run.batch_size * run.sequence_length
    flops_per_token = model.flops_per_token(run.model, run.sequence_length)
    totals = [r for r in records if "tokens_seen" in r and r["step"] == run.steps]
    # A run whose last step was also the first of an attempt logs no throughput for it: count directly.
    tokens = totals[-1]["tokens_seen"] if totals else run.steps * tokens_per_step
    flops = totals[-1]["flops_seen"] if totals else tokens * flops_per_token
    point_file = run_dir.sweep_point_file
    times = json.loads(point_file.read_text()) if point_file.is_file() else {}
    evals = run_dir.eval_results_files()
    return {
        "name": run_dir.name,
        "preset": run.model.name,
        "seed": run.seed,
        "steps": run.steps,
        "batch_size": run.batch_size,
        "seq_len": run.sequence_length,
        "tokens_per_step": tokens_per_step,
        "params": counts.total,
        "non_embedding_params": counts.non_embedding,
        "tokens": tokens,
        "flops_per_token": flops_per_token,
        "flops": flops,
        "flops_6nd": 6.0 * counts.non_embedding * tokens,
        "final_train_loss": train[-1]["loss"],
        "final_eval_loss": held_out[-1]["eval_loss"],
        "wall_time_s": times.get("wall_time_s"),
        "cpu_time_s": times.get("cpu_time_s"),
        "tokens_per_s": _median(records, "tokens_per_s"),
        "mfu": _median(records, "mfu"),
        "run_dir": sweep_dir.relative(run_dir.path),
        "eval_results": sweep_dir.relative(evals[-1]) if evals else None,
    }


def finished_run_dirs(sweep_dir: PathLike) -> list[RunDir]:
    return SweepDir(sweep_dir).finished_runs()


def rebuild_registry(sweep_dir: PathLike) -> list[dict[str, Any]]:
    """Rewrite the sweep's registry.jsonl from its finished runs (smallest model, then shortest run, then
    seed first) and return its records."""
    sweep = SweepDir(sweep_dir)
    if not sweep.path.is_dir():
        raise InputNotFoundError(f"sweep directory {sweep.path} does not exist")
    records = [run_record(run_dir, sweep) for run_dir in sweep.finished_runs()]
    records.sort(key=lambda r: (r["non_embedding_params"], r["tokens"], r["seed"], r["name"]))
    write_atomic(sweep.registry_file, "".join(json.dumps(r) + "\n" for r in records))
    return records


def read_registry(sweep_dir: PathLike) -> list[dict[str, Any]]:
    path = SweepDir(sweep_dir).registry_file
    if not path.is_file():
        raise InputNotFoundError(f"{path} not found: {sweep_dir} is not a sweep directory (no registry)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


__all__ = [
    "RECORD_FIELDS",
    "RegistryError",
    "finished_run_dirs",
    "read_registry",
    "read_run",
    "rebuild_registry",
    "run_record",
]
