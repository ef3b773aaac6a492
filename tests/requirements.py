"""What a test module needs that may be absent on a developer's machine: optional packages (the `hf`
extra) and the shared data beside the repo. Locally a missing piece skips the module with the reason; in CI
(`CI=true`, where `.ci/run` installs every extra and the data is present) it fails the run instead, so a
parity test can never pass by not running."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

from gptjax.paths import data_dir

IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(reason: str) -> None:
    if IN_CI:
        raise RuntimeError(f"{reason}; CI=true runs every test, so this is a failure, not a skip")
    pytest.skip(reason, allow_module_level=True)


def need_modules(*names: str) -> list[ModuleType]:
    """The imported modules; a missing one skips (or, in CI, fails) the calling test module."""
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError as err:
            _missing(f"{name} is not installed ({err}); `pip install -e '.[hf,test]'` brings it")
    return modules


def need_data(*relative: str) -> list[Path]:
    """Paths under the shared data root; a missing one skips (or, in CI, fails) the calling test module."""
    paths = [data_dir() / r for r in relative]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        _missing(f"shared data not found: {missing} (data root {data_dir()}; set GPTJAX_DATA_DIR)")
    return paths
