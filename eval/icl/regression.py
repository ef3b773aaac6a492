"""In-context linear regression scored against the baselines of Garg et al. 2022 (Figure 2).

After k in-context examples (x_1, y_1) .. (x_k, y_k), each predictor guesses y_{k+1} from x_{k+1}; the
error is the squared error divided by the dimension d, so predicting 0 scores 1 (E[y^2] = d):
- the transformer (gptjax.regression), `normalized_mse`;
- least squares (the minimum-norm solution when k < d), `lstsq_mse`: optimal without noise, with
  expected error 1 - k/d for k < d and 0 from k = d on;
- 3-nearest neighbours (the mean y of the 3 closest x_j, fewer while k < 3), `knn3_mse`;
- averaging, w = mean_j y_j x_j, `averaging_mse`.
Every predictor guesses 0 at k = 0. Results are eval results-file entries, one per k.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from eval import metrics as M
from eval.icl.probes import mean_metric, result_entry
from gptjax.data.synthetic import SyntheticSource

BASELINES = ("lstsq", "knn3", "averaging")
for _name in ("normalized_mse", *(f"{b}_mse" for b in BASELINES)):
    M.register_metric(M.Metric(_name, M.mean, bootstrap=False, higher_is_better=False, percentage=False))


def baseline_predictions(xs: np.ndarray, ys: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Each baseline's prediction [n] of y_{k+1} from the first k points of xs [n, p, d], ys [n, p]."""
    n = len(xs)
    if k == 0:
        return {name: np.zeros(n) for name in BASELINES}
    x, y, query = xs[:, :k].astype(np.float64), ys[:, :k].astype(np.float64), xs[:, k].astype(np.float64)
    w_lstsq = np.einsum("ndk,nk->nd", np.linalg.pinv(x), y)
    w_average = np.einsum("nk,nkd->nd", y, x) / k
    distance = np.linalg.norm(x - query[:, None], axis=-1)
    nearest = np.argsort(distance, axis=1, kind="stable")[:, :3]
    return {
        "lstsq": np.einsum("nd,nd->n", w_lstsq, query),
        "knn3": np.take_along_axis(y, nearest, axis=1).mean(1),
        "averaging": np.einsum("nd,nd->n", w_average, query),
    }


def regression_results(
    task: str, source: SyntheticSource, predictions: np.ndarray, xs: np.ndarray, ys: np.ndarray, shots: Sequence[int]
) -> list[dict[str, Any]]:
    """Results entries for the model's `predictions` [n, p] (entry k: after k examples) and the baselines."""
    dim = xs.shape[-1]
    results = []
    for k in shots:
        if not 0 <= k < xs.shape[1]:
            raise ValueError(f"k={k} in-context examples need more than the {xs.shape[1]} points per sequence")
        target = ys[:, k].astype(np.float64)
        metrics = mean_metric("normalized_mse", (predictions[:, k] - target) ** 2 / dim)
        for name, guess in baseline_predictions(xs, ys, k).items():
            metrics |= mean_metric(f"{name}_mse", (guess - target) ** 2 / dim)
        example = f"{k} points (x in R^{dim}, y = w.x), then x_{k + 1}"
        results.append(
            result_entry(task, k, source, len(xs), metrics, example, {"noise_free_lstsq_theory": max(0.0, 1 - k / dim)})
        )
    return results


__all__ = ["BASELINES", "baseline_predictions", "regression_results"]
