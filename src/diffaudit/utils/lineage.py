"""What made an artifact: the git commit, the config, and content hashes of its inputs."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any


def git_commit(cwd: str | Path = ".") -> str:
    """HEAD's commit, suffixed with '-dirty' when tracked files differ from it; 'unknown' outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def file_md5(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def path_md5(path: str | Path) -> str:
    """md5 of a file, or of a directory's (relative path, file md5) listing, so any change shows."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found")
    listing = [(str(p.relative_to(path)), file_md5(p)) for p in sorted(path.rglob("*")) if p.is_file()]
    return hashlib.md5(json.dumps(listing).encode()).hexdigest()


def config_hash(section: Any) -> str:
    """Short stable hash of a JSON-able config section (e.g. to match a checkpoint to its config)."""
    return hashlib.sha256(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:16]
