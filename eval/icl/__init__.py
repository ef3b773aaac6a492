"""In-context-learning studies at small scale: probes of token models on synthetic tasks and held-out text.

- scores.py: the arithmetic (induction / previous-token / copying scores, uniform baseline, ICL score).
- probes.py: the probes themselves (K-shot accuracy, induction heads, ICL score) as results-file entries.
- regression.py: in-context linear regression scored against least squares, 3-NN and averaging.
- runs.py: a run's held-out data and results files, and `gptjax icl`.
- hook.py: the probes as a training hook (`icl` config section).
- plots.py: accuracy against K per size, scores against training tokens (with the phase change) and size.

The synthetic data itself is core (gptjax.data.synthetic), so training can use it as a data.task.
"""
