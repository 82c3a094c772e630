"""Atomic writes: every output appears whole or not at all, so DVC or a later stage never takes a
half-written file for a finished one (write to a temporary sibling, then rename)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from diffaudit.errors import DiskFullError, is_disk_full


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on error remove it.

    Works for files and for directories (the caller creates whatever it likes at the yielded path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        try:
            yield target
        except Exception as err:
            if isinstance(err, DiskFullError) or is_disk_full(err):  # the outermost path names the output
                msg = f"no space left on the device writing {path} (nothing of it was kept)"
                raise DiskFullError(msg) from None
            raise
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(target, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (numpy and torch values converted)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_default) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Atomically create `path` by calling writer(tmp_path) (e.g. a savefig or save_pretrained)."""
    with atomic_path(path) as tmp:
        writer(tmp)


METADATA_KEY = "diffaudit"


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Save tensors as safetensors (no pickle, safe to load from untrusted sources), atomically.

    The metadata goes in as one key holding sorted JSON: safetensors writes a metadata dict in hash-map
    order, which differs between processes, and identical runs must give identical bytes (DVC hashes).
    """
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {METADATA_KEY: json.dumps(metadata, sort_keys=True)} if metadata else None
    write_with(path, lambda tmp: save_file(contiguous, str(tmp), metadata=meta))


def load_tensor_metadata(path: str | Path) -> dict[str, str]:
    """The metadata that save_tensors stored with the tensors."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        raw = f.metadata() or {}
    return json.loads(raw[METADATA_KEY]) if METADATA_KEY in raw else dict(raw)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it first (dvc repro)")
    return load_file(str(path))
