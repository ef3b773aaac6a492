"""Where gptjax finds data that lives outside the repository."""

from __future__ import annotations

import os
from pathlib import Path

from gptjax.errors import InputNotFoundError

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """Root of the shared data: `$GPTJAX_DATA_DIR`, else `../shared/data` beside the repo root."""
    return Path(os.environ.get("GPTJAX_DATA_DIR", REPO_ROOT.parent / "shared" / "data")).expanduser()


def local_cache_dir() -> Path:
    """This host's cache of what must be a local file (memory-mapped token streams of a gs:// run):
    `$GPTJAX_CACHE_DIR`, else `$XDG_CACHE_HOME/gptjax` (~/.cache/gptjax)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gptjax"
    return Path(os.environ.get("GPTJAX_CACHE_DIR", default)).expanduser()


def data_path(*parts: str) -> Path:
    """A path under the data root; raises InputNotFoundError naming the path and how to relocate it."""
    path = data_dir().joinpath(*parts)
    if not path.exists():
        raise InputNotFoundError(f"{path} does not exist (data root {data_dir()}; set GPTJAX_DATA_DIR to change it)")
    return path
