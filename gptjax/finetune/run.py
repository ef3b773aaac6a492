"""A fine-tuning run: labelled examples as the Trainer's dataset, the Trainer with the fine-tuning
Objective (the same sharded, donated step, checkpoints, resume, hooks and metrics as pre-training), and
validation accuracy written to <run_dir>/finetune.json in eval's results format (the fields eval/results.py
reads), so `gptjax report` puts the fine-tuned model beside the same model's zero- and few-shot results: a
fine-tuned model sees no examples in context, so its row is K = 0.

Order: the batch at step k holds positions k·B .. k·B+B-1 of the epoch-by-epoch concatenation of
permutations of the training examples, each permutation seeded by (seed, epoch): a pure function of
(seed, k), so a resumed run replays an uninterrupted one. Paper defaults (GPT-1 §4.1): lr 6.25e-5,
batch 32, 3 epochs, linear warm-up over 0.2% of the steps then linear decay to zero, classifier dropout
0.1, λ = 0.5.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from gptjax import config, hf, model, paths
from gptjax.config import RunConfig
from gptjax.errors import ConfigError
from gptjax.finetune.objective import class_logits, extended_model, finetune_objective
from gptjax.finetune.tasks import Task, get_task, load_examples
from gptjax.finetune.transforms import Example, SpecialTokens, encode_examples, render
from gptjax.hooks import add_standard_hooks
from gptjax.plain_tokenizers import get_tokenizer
from gptjax.rundir import RunDir, write_json
from gptjax.runs import load_for_inference
from gptjax.train import Trainer

Arrays = dict[str, np.ndarray]
PAPER_DEFAULTS = ("optim.learning_rate=6.25e-5", "batch_size=32", "optim.schedule=linear", "optim.min_lr_ratio=0")


@dataclass(frozen=True)
class _Vocab:
    vocab_size: int


class ExampleDataset:
    """Encoded examples in the Trainer's dataset interface (`batch`, `eval_batches`, `vocab`): "train" and the
    scored "validation" split (read from the benchmark's `scored_split`); for the results file also how the
    first scored example reads and what the fine-tuned model is called (`model_name`)."""

    def __init__(
        self,
        splits: dict[str, Arrays],
        vocab_size: int,
        seed: int,
        example_prompt: str = "",
        scored_split: str = "validation",
        model_name: str = "",
    ) -> None:
        self.splits = splits
        self.vocab = _Vocab(vocab_size)
        self.seed = seed
        self.example_prompt = example_prompt
        self.scored_split = scored_split
        self.model_name = model_name

    def size(self, split: str = "train") -> int:
        return len(self.splits[split]["label"])

    def batch(self, step: int, batch_size: int, rows: Sequence[int] | np.ndarray | None = None) -> Arrays:
        n = self.size()
        positions = step * batch_size + (np.arange(batch_size) if rows is None else np.asarray(rows))
        epochs = positions // n
        index = np.empty_like(positions)
        for epoch in np.unique(epochs):
            permutation = np.random.default_rng((self.seed, int(epoch))).permutation(n)
            index[epochs == epoch] = permutation[positions[epochs == epoch] % n]
        return {k: v[index] for k, v in self.splits["train"].items()}

    def eval_batches(self, batch_size: int, max_batches: int, split: str = "validation") -> Iterator[Arrays]:
        """The split's first `max_batches` whole batches, in file order."""
        for b in range(min(max_batches, self.size(split) // batch_size)):
            yield {k: v[b * batch_size : (b + 1) * batch_size] for k, v in self.splits[split].items()}


def encode_splits(
    task: Task, splits: dict[str, list[Example]], vocab_spec: str, special: SpecialTokens, max_len: int
) -> dict[str, Arrays]:
    encode = get_tokenizer(vocab_spec).encode
    return {s: encode_examples(ex, encode, special, max_len, task.num_sequences) for s, ex in splits.items()}


def accuracy(trainer: Trainer, task: Task, arrays: Arrays, batch_size: int) -> dict[str, Any]:
    """Accuracy on `arrays` (every example, dropout off) with its binomial standard error."""
    predict = jax.jit(lambda p, b: class_logits(p, b, task, trainer.run, None)[0].argmax(-1))
    n = len(arrays["label"])
    correct = []
    with trainer.activated():
        for start in range(0, n, batch_size):
            index = np.minimum(np.arange(start, start + batch_size), n - 1)  # the last batch repeats its last row
            batch = {k: v[index] for k, v in arrays.items()}
            hits = np.asarray(predict(trainer.current_state().params, batch)) == batch["label"][:, 0]
            correct.append(hits[: min(batch_size, n - start)])
    hits = np.concatenate(correct).astype(np.float64)
    acc = float(hits.mean())
    return {"acc": acc, "acc_stderr": math.sqrt(acc * (1 - acc) / max(n - 1, 1)), "num_examples": n}


def build(
    task_name: str,
    run_dir: str,
    source: str | None,
    hf_dir: str | None,
    preset: str,
    overrides: Sequence[str],
    epochs: float,
    train_limit: int = 0,
    eval_limit: int = 0,
    data_dir: str | None = None,
    eval_split: str = "validation",
) -> tuple[Trainer, ExampleDataset, Task]:
    """The Trainer of a fine-tuning run (writes nothing): from a run's latest checkpoint, an HF GPT-2
    directory, or a random initialisation of `preset` (the from-scratch baseline). It is scored on the
    benchmark's `eval_split` (e.g. "test", the split `gptjax eval` scores where a task has one)."""
    task = get_task(task_name)
    pretrained, vocab_spec = None, "byte"
    if source and hf_dir:
        raise ConfigError("give one of --from RUN_DIR and --hf DIR, not both")
    if source:
        pretrained, base, _, _ = load_for_inference(source)
        vocab_spec = RunDir(source).read_config().data.vocab
        name = RunDir(source).path.resolve().name  # as `gptjax eval` names the run's model
    elif hf_dir:
        base, pretrained = hf.import_hf(hf_dir)
        vocab_spec, name = "gpt2", base.name
    else:
        base = config.get_preset(preset)
        name = f"{preset} (random init)"
    run = RunConfig(
        model=extended_model(base),
        run_dir=run_dir,
        data=config.DataConfig(vocab=vocab_spec),
        finetune=config.FinetuneConfig(task=task.name),
    )
    run = config.override(run, [*PAPER_DEFAULTS, *overrides])
    root = data_dir or str(paths.data_dir() / "benchmarks")
    examples = {
        s: load_examples(task, split, root, limit)
        for s, split, limit in (("train", "train", train_limit), ("validation", eval_split, eval_limit))
    }
    special = SpecialTokens.after(base.vocab_size)
    dataset = ExampleDataset(
        encode_splits(task, examples, vocab_spec, special, run.sequence_length),
        run.model.vocab_size,
        run.seed,
        render(examples["validation"][0]) if examples["validation"] else "",
        eval_split,
        f"{name} fine-tuned on {task.name}",
    )
    steps = max(2, math.ceil(epochs * dataset.size() / run.batch_size))
    warmup = max(1, round(0.002 * steps))
    run = config.override(run, [f"steps={steps}", f"optim.warmup_steps={warmup}"])
    objective = finetune_objective(run, task, pretrained)
    return Trainer(run, dataset, objective=objective), dataset, task


def results_file(trainer: Trainer, task: Task, metrics: dict[str, Any], dataset: ExampleDataset) -> dict[str, Any]:
    """The fine-tuned model's accuracy as a results file of eval's (eval/runner.results_file): the model is
    the fine-tuned one (its parameters include the head), scored with no examples in context."""
    run = trainer.run
    head = sum(x.size for x in jax.tree.leaves(trainer.current_state().params["head"]))
    counts = model.param_count(run.model)
    return {
        "model": {
            "name": dataset.model_name or f"{run.model.name} fine-tuned on {task.name}",
            "params": counts.total + head,
            "non_embedding_params": counts.non_embedding + head,
            "checkpoint": str(trainer.run_dir.checkpoints_dir),
            "step": trainer.step,
        },
        "tokenizer": get_tokenizer(run.data.vocab).name,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gptjax_version": importlib.metadata.version("gptjax"),
        "results": [
            {
                "task": task.name,
                "split": dataset.scored_split,
                "num_fewshot": 0,
                "fewshot_split": "",
                "seed": run.seed,
                "num_docs": metrics["num_examples"],
                "metrics": {"acc": metrics["acc"], "acc_stderr": metrics["acc_stderr"]},
                "example_prompt": dataset.example_prompt,
                "method": "fine-tuned",
                "finetune": dataclasses.asdict(run.finetune),
            }
        ],
    }


def finetune(trainer: Trainer, dataset: ExampleDataset, task: Task, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) to the last step, then write and return the results file (`results_file`)."""
    trainer.restore_or_init()
    add_standard_hooks(trainer, progress=progress)
    trainer.train()
    metrics = accuracy(trainer, task, dataset.splits["validation"], trainer.run.batch_size)
    result = results_file(trainer, task, metrics, dataset)
    if jax.process_index() == 0:
        write_json(trainer.run_dir.finetune_file, result)
    return result


def finetune_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="gptjax finetune", description="GPT-1 supervised fine-tuning")
    parser.add_argument("--task", required=True, help="boolq, piqa, arc_easy, arc_challenge, openbookqa, winogrande")
    parser.add_argument("--run-dir", required=True, help="the fine-tuning run's directory")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from", dest="source", help="a gptjax run directory (its latest checkpoint)")
    source.add_argument("--hf", help="a Hugging Face GPT-2 directory (safetensors)")
    parser.add_argument("--preset", default="tiny-200k", help="without --from/--hf: a randomly initialised preset")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--train-limit", type=int, default=0, help="use the first N training examples (0 = all)")
    parser.add_argument("--eval-limit", type=int, default=0, help="score the first N examples (0 = all)")
    parser.add_argument("--eval-split", default="validation", help="the split scored (e.g. test, as gptjax eval)")
    parser.add_argument("--data-dir", help="benchmark directory (default <data root>/benchmarks)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. finetune.aux_lm_weight=0 seq_len=128")
    args = parser.parse_args(argv)
    trainer, dataset, task = build(
        args.task,
        args.run_dir,
        args.source,
        args.hf,
        args.preset,
        args.overrides,
        args.epochs,
        args.train_limit,
        args.eval_limit,
        args.data_dir,
        args.eval_split,
    )
    m = finetune(trainer, dataset, task)["results"][0]["metrics"]
    print(f"{task.name} validation accuracy {m['acc']:.4f} ± {m['acc_stderr']:.4f} ({trainer.run_dir.finetune_file})")
    return 0


__all__ = ["ExampleDataset", "accuracy", "build", "finetune", "finetune_command", "results_file"]
