"""The package map of docs/architecture.md, held by the code: a package imports only packages of its own
layer or below, so no lower layer reaches up into tracking, release or the report (the top layer)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers.config import ROOT

SRC = ROOT / "src" / "diffaudit"

# Lowest first. docs/architecture.md draws the same order.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "utils"),
    ("config",),
    ("layout", "results"),
    ("data", "models", "distributed"),
    ("diffusion", "training", "metrics"),
    ("audit",),
    ("tracking",),
    ("release",),
    ("report",),
)
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _package(path: Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def _imported_packages(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        out |= {n.split(".")[1] for n in names if n.startswith("diffaudit.") and len(n.split(".")) > 1}
    return out


def test_every_package_is_on_the_map() -> None:
    packages = {_package(p) for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC}
    assert packages == set(RANK)


def test_no_package_imports_a_higher_layer() -> None:
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        if path.parent == SRC and path.name == "__init__.py":
            continue
        own = _package(path)
        for pkg in _imported_packages(path):
            if RANK[pkg] > RANK[own]:
                upward.append(f"{path.relative_to(SRC)} ({own}) imports diffaudit.{pkg}")
    assert upward == []
