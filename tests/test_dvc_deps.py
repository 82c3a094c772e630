"""Every module a DVC stage runs is one of its deps in dvc.yaml, so changing code that shapes a stage's
outputs reruns that stage instead of leaving DVC to serve stale cached results."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from tests.helpers.config import ROOT

# Code that cannot change a stage's outputs without dvc.yaml saying so anyway: the config schema (the
# stage's params are deps), the error types, the artifact layout (its paths are dvc.yaml's own), the
# MLflow run bookkeeping and what the dashboard shows of a run (headline metric names, the verdict's
# words, links into the UI: tracking/summary.py, tracking/links.py write to MLflow only, never a DVC
# output), lineage hashes and the stage entry's error handling.
EXEMPT = (
    "diffaudit.config",
    "diffaudit.errors",
    "diffaudit.layout",
    "diffaudit.tracking.mlflow_tracking",
    "diffaudit.tracking.summary",
    "diffaudit.tracking.links",
    "diffaudit.utils.lineage",
    "pipelines._stage",
)


def _file_of(module: str) -> Path | None:
    base = ROOT / "src" if module.startswith("diffaudit") else ROOT
    path = base.joinpath(*module.split("."))
    for cand in (path.with_suffix(".py"), path / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _is_reexport(path: Path) -> bool:
    """A package __init__ that only re-exports (docstring, imports, __all__): it runs no code of its own."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(
        isinstance(n, (ast.Import, ast.ImportFrom))
        or (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
        or (isinstance(n, ast.Assign) and all(getattr(t, "id", "") == "__all__" for t in n.targets))
        for n in body
    )


def _defined_in(package: str, name: str) -> str | None:
    """The module a re-exporting package takes `name` from (`from .x import name` in its __init__)."""
    init = _file_of(package)
    for node in ast.parse(init.read_text()).body if init and init.name == "__init__.py" else []:
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return node.module
    return None


def _imports(path: Path) -> set[str]:
    """Project modules `path` imports, at any depth of the file (lazy imports in functions included); a
    name taken from a re-exporting package counts as the module that defines it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            pkg = _file_of(node.module)
            if pkg is not None and _is_reexport(pkg):
                out |= {_defined_in(node.module, a.name) or f"{node.module}.{a.name}" for a in node.names}
            else:
                out.add(node.module)
                out |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in out if m.split(".")[0] in ("diffaudit", "pipelines") and _file_of(m)}


def _closure(entry: str) -> set[str]:
    """The modules a stage runs, not followed into EXEMPT ones (what they import is theirs to need)."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        if not mod.startswith(EXEMPT) and not _is_reexport(_file_of(mod)):
            todo += list(_imports(_file_of(mod)))
    return seen


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


def test_every_module_a_stage_runs_is_a_dep() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        entry = stage["cmd"].split(" -m ", 1)[1].split()[0]
        deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
        uncovered = sorted(
            _file_of(m).relative_to(ROOT).as_posix()
            for m in _closure(entry)
            if not m.startswith(EXEMPT) and not _is_reexport(_file_of(m)) and not _covered(_file_of(m), deps)
        )
        if uncovered:
            missing[name] = uncovered
    assert missing == {}


def test_the_closure_follows_lazy_and_package_imports() -> None:
    closure = _closure("pipelines.audit")
    # imported inside a function (the mitigation's sampler), and a name re-exported by a package
    assert "diffaudit.diffusion.pipeline" in closure and "diffaudit.results.fairness" in closure
    assert "diffaudit.results.explain" not in closure  # in the package, but not what the audit runs
