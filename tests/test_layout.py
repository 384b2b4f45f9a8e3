"""The package's import structure, read statically from the source: no import circle, and no module
importing one of a higher layer (a deferred import inside a function counts too: it is a circle
that only shows at run time)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lowest first. A module may import its own layer and the layers below it.
LAYERS = (
    ("safe_loading", "remote_code", "command_line", "local_paths", "schedules", "distributed", "ema", "monitoring", "crops", "config_checks",
     "plots", "registry", "visualization"),
    ("backbones", "data", "transforms", "masking", "losses", "text", "tokenizer", "heads"),
    ("vit_encoders", "token_prediction", "joint_embedding", "modeling"),
    ("recipes",),
    ("training",),
    ("eval", "analysis"),
    ("hub",),
    ("cli",),
)


def _modules() -> dict[str, Path]:
    """Dotted name -> file for hf_ssl/ and modeling/ (installed as hf_ssl.modeling)."""
    modules = {}
    for folder, prefix in (("hf_ssl", ""), ("modeling", "hf_ssl.")):
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = prefix + ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The hf_ssl modules `name` imports anywhere in its file (not under ``if TYPE_CHECKING``)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found, tree = set(), ast.parse(path.read_text())
    type_hints_only = {id(child) for node in ast.walk(tree)
                       if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
                       for statement in node.body for child in ast.walk(statement)}
    for node in ast.walk(tree):
        if id(node) in type_hints_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]) if node.level else node.module
            targets = [f"{base.rstrip('.')}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package itself imports everything, to register it
    # a method folder's recipe.py sits with the recipes; its configuration and model below them
    group = "recipes" if parts[1] == "modeling" and parts[-1] == "recipe" else parts[1]
    return next((number for number, names in enumerate(LAYERS) if group in names), None)


def _climbing(graph: dict[str, set[str]]) -> list[str]:
    return [f"{name} -> {target}" for name, targets in sorted(graph.items()) for target in sorted(targets)
            if _layer(name) is not None and _layer(target) is not None and _layer(target) > _layer(name)]


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    circles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                circles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return circles


def test_every_module_has_a_layer():
    assert [name for name in _graph() if name != "hf_ssl" and _layer(name) is None] == []


def test_no_module_imports_a_higher_layer():
    assert _climbing(_graph()) == []


def test_no_import_circle():
    assert _circles(_graph()) == []


def test_the_checks_see_a_circle_and_a_climb(tmp_path, monkeypatch):
    """Relative, absolute and deferred imports are all read."""
    files = {
        "hf_ssl/__init__.py": "",
        "hf_ssl/data/__init__.py": "from .loading import x\n",
        "hf_ssl/data/loading.py": "def f():\n    from hf_ssl.cli.main import y\n",
        "hf_ssl/cli/__init__.py": "",
        "hf_ssl/cli/main.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import hf_ssl.cli\n"
                              "from hf_ssl.data import loading\n",
        "modeling/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    graph = _graph()
    assert graph["hf_ssl.data"] == {"hf_ssl.data.loading"} and graph["hf_ssl.cli.main"] == {"hf_ssl.data.loading"}
    assert _climbing(graph) == ["hf_ssl.data.loading -> hf_ssl.cli.main"]
    assert _circles(graph) == [["hf_ssl.cli.main", "hf_ssl.data.loading"]]
