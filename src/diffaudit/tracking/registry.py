"""The MLflow model registry's primitives: log the model as a pyfunc, read an alias, a version's metrics.

The release rule that uses them lives above, in diffaudit.release.
"""

from __future__ import annotations

import os
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from diffaudit.config.release_schema import ReleaseCfg
from diffaudit.config.schema import Config

CANDIDATE = "candidate"
CHAMPION = "champion"
METRIC_TAG = "diffaudit.metric."
FEATURE_SPACE_TAG = "diffaudit.feature_space"  # "<eval.feature>+evaluator:<md5>": who measured a version
MODEL_NAME_IN_RUN = "model"
SERVING_REQUIREMENTS = (
    "torch",
    "diffusers",
    "safetensors",
    "numpy",
    "pandas",
    "mlflow",
    "lightning",
    "pydantic",
    "pyyaml",
    "tqdm",
)


def alias_version(name: str, alias: str, client: MlflowClient | None = None) -> ModelVersion | None:
    """The version holding `alias`, or None when the model or the alias does not exist."""
    client = client or MlflowClient()
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def version_metrics(mv: ModelVersion) -> dict[str, float | None]:
    """The compared metrics a version was registered with (tags, so they outlive run deletion)."""
    out: dict[str, float | None] = {}
    for k, v in (mv.tags or {}).items():
        if k.startswith(METRIC_TAG):
            try:
                out[k.removeprefix(METRIC_TAG)] = float(v)
            except ValueError:
                out[k.removeprefix(METRIC_TAG)] = None
    return out


def _requirements() -> list[str]:
    reqs = []
    for pkg in SERVING_REQUIREMENTS:
        try:
            reqs.append(f"{pkg}=={metadata.version(pkg).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def log_model(cfg: Config, model_dir: str | Path, class_names: list[str], release: ReleaseCfg) -> Any:
    """Log the exported model as a pyfunc in the active run: from code (no pickle), with explicit
    requirements (inferring them would load the model in a subprocess, slowly)."""
    from diffaudit.models.imported import inspect_model_folder

    folder = inspect_model_folder(model_dir)
    conditioning = folder.conditioning(len(class_names))
    steps = release.serve_steps or cfg.sampler.steps
    with warnings.catch_warnings():
        # MLflow asks for an input example to check the signature by: the signature here is explicit
        # (pyfunc_model.signature), and an example would make MLflow run a sampling pass to validate it.
        warnings.filterwarnings("ignore", message=r".*An input example was not provided when logging")
        # MLflow copies the model folder into the logged model through its artifact downloader, which draws
        # a "Downloading artifacts" bar for a local copy of three files: not drawn.
        before = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        try:
            return _log_pyfunc(cfg, model_dir, class_names, folder, conditioning, steps)
        finally:
            if before is None:
                os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
            else:
                os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = before


def _log_pyfunc(
    cfg: Config, model_dir: str | Path, class_names: list[str], folder: Any, conditioning: str, steps: int
) -> Any:
    from diffaudit.tracking import pyfunc_model

    return mlflow.pyfunc.log_model(
        name=MODEL_NAME_IN_RUN,
        python_model=pyfunc_model.__file__,
        artifacts={"diffusion": str(model_dir)},
        signature=pyfunc_model.signature(
            folder.image_size, folder.channels, steps, cfg.sampler.name, conditional=conditioning != "none"
        ),
        model_config={
            "class_names": class_names,
            "conditioning": conditioning,
            "guidance_scale": cfg.sampler.guidance_scale if conditioning == "class_cfg" else 1.0,
            "steps": steps,
            "sampler": cfg.sampler.name,
        },
        pip_requirements=_requirements(),
    )
