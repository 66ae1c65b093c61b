"""The layering in ARCHITECTURE.md holds: each neox module imports only modules above it.

The order is read from ARCHITECTURE.md itself (the tree in "The layers"), so the map and the
code cannot drift apart: a new module must be placed in the map before this test passes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "neox"
MAP = ROOT / "ARCHITECTURE.md"


def _layers() -> list[str]:
    """Top-level module names of neox in the map's order (``generation/`` → ``generation``)."""
    text = MAP.read_text(encoding="utf-8")
    block = text.split("## The layers", 1)[1].split("```", 2)[1]
    names = re.findall(r"[├└]── ([A-Za-z_]+)(?:\.py|/)", block)
    assert names, "ARCHITECTURE.md has no module tree under '## The layers'"
    return names


def _top_level(module_path: Path) -> str:
    rel = module_path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _neox_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported top-level neox module, inside a function) for every neox import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]  # ("neox",) or ("neox", "generation")
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this file's package
                    base = list(package[: len(package) - child.level + 1])
                    parts = base + (child.module.split(".") if child.module else [])
                else:
                    parts = (child.module or "").split(".")
                if parts and parts[0] == "neox":
                    if len(parts) > 1:
                        found.append((child.lineno, parts[1], nested))
                    else:  # from neox import x / from . import x
                        found.extend((child.lineno, alias.name, nested) for alias in child.names)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    parts = alias.name.split(".")
                    if parts[0] == "neox" and len(parts) > 1:
                        found.append((child.lineno, parts[1], nested))
            visit(child, nested)

    visit(tree, False)
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py") or p.parent != PACKAGE)


def test_every_module_is_on_the_map():
    layers = _layers()
    modules = {_top_level(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    missing = sorted(modules - set(layers))
    assert not missing, f"neox modules missing from ARCHITECTURE.md's map: {missing}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_one_way(path: Path):
    layers = _layers()
    here = _top_level(path)
    rank = {name: i for i, name in enumerate(layers)}
    for line, target, _ in _neox_imports(path):
        if target == here or target not in rank:
            continue
        assert rank[target] < rank[here], (
            f"{path.relative_to(ROOT)}:{line} imports neox.{target}, which ARCHITECTURE.md lists after "
            f"neox.{here}: a module imports only the modules listed before it"
        )
