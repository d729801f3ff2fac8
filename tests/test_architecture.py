"""The package's layering (docs/architecture.md): every import of jaxcnn points down, and none hides in a
function unless it is listed here with its reason. Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "jaxcnn"

#: Bottom to top. A module may import its own unit and the units of lower layers, never a layer above
#: or beside it. A unit is a top-level module or package of jaxcnn (``runner.config`` and
#: ``runner.data`` are units of their own, below the rest of ``runner``).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("mesh", "geometry", "padding", "common_mesh", "links", "devices", "files", "yaml_io", "dtypes"),
    ("algorithms", "transition", "redistribute", "bounds"),
    ("conv", "cost"),
    ("nn", "measure", "timing"),
    ("models",),
    ("networks",),
    ("planner",),
    ("runner.config",),
    ("runner.data",),
    ("runner",),
    ("__init__", "__main__"),
)

#: Function-local imports of jaxcnn that stay, and why.
LOCAL_IMPORTS = {
    # `jaxcnn train` validates the config (exit 2 on a mistake, in a second) before it imports the
    # training loop, orbax and grain; `jaxcnn train --compile-only` never imports the loop.
    ("runner/cli.py", "jaxcnn.runner.checkpoint"),
    ("runner/cli.py", "jaxcnn.runner.train"),
    ("runner/cli.py", "jaxcnn.runner.aot"),
}


def _unit(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "__init__"
    if parts[0] == "runner" and len(parts) > 1 and parts[1] in ("config", "data"):
        return f"runner.{parts[1]}"
    return parts[0]


def _layer(unit: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit in units)


def _module(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts if parts[-1] != "__init__" else parts[:-1])


def _imports(tree: ast.AST) -> list[tuple[ast.AST, str, bool]]:
    """``(node, imported module, inside a function)`` of every runtime jaxcnn import (``TYPE_CHECKING``
    blocks skipped)."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.startswith("jaxcnn"):
            targets = [node.module] if node.module != "jaxcnn" else [f"jaxcnn.{a.name}" for a in node.names]
            found.extend((node, t, in_function) for t in targets)
        elif isinstance(node, ast.Import):
            found.extend((node, a.name, in_function) for a in node.names if a.name.startswith("jaxcnn"))
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


SOURCES = sorted(ROOT.rglob("*.py"))


def test_every_module_is_in_a_layer():
    units = {_unit(_module(path)) for path in SOURCES}
    missing = sorted(u for u in units if not any(u in layer for layer in LAYERS))
    assert not missing, f"add {missing} to LAYERS (and docs/architecture.md)"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    source = _module(path)
    here = _unit(source)
    for node, target, in_function in _imports(ast.parse(path.read_text())):
        there = _unit(target)
        where = f"{path.relative_to(ROOT)}:{node.lineno} imports {target}"
        assert there == here or _layer(there) < _layer(here), f"{where}: an arrow up or sideways"
        if in_function:
            assert (str(path.relative_to(ROOT)), target) in LOCAL_IMPORTS, (
                f"{where} inside a function: import it at the top, or list it in LOCAL_IMPORTS with why"
            )
