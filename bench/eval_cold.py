"""Whole-command time of `gptjax eval --hf` next to `lm_eval --model hf`, same exported model, same task YAMLs.

A small GPT-2 (a bench preset, random weights: the cost does not depend on them) is exported once with
gptjax.hf and the shared GPT-2 BPE files. For each workload an lm-eval-format task YAML is written (reading
the shared JSONL through `dataset_path: json`; COPA through `!function`s of a utils.py beside it, as lm-eval's
own COPA does), and the *same file* is given to both commands. Each round runs, one after the other:
  lm_eval --model hf --model_args pretrained=DIR,dtype=float32 --batch_size 32 --device cpu ...
  gptjax eval --hf DIR ...   with an empty persistent compilation cache ("cold"),
  gptjax eval --hf DIR ...   with the cache the cold run left ("cached"),
each a fresh process timed from start to exit; the ratios are taken per round (so a change in the machine's
load hits both sides of a ratio alike) and their median is reported. One untimed round first warms the OS
file cache and lm-eval's datasets cache. Offline: HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1; gptjax runs with
JAX_PLATFORMS=cpu (without it JAX first probes the installed libtpu for a TPU).

Run from the repository root: `.venv/bin/python bench/eval_cold.py [--rounds 3] [--workloads hellaswag:0,...]`.
Needs the `hf` extra (lm-eval, torch, transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT_WORKLOADS = "hellaswag:0,piqa:0,piqa:2,copa:0,copa:2,arc_easy:0,arc_easy:2"
MEAN = {"aggregation": "mean", "higher_is_better": True}


class Function(str):
    """A value written as lm-eval's `!function module.name` tag."""


yaml.add_representer(Function, lambda dumper, f: dumper.represent_scalar("!function", str(f)), Dumper=yaml.SafeDumper)
# lm-eval 0.4.13's task definitions (lm_eval/tasks/<source>), reading the shared JSONL instead of the Hub; the
# keys not listed only concern the Hub dataset, decontamination or metadata. tests/test_lmeval_parity.py runs
# lm-eval on these too.
LM_EVAL_TASKS: dict[str, dict[str, Any]] = {
    # hellaswag/hellaswag.yaml. The shared file is already what its process_docs returns (query, choices,
    # gold = int(label)), so no process_docs and `{{gold}}` for `{{label}}`. No train split is shipped, so
    # training_split is left out: lm-eval then draws examples from validation, as eval's fallback does.
    "hellaswag": {
        "splits": {"validation_split": "validation"},
        "output_type": "multiple_choice",
        "doc_to_text": "{{query}}",
        "doc_to_target": "{{gold}}",
        "doc_to_choice": "choices",
        "metric_list": [{"metric": "acc", **MEAN}, {"metric": "acc_norm", **MEAN}],
    },
    "piqa": {  # piqa/piqa.yaml
        "splits": {"training_split": "train", "validation_split": "validation"},
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{goal}}\nAnswer:",
        "doc_to_target": "label",
        "doc_to_choice": "{{[sol1, sol2]}}",
        "metric_list": [{"metric": "acc", **MEAN}, {"metric": "acc_norm", **MEAN}],
    },
    "arc_easy": {  # arc/arc_easy.yaml
        "splits": {"training_split": "train", "validation_split": "validation", "test_split": "test"},
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{choices.label.index(answerKey)}}",
        "doc_to_choice": "{{choices.text}}",
        "metric_list": [{"metric": "acc", **MEAN}, {"metric": "acc_norm", **MEAN}],
    },
    "copa": {  # super_glue/copa/default.yaml + utils.py (no train split is shipped: examples from validation)
        "splits": {"validation_split": "validation"},
        "output_type": "multiple_choice",
        "doc_to_text": Function("utils.doc_to_text"),
        "doc_to_target": Function("utils.doc_to_target"),
        "doc_to_choice": Function("utils.doc_to_choice"),
        "metric_list": [{"metric": "acc"}],
    },
    "lambada_openai": {  # lambada/lambada_openai.yaml
        "splits": {"test_split": "test"},
        "output_type": "loglikelihood",
        "doc_to_text": "{{text.split(' ')[:-1]|join(' ')}}",
        "doc_to_target": "{{' '+text.split(' ')[-1]}}",
        "metric_list": [
            {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
            {"metric": "acc", **MEAN},
        ],
    },
}
COPA_UTILS = """def convert_choice(choice):
    return choice[0].lower() + choice[1:]


def doc_to_text(doc):
    connector = {"cause": "because", "effect": "therefore"}[doc["question"]]
    return doc["premise"].strip()[:-1] + f" {connector}"


def doc_to_target(doc):
    return " " + convert_choice(doc["choice1"] if doc["label"] == 0 else doc["choice2"])


def doc_to_choice(doc):
    return [" " + convert_choice(doc["choice1"]), " " + convert_choice(doc["choice2"])]
"""


