"""Probing a run: its held-out rows for the ICL score, its results file, and `gptjax icl`.

`gptjax icl --checkpoint RUN_DIR [--step N] --out FILE [icl overrides]` runs the ICL probes on a checkpoint
and writes an eval results file that `gptjax report` reads like any other (several checkpoints or sizes in
one report give the accuracy-against-K and score-against-size plots). The probes are the run's `icl`
section, with `key=value` overrides of its fields (e.g. `probes=induction,icl_score shots=0,1,2,4,8`);
when the section names none, "induction" and "icl_score".
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from typing import Any

from eval.icl import probes
from eval.lm import ModelInfo
from eval.runner import results_file, write_results
from gptjax import config, model
from gptjax.config import ConfigError, DataConfig, RunConfig
from gptjax.data import PackedDataset, make_dataset
from gptjax.plain_tokenizers import get_tokenizer
from gptjax.rundir import RunDir, as_path
from gptjax.runs import load_for_inference

HELD_OUT_BATCH = 32  # rows per held-out batch of the ICL score
DEFAULT_PROBES = ("induction", "icl_score")


def model_info(run: RunConfig, checkpoint: str | None, step: int | None) -> ModelInfo:
    counts = model.param_count(run.model)
    return ModelInfo(run.model.name, counts.total, counts.non_embedding, checkpoint, step)


def icl_results(info: ModelInfo, run: RunConfig, results: list[dict[str, Any]]) -> dict[str, Any]:
    """A results file's contents for the probe results of one checkpoint of `run`."""
    return results_file(info, get_tokenizer(run.data.vocab).name, run.model.n_ctx, results)


def held_out_dataset(run: RunConfig, own: PackedDataset | None = None) -> PackedDataset:
    """The data whose validation split the ICL score reads: `icl.icl_score_task`'s, else the run's own
    (`own`, when the caller has it)."""
    if own is None or run.icl.icl_score_task:
        data = DataConfig(task=run.icl.icl_score_task or run.data.task, vocab=run.data.vocab)
        cache = as_path(run.data.cache_dir) if run.data.cache_dir else RunDir(run.run_dir).default_data_cache
        own = make_dataset(dataclasses.replace(data, cache_dir=str(cache)), run.sequence_length, cache)
    if "validation" not in own.splits:
        raise ConfigError(f"the ICL score reads a validation split; {run.icl.icl_score_task or run.data.task} has none")
    return own


def held_out_batches(dataset: PackedDataset, rows: int) -> Iterator[probes.Batch]:
    """The first `rows` validation rows (rounded up to whole batches), in the dataset's fixed order."""
    return dataset.eval_batches(HELD_OUT_BATCH, -(-rows // HELD_OUT_BATCH), split="validation")


def icl_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gptjax icl", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="a gptjax run directory")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--out", required=True, metavar="FILE", help="results JSON to write (local or gs://)")
    parser.add_argument("overrides", nargs="*", help="icl section fields, e.g. probes=induction shots=0,1,2")
    args = parser.parse_args(argv)
    run_dir = RunDir(args.checkpoint)
    run = run_dir.read_config()
    icl = run.icl if run.icl.probes else dataclasses.replace(run.icl, probes=DEFAULT_PROBES)
    run = dataclasses.replace(run, icl=config.override(icl, args.overrides))
    probes.check(run.icl, run.model, run.sequence_length)  # before the checkpoint is read
    params, _, _, step = load_for_inference(run_dir, args.step)
    pm = probes.ProbeModel(params, run.model)
    held_out = held_out_dataset(run) if "icl_score" in run.icl.probes else None
    results = probes.run_probes(pm, run.icl, run.sequence_length, lambda rows: held_out_batches(held_out, rows))
    write_results(args.out, icl_results(model_info(run, str(run_dir.checkpoints_dir), step), run, results))
    for r in results:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in r["metrics"].items() if not k.endswith("_stderr"))
        print(f"{r['task']} K={r['num_fewshot']}: {shown}")
    print(f"wrote {args.out}")
    return 0


__all__ = ["DEFAULT_PROBES", "held_out_batches", "held_out_dataset", "icl_command", "icl_results", "model_info"]
