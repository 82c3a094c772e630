"""The tiny composed config and the environment a stage runs in, for tests that run stages."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from diffaudit.config.compose import compose_config, write_params
from diffaudit.config.schema import Config, validate_config

ROOT = Path(__file__).resolve().parents[2]

# conf/experiment/smoke.yaml: few steps, few images. Quality is not the point of these runs.
TINY = ["experiment=smoke"]


def tiny_overrides(root: Path, extra: list[str] | None = None) -> list[str]:
    """TINY plus every output path (and the MLflow store) under `root`."""
    paths = [f"paths.{k}={root / k}" for k in ("data", "models", "samples", "metrics", "plots", "reports")]
    return TINY + paths + [f"tracking.uri=sqlite:///{root / 'mlflow.db'}"] + list(extra or [])


def tiny_config(root: Path, extra: list[str] | None = None) -> Config:
    raw = compose_config(tiny_overrides(root, extra), ROOT / "conf")
    root.mkdir(parents=True, exist_ok=True)
    write_params(raw, root / "params.yaml")
    return validate_config(raw)


def stage_env(params: Path, pid: str, **extra: str) -> dict[str, str]:
    """The environment for a stage run as a subprocess on `params` (no inherited MLflow or diffaudit
    settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DIFFAUDIT_"))}
    return (
        env
        | {"DIFFAUDIT_PARAMS": str(params), "DIFFAUDIT_PROGRESS": "0", "DIFFAUDIT_PIPELINE_ID": pid}
        | extra
    )


@contextmanager
def pipeline_env(root: Path, pid: str) -> Iterator[None]:
    """The environment `make repro` gives a stage, pointed at this run (and restored afterwards)."""
    keys = ("DIFFAUDIT_PIPELINE_ID", "DIFFAUDIT_PROGRESS", "DIFFAUDIT_PARAMS", "MLFLOW_TRACKING_URI")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(
        DIFFAUDIT_PIPELINE_ID=pid, DIFFAUDIT_PROGRESS="0", DIFFAUDIT_PARAMS=str(root / "params.yaml")
    )
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class TinyRun:
    root: Path
    cfg: Config
