"""The import graph of the packages: arrows run one way, gptjax (core) <- eval <- experiments, with the CLI
(gptjax/cli.py) the one module that wires them; no package has an import cycle; imports sit at the top of
the module (the CLI's lazy command imports are the measured exception: `gptjax --help` < 2 s).

`python tests/test_architecture.py` prints the graph (module -> the project modules it imports).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gptjax", "eval", "experiments")
RANK = {name: i for i, name in enumerate(PACKAGES)}  # a module may import only packages of lower or equal rank
COMPOSITION_ROOT = "gptjax.cli"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name refers to (`gptjax.config.ConfigError` -> `gptjax.config`)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, at module top level) for every import statement of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name, modules)
            if target is not None:
                found.append((target, node.lineno, id(node) in top_level))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {target for target, _, _ in imports(path, modules) if target != name} for name, path in modules.items()
    }


def _package(module: str) -> str:
    return module.split(".")[0]


def test_arrows_run_core_to_eval_to_experiments():
    back_edges = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if module != COMPOSITION_ROOT
        for target in targets
        if RANK[_package(target)] > RANK[_package(module)]
    ]
    assert back_edges == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_package_has_an_import_cycle():
    graph = import_graph()
    for package in PACKAGES:
        within = {
            m: {t for t in ts if _package(t) == package and t != package}
            for m, ts in graph.items()
            if _package(m) == package and m != package
        }
        assert _cycle(within) is None, f"import cycle in {package}: {' -> '.join(_cycle(within))}"


def test_imports_are_at_module_top_outside_the_cli():
    modules = _modules()
    hidden = [
        f"{name}:{line} imports {target}"
        for name, path in modules.items()
        if name != COMPOSITION_ROOT
        for target, line, top in imports(path, modules)
        if not top
    ]
    assert hidden == []


def test_the_graph_sees_real_edges():
    """The checks above would pass on an empty graph; this one pins edges that must be there."""
    graph = import_graph()
    assert "gptjax.train" in graph["gptjax.hooks"] and "gptjax.train" in graph["eval.hook"]
    assert "eval.hook" in graph["experiments.runner"] and "eval.hook" in graph[COMPOSITION_ROOT]
    assert {"gptjax.config", "gptjax.errors"} <= graph["gptjax.rundir"]


if __name__ == "__main__":
    for module, targets in sorted(import_graph().items()):
        print(f"{module} -> {', '.join(sorted(targets)) or '(nothing in the project)'}")
    sys.exit(0)