def export_model(preset: str, out: Path) -> Path:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before JAX starts: no probe of the installed libtpu
    import jax
    import numpy as np

    sys.path.insert(0, str(REPO / "bench"))
    from eval_throughput import model_config

    from gptjax.hf import export_hf
    from gptjax.model import init_params
    from gptjax.paths import data_dir

    cfg = model_config(preset)
    params = jax.tree.map(np.asarray, jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0)))
    return export_hf(params, cfg, out, tokenizer_dir=data_dir() / "tokenizers" / "gpt2")


def lm_eval_task(task: str, name: str, cache_dir: Path, **extra: Any) -> dict[str, Any]:
    """The lm-eval task definition of LM_EVAL_TASKS[task], named `name`, reading the shared JSONL files
    (`dataset_kwargs.cache_dir`: where Hugging Face datasets caches them)."""
    from gptjax.paths import data_dir

    definition = dict(LM_EVAL_TASKS[task])
    splits = definition.pop("splits")
    files = {split: str(data_dir() / "benchmarks" / task / f"{split}.jsonl") for split in splits.values()}
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files, "cache_dir": str(cache_dir)},
        **splits,
        **definition,
        **extra,
        "metadata": {"version": 1.0},
    }


def write_task(task: str, out_dir: Path, cache_dir: Path) -> Path:
    path = out_dir / f"{task}_local.yaml"
    config = lm_eval_task(task, path.stem, cache_dir)
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    if task == "copa":
        (out_dir / "utils.py").write_text(COPA_UTILS)
    return path


def timed(command: list[str], env: dict[str, str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("a") as f:
        done = subprocess.run(command, env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}); see {log}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-mini", help="bench preset or gptjax preset (eval_throughput.py)")
    parser.add_argument("--workloads", default=DEFAULT_WORKLOADS, help="comma-separated TASK:K")
    parser.add_argument("--limit", type=int, default=200, help="documents per task (COPA has 100)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per workload (after one untimed)")
    parser.add_argument("--lm-eval-batch-size", type=int, default=32)
    parser.add_argument("--work-dir", help="keep the model, YAMLs and logs here (default: a temporary dir)")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="eval_cold_"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    if not (model / "model.safetensors").is_file():
        export_model(args.preset, model)
    tasks_dir, log = work / "tasks", work / "commands.log"
    tasks_dir.mkdir(exist_ok=True)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["HF_DATASETS_CACHE"] = str(work / "hf_datasets")
    gptjax_env = env | {"JAX_PLATFORMS": "cpu"}
    print(f"model {args.preset} at {model}; logs in {log}; load average {os.getloadavg()[0]:.1f}")

    rows = []
    for workload in args.workloads.split(","):
        task, k = workload.split(":")
        yaml_path = write_task(task, tasks_dir, work / "hf_datasets")
        out = work / f"{task}_k{k}.json"
        cache = work / "jax_cache"
        lm_eval = [str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={model},dtype=float32"]
        lm_eval += ["--tasks", yaml_path.stem, "--include_path", str(tasks_dir), "--num_fewshot", k]
        lm_eval += ["--limit", str(args.limit), "--batch_size", str(args.lm_eval_batch_size), "--device", "cpu"]
        gptjax = [str(BIN / "gptjax"), "eval", "--hf", str(model), "--tasks", str(yaml_path), "--shots", k]
        gptjax += ["--limit", str(args.limit), "--out", str(out), "--compilation-cache", str(cache)]
        times: dict[str, list[float]] = {"lm_eval": [], "cold": [], "cached": []}
        for round_ in range(args.rounds + 1):
            shutil.rmtree(cache, ignore_errors=True)
            measured = {
                "lm_eval": timed(lm_eval, env, log),
                "cold": timed(gptjax, gptjax_env, log),
                "cached": timed(gptjax, gptjax_env, log),
            }
            if round_:  # the first round only warms file caches
                for name, seconds in measured.items():
                    times[name].append(seconds)
        result = json.loads(out.read_text())["results"][0]
        requests = sum(len(s["loglikelihoods"]) for s in result["samples"])
        row = {
            "workload": f"{task} K={k}",
            "docs": result["num_docs"],
            "requests": requests,
            **{f"{name}_s": statistics.median(ts) for name, ts in times.items()},
            **{
                f"ratio_{name}": statistics.median(a / b for a, b in zip(times["lm_eval"], times[name]))
                for name in ("cold", "cached")
            },
            "ratios_cold": [round(a / b, 2) for a, b in zip(times["lm_eval"], times["cold"])],
            "ratios_cached": [round(a / b, 2) for a, b in zip(times["lm_eval"], times["cached"])],
        }
        rows.append(row)
        print(
            f"{row['workload']:<14} {row['docs']:>4} docs {requests:>4} requests | lm_eval {row['lm_eval_s']:6.1f}s | "
            f"gptjax cold {row['cold_s']:5.1f}s ({row['ratio_cold']:.2f}x {row['ratios_cold']}) | "
            f"cached {row['cached_s']:5.1f}s ({row['ratio_cached']:.2f}x {row['ratios_cached']})",
            flush=True,
        )
    phases = [line for line in log.read_text().splitlines() if line.startswith("time: ")]
    print("last gptjax run:", phases[-1] if phases else "(no phase line)")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
