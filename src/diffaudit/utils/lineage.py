"""What made an artifact: the git commit, the config, and content hashes of its inputs."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

# Tracked files a run itself rewrites (compose writes params.yaml, dvc repro writes dvc.lock): a difference
# there does not make the code differ from the commit, so it does not mark the commit "-dirty".
RUN_WRITTEN = ("dvc.lock", "params.yaml")


def _changed(cwd: str | Path) -> list[str]:
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    return [line[3:].strip() for line in out.splitlines() if line.strip()]


def git_commit(cwd: str | Path = ".") -> str:
    """HEAD's commit, suffixed with '-dirty' when tracked files other than the ones a run rewrites
    (RUN_WRITTEN) differ from it; 'unknown' outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = [f for f in _changed(cwd) if f not in RUN_WRITTEN]
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def git_note(cwd: str | Path = ".") -> str:
    """What differs from the commit, in words, for the report's lineage ("" when nothing does)."""
    try:
        changed = _changed(cwd)
    except (OSError, subprocess.SubprocessError):
        return ""
    run = [f for f in changed if f in RUN_WRITTEN]
    code = [f for f in changed if f not in RUN_WRITTEN]
    parts = []
    if code:
        parts.append(f"{len(code)} tracked file(s) differ from the commit (-dirty): {', '.join(code[:5])}")
    if run:
        parts.append(
            f"{' and '.join(run)} rewritten by this run (compose, dvc repro); the code is the commit's"
        )
    return "; ".join(parts)


def file_md5(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def path_md5(path: str | Path) -> str:
    """DVC's hash of a path, so the report, MLflow and dvc.lock show one hash per artifact: a file's md5,
    or for a directory the md5 of its sorted `{md5, relpath}` listing suffixed `.dir` (as dvc.lock records
    a directory output or dependency)."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found")
    entries = [
        {"md5": file_md5(p), "relpath": p.relative_to(path).as_posix()}
        for p in path.rglob("*")
        if p.is_file()
    ]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def config_hash(section: Any) -> str:
    """Short stable hash of a JSON-able config section (e.g. to match a checkpoint to its config)."""
    return hashlib.sha256(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:16]
