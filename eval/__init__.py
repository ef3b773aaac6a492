"""Few-shot evaluation of language models: lm-evaluation-harness-compatible tasks, prompts and scoring.

    from eval import GptjaxLM, evaluate, write_results
    results = evaluate(GptjaxLM.from_run("runs/tiny"), ["piqa", "hellaswag"], shots=[0, 1, 8])
    write_results("results/tiny.json", results)

Modules: registry (task definitions, eval/tasks/*.yaml), data (JSONL and corpora), templates (prompt
rendering), fewshot (example sampling), task (prompts and requests per document), requests (tokenisation),
lm (the model protocol), scoring (batched jitted scorer), gptjax_lm (the gptjax model), metrics, runner,
hook (the few-shot hook training runs take), phases (`gptjax eval`'s timing and compilation cache), cli.
"""

from eval.gptjax_lm import GptjaxLM
from eval.lm import LanguageModel, ModelInfo, TokenizedLM
from eval.registry import TaskError, TaskSpec, get_spec, list_tasks
from eval.runner import evaluate, write_results

__all__ = [
    "GptjaxLM",
    "LanguageModel",
    "ModelInfo",
    "TaskError",
    "TaskSpec",
    "TokenizedLM",
    "evaluate",
    "get_spec",
    "list_tasks",
    "write_results",
]
