"""Where gptjax finds data that lives outside the repository."""

from __future__ import annotations

import os
from pathlib import Path

from gptjax.errors import InputNotFoundError

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """Root of the shared data: `$GPTJAX_DATA_DIR`, else `../shared/data` beside the repo root."""
    return Path(os.environ.get("GPTJAX_DATA_DIR", REPO_ROOT.parent / "shared" / "data")).expanduser()


def data_path(*parts: str) -> Path:
    """A path under the data root; raises InputNotFoundError naming the path and how to relocate it."""
    path = data_dir().joinpath(*parts)
    if not path.exists():
        raise InputNotFoundError(f"{path} does not exist (data root {data_dir()}; set GPTJAX_DATA_DIR to change it)")
    return path
