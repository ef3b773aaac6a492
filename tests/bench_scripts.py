"""Loads a script from bench/, a directory of scripts rather than a package on the tests' sys.path."""

import importlib.util
import sys
from types import ModuleType

from gptjax.paths import REPO_ROOT


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
