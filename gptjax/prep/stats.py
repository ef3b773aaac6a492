"""Corpus statistics (`gptjax data stats`): what sizing a mixture component needs — documents, characters,
UTF-8 bytes, whitespace-separated words, the spread of document lengths — and its exact-duplicate count."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from gptjax.prep.corpus import CorpusFormat, read_documents, text_key


def corpus_stats(inputs: Sequence[epath.Path], fmt: CorpusFormat) -> dict[str, Any]:
    lengths, characters, n_bytes, seen, duplicates = [], 0, 0, set(), 0
    for doc in read_documents(inputs, fmt, "counting"):
        lengths.append(len(doc.text.split()))
        characters += len(doc.text)
        n_bytes += len(doc.text.encode("utf-8"))
        key = text_key(doc.text)
        duplicates += key in seen
        seen.add(key)
    words = np.array(lengths)
    p5, p50, p95 = np.percentile(words, [5, 50, 95])
    return {
        "inputs": [str(p) for p in inputs],
        "documents": len(words),
        "characters": characters,
        "bytes": n_bytes,
        "words": int(words.sum()),
        "exact_duplicates": duplicates,
        "words_per_document": {
            "mean": float(words.mean()),
            "min": int(words.min()),
            "p5": float(p5),
            "median": float(p50),
            "p95": float(p95),
            "max": int(words.max()),
        },
    }


__all__ = ["corpus_stats"]
