"""In-context-learning studies at small scale: probes of token models on synthetic tasks and held-out text.

- scores.py: the arithmetic (induction / previous-token / copying scores, uniform baseline, ICL score).
- probes.py: the probes themselves (K-shot accuracy, induction heads, ICL score) as results-file entries.
- regression.py: in-context linear regression scored against least squares, 3-NN and averaging.
- runs.py: a run's held-out data and results files, and `gptjax icl`.
- hook.py: the probes as a training hook (`icl` config section).
- report.py: scores against training tokens (phase change marked) and per-head maps, as a report section;
  accuracy against K per size and scores against size come from eval/report.py, like any benchmark's.

The synthetic data itself is core (gptjax.data.synthetic), so training can use it as a data.task; so is the
regression transformer and its training loop (gptjax.regression), a model like any other: eval scores models,
it never trains them.
"""
