"""Tokenised splits cached as .npy files: built once, written atomically, memory-mapped afterwards.

A cache file is `<task>.<split>.<hash>.npy`, the hash covering everything the tokens depend on (see
`cache_file`). It holds the split's whole token stream, every document followed by EOS; rows of any
sequence length are read straight out of it (packing.py), so changing seq_len never re-tokenises.
Files are written atomically (`gptjax.rundir.write_atomic`): a process killed mid-write leaves at most a
stray `*.tmp-*` file, which is never read, and concurrent writers (e.g. the hosts of one run sharing a
directory) each install a complete file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import seqio
from tqdm.auto import tqdm

from gptjax.rundir import write_atomic

FORMAT_VERSION = 1  # bump when the stream layout changes, so stale caches are not trusted


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (half the disk and page cache of int32), else int32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def cache_file(cache_dir: Path, task_name: str, split: str, key: Mapping[str, Any]) -> Path:
    """The cache path for a split; `key` is what its tokens depend on (vocabulary, source fingerprint)."""
    full_key = {"format": FORMAT_VERSION, "task": task_name, "split": split, **key}
    digest = hashlib.sha256(json.dumps(full_key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{task_name}.{split}.{digest}.npy"


def load_or_build(path: Path, build: Callable[[], np.ndarray]) -> np.ndarray:
    """Memory-map `path`, first building and atomically writing it if it does not exist."""
    if not path.exists():
        array = build()
        write_atomic(path, lambda f: np.save(f, array))
    return np.load(path, mmap_mode="r")


def tokenize(task: seqio.Task, split: str, dtype: np.dtype) -> np.ndarray:
    """The split's token stream: each example's `targets` (a document and its EOS), in source order."""
    examples = task.get_dataset(
        sequence_length=None, split=split, shuffle=False, num_epochs=1, use_cached=False, try_in_mem_cache=False
    )
    pieces = []
    with tqdm(desc=f"tokenizing {task.name}:{split}", unit="tok", unit_scale=True) as progress:
        for example in examples.as_numpy_iterator():
            pieces.append(example["targets"].astype(dtype))
            progress.update(len(pieces[-1]))
    if not pieces:
        raise ValueError(f"split {split!r} of task {task.name!r} has no documents")
    return np.concatenate(pieces)
