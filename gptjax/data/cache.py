"""Tokenised splits cached as .npy files: built once, written atomically, memory-mapped afterwards.

A cache file is `<task>.<split>.<hash>.npy`, the hash covering everything the tokens depend on (see
`cache_file`). It holds the split's whole token stream, every document followed by EOS; rows of any
sequence length are read straight out of it (packing.py), so changing seq_len never re-tokenises.
Files are written atomically (`gptjax.rundir.write_atomic`): a process killed mid-write leaves at most a
stray `*.tmp-*` file, which is never read, and concurrent writers (e.g. the hosts of one run sharing a
directory) each install a complete file.

A cache directory on gs:// is mirrored on each host (`gptjax.paths.local_cache_dir()`), because a memory map
needs a local file: a host downloads a cached split once, or builds it and uploads it for the others.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import seqio
from etils import epath
from tqdm.auto import tqdm

from gptjax.paths import local_cache_dir
from gptjax.rundir import PathLike, as_path, is_local, write_atomic

FORMAT_VERSION = 1  # bump when the stream layout changes, so stale caches are not trusted


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (half the disk and page cache of int32), else int32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def cache_file(cache_dir: PathLike, task_name: str, split: str, key: Mapping[str, Any]) -> epath.Path:
    """The cache path for a split; `key` is what its tokens depend on (vocabulary, source fingerprint)."""
    full_key = {"format": FORMAT_VERSION, "task": task_name, "split": split, **key}
    digest = hashlib.sha256(json.dumps(full_key, sort_keys=True).encode()).hexdigest()[:16]
    return as_path(cache_dir) / f"{task_name}.{split}.{digest}.npy"


def load_or_build(path: PathLike, build: Callable[[], np.ndarray]) -> np.ndarray:
    """Memory-map `path`, first building and atomically writing it if it does not exist. For a gs:// path
    the map is of this host's local copy, downloaded once (or built here, then also uploaded)."""
    path = as_path(path)
    local = Path(path) if is_local(path) else local_cache_dir() / "mirror" / str(path).removeprefix("gs://")
    if not local.exists():
        if not is_local(path) and path.exists():
            write_atomic(local, path.read_bytes())
        else:
            array = build()
            write_atomic(local, lambda f: np.save(f, array))
            if not is_local(path):
                write_atomic(path, local.read_bytes())
    return np.load(local, mmap_mode="r")


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
