"""gptjax models as an lm-evaluation-harness backend: any lm-eval task, in process, on a gptjax checkpoint.

`GptjaxLMEval` is an `lm_eval.api.model.LM` that forwards lm-eval's requests to an eval `LanguageModel`
(normally a `GptjaxLM`, so the prefix-sharing, packed, optionally sharded `BatchScorer` does the work) and is
registered as lm-eval model "gptjax" when this module is imported:

    import lm_eval
    from eval.lm_eval_adapter import GptjaxLMEval

    lm_eval.simple_evaluate(model=GptjaxLMEval.from_run("runs/tiny"), tasks=["piqa"], num_fewshot=2)
    lm_eval.simple_evaluate(model="gptjax", model_args="run_dir=runs/tiny,step=1000", tasks=["piqa"])
    lm_eval.simple_evaluate(model="gptjax", model_args="hf_dir=exported/gpt2", tasks=["piqa"])

Requests are tokenised with lm-eval's rules (eval.requests), so log-likelihoods equal lm-eval's HF backend on
the exported model up to float rounding. Differences from HFLM: a continuation longer than the window is
scored in window-sized chunks instead of refused; `generation_kwargs` are read as a task YAML's are
(eval.decoding: sampling with temperature / top-k / top-p and a `seed`, default 0, so a run repeats exactly;
an option gptjax does not implement is refused by name rather than ignored);
`batch_size` / `max_batch_size` / `device` are accepted for lm-eval's sake and ignored: batches are sized in
tokens (`batch_tokens`) and placement follows the `GptjaxLM` (its mesh, if it has one). lm-eval's
data-parallel splitting is not used (rank 0 of 1): in a multi-process JAX run every process sends every
request and the sharded scorer splits the batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval's own backends register lazily only while its registry is empty)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs

from eval.decoding import from_generation_kwargs
from eval.gptjax_lm import GptjaxLM
from eval.lm import LanguageModel
from eval.requests import GenerationRequest

MODEL_NAME = "gptjax"


@register_model(MODEL_NAME)
class GptjaxLMEval(LM):
    """An lm-eval `LM` over an eval `LanguageModel` (a `GptjaxLM`, or any other implementation).

    Build it from a `LanguageModel` (`GptjaxLMEval(GptjaxLM(params, cfg, vocab))`), a run directory
    (`from_run`, or `run_dir=` [`step=`]) or a Hugging Face GPT-2 directory (`from_hf`, or `hf_dir=`
    [`tokenizer=`]); other keyword arguments (`batch_tokens`, `max_gen_toks`, `generate_batch_size`, `name`,
    `mesh`, ...) go to `GptjaxLM`.
    """

    def __init__(
        self,
        lm: LanguageModel | None = None,
        *,
        run_dir: str | Path | None = None,
        hf_dir: str | Path | None = None,
        step: int | None = None,
        tokenizer: str | None = None,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        device: str | None = None,
        **lm_kwargs: Any,
    ) -> None:
        super().__init__()
        del batch_size, max_batch_size, device  # lm-eval passes them to every backend; see the module doc
        sources = [name for name, value in (("lm", lm), ("run_dir", run_dir), ("hf_dir", hf_dir)) if value is not None]
        if len(sources) != 1:
            raise ValueError(f"GptjaxLMEval needs exactly one of lm, run_dir, hf_dir; got {sources or 'none'}")
        if lm is None:
            if run_dir is not None:
                lm = GptjaxLM.from_run(run_dir, step=step, **lm_kwargs)
            else:
                lm = GptjaxLM.from_hf(hf_dir, tokenizer=tokenizer, **lm_kwargs)
        elif lm_kwargs or step is not None:
            raise ValueError(
                f"arguments {sorted(lm_kwargs) + (['step'] if step is not None else [])} only apply "
                "when the model is loaded from run_dir or hf_dir"
            )
        self.lm = lm

    @classmethod
    def from_run(cls, run_dir: str | Path, step: int | None = None, **kwargs: Any) -> GptjaxLMEval:
        """A run directory's checkpoint (the latest unless `step` is given) with the run's tokenizer."""
        return cls(run_dir=run_dir, step=step, **kwargs)

    @classmethod
    def from_hf(cls, model_dir: str | Path, tokenizer: str | None = None, **kwargs: Any) -> GptjaxLMEval:
        """A Hugging Face GPT-2 directory (config.json + model.safetensors), read with gptjax.hf."""
        return cls(hf_dir=model_dir, tokenizer=tokenizer, **kwargs)

    # ----------------------------------------------------------------------------------------------------
    # What lm-eval asks of a model besides the three request types.

    @property
    def tokenizer_name(self) -> str:
        """Fingerprints lm-eval's request cache."""
        return self.lm.tokenizer_name

    @property
    def max_length(self) -> int:
        return self.lm.max_length

    @property
    def max_gen_toks(self) -> int:
        return getattr(self.lm, "max_gen_toks", 256)

    def get_model_info(self) -> dict[str, Any]:
        """Recorded in lm-eval's results under config.model_info (where supported)."""
        info = self.lm.info
        return {
            "model_name": info.name,
            "model_num_parameters": info.params,
            "model_non_embedding_parameters": info.non_embedding_params,
            "model_checkpoint": info.checkpoint,
            "model_step": info.step,
        }

    # ----------------------------------------------------------------------------------------------------
    # Requests.

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [(str(context), str(continuation)) for context, continuation in (r.args for r in requests)]
        results = [(r.logprob, r.is_greedy) for r in self.lm.loglikelihood(pairs)]
        for pair, result in zip(pairs, results):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return results

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[float]:
        texts = [r.args[0] for r in requests]
        results = [float(ll) for ll in self.lm.loglikelihood_rolling(texts)]
        for text, result in zip(texts, results):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), result)
        return results

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        converted = []
        for r in requests:
            context, gen_kwargs = r.args
            kwargs = normalize_gen_kwargs(gen_kwargs or {}, self.max_gen_toks)
            decoding = from_generation_kwargs(kwargs, 1, "lm-eval request", self.max_gen_toks)
            converted.append(
                GenerationRequest(context, decoding.until, decoding.max_tokens, decoding.request_options())
            )
        results = self.lm.generate_until(converted)
        for r, result in zip(requests, results):
            self.cache_hook.add_partial("generate_until", r.args, result)
        return results


__all__ = ["MODEL_NAME", "GptjaxLMEval"]
