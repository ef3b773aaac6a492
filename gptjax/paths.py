"""Where gptjax finds data that lives outside the repository, and how one line of its JSONL files is read."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gptjax.errors import GptjaxError, InputNotFoundError

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


def json_object(line: str, where: str, error: type[GptjaxError]) -> dict[str, Any]:
    """One JSONL line as a JSON object; `error` names `where` (file:line) and what is wrong."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise error(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record
