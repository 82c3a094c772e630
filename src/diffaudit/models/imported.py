"""Models trained elsewhere: recognise a diffusers model folder, refuse what cannot be audited safely, and
copy it (configs and safetensors weights only) into the pipeline's model folder beside a record of where
it came from.

Torch-free, so compose can read a folder's image size and channels before any stage runs. Weights are
never unpickled: a folder whose weights exist only as pickles (`.bin`, `.ckpt`, `.pt`) is refused.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from diffaudit.errors import ModelFolderError
from diffaudit.models.export import (
    CONFIG_NAME,
    EDM_SCHEDULER_CLASSES,
    SCHEDULER_SUBFOLDER,
    UNET_SUBFOLDER,
    WEIGHTS_NAME,
)
from diffaudit.results.applicability import Conditioning
from diffaudit.utils.lineage import path_md5

if TYPE_CHECKING:
    from diffaudit.config.schema import Config

MODEL_INDEX = "model_index.json"
SCHEDULER_CONFIG = "scheduler_config.json"
SOURCE_RECORD = "source.json"  # written beside the copied model: what was imported, from where
SUPPORTED_PIPELINES = ("DDPMPipeline", "DDIMPipeline", "LDMPipeline")
SUPPORTED_UNETS = ("UNet2DModel",)
SUPPORTED_VAES = ("VQModel", "AutoencoderKL")
# Discrete variance-preserving schedules: each config converts to the DDPM noise schedule that every
# DDPM sampler and the membership attack are built from. And EDM's (diffaudit's diffusion=edm export,
# models/export.py EDM_SCHEDULER_CLASSES): sampled with the EDM samplers, audited on a VP view
# (diffusion/edm.py).
SUPPORTED_SCHEDULERS = (
    "DDPMScheduler",
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    *EDM_SCHEDULER_CLASSES,
)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
VAE_SUBFOLDERS = ("vqvae", "vae")  # LDMPipeline's name, then the common one
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


@dataclass(frozen=True)
class ModelFolder:
    """A diffusers model folder that diffaudit can audit, as read from its configs (nothing loaded)."""

    root: Path
    kind: Literal["pipeline", "unet_scheduler"]
    pipeline_class: str | None
    scheduler_class: str
    unet_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    vae_subfolder: str | None = None
    vae_class: str | None = None
    vae_config: dict[str, Any] | None = None

    @property
    def latent(self) -> bool:
        return self.vae_subfolder is not None

    @property
    def channels(self) -> int:
        """Channels of the images the model makes (the decoder's, for a latent model)."""
        cfg = self.vae_config if self.vae_config is not None else self.unet_config
        return int(cfg.get("out_channels", cfg.get("in_channels", 3)))

    @property
    def image_size(self) -> int:
        """Side of the images the model makes: the UNet's, times the decoder's upsampling if latent."""
        size = self.unet_config.get("sample_size")
        if isinstance(size, list):
            size = size[0]
        factor = 1
        if self.vae_config is not None:
            factor = 2 ** (len(self.vae_config.get("block_out_channels", [0])) - 1)
        return int(size) * factor

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    def conditioning(self, num_classes: int) -> Conditioning:
        """How the UNet is conditioned, against the dataset's classes.

        `class_cfg`: one class-embedding row per class plus a last "null" row (trained for
        classifier-free guidance, as diffaudit trains); `class`: one row per class, no guidance;
        `none`: unconditional.

        Raises:
            `ModelFolderError`: for a class embedding of another size, or a non-class embedding.
        """
        cfg, where = self.unet_config, self.root / UNET_SUBFOLDER / CONFIG_NAME
        embed_type, n = cfg.get("class_embed_type"), cfg.get("num_class_embeds")
        if embed_type is not None:
            raise ModelFolderError(
                f"{where}: class_embed_type={embed_type!r} is not supported; expected none (a class "
                "embedding table set by num_class_embeds) or an unconditional UNet"
            )
        if n is None:
            return "none"
        if n == num_classes + 1:
            return "class_cfg"
        if n == num_classes:
            return "class"
        raise ModelFolderError(
            f"{where}: num_class_embeds={n} does not fit the dataset's {num_classes} classes; expected "
            f"{num_classes} (class-conditional) or {num_classes + 1} (with a null class for guidance)"
        )

    def files(self) -> list[Path]:
        """The files that make the model (configs and safetensors weights), relative to the root."""
        rel = [Path(UNET_SUBFOLDER) / CONFIG_NAME, Path(UNET_SUBFOLDER) / WEIGHTS_NAME]
        rel.append(Path(SCHEDULER_SUBFOLDER) / SCHEDULER_CONFIG)
        if self.vae_subfolder:
            rel += [Path(self.vae_subfolder) / CONFIG_NAME, Path(self.vae_subfolder) / WEIGHTS_NAME]
        if self.kind == "pipeline":
            rel.append(Path(MODEL_INDEX))
        return sorted(rel)

    def description(self) -> str:
        what = (
            self.pipeline_class
            or f"{self.unet_config.get('_class_name', 'UNet2DModel')} + {self.scheduler_class}"
        )
        vae = f", decoder {self.vae_class} ({self.vae_subfolder}/)" if self.latent else ""
        return (
            f"{what}{vae}; {self.channels}x{self.image_size}x{self.image_size} images, "
            f"predicts {self.prediction_type}"
        )


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{path}: not a readable JSON config ({err})") from None
    if not isinstance(value, dict):
        raise ModelFolderError(f"{path}: expected a JSON object")
    return value


def _class_of(path: Path, config: dict[str, Any], allowed: tuple[str, ...], what: str) -> str:
    name = config.get("_class_name")
    if name not in allowed:
        raise ModelFolderError(
            f"{path}: {what} class {name!r} is not supported; supported: {', '.join(allowed)}"
        )
    return str(name)


def _weights(folder: Path) -> None:
    """Safetensors weights present; pickle-only weights refused without being opened."""
    if (folder / WEIGHTS_NAME).is_file():
        return
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelFolderError(
            f"{folder / pickles[0]}: pickle-only weights are refused (unpickling can run code); "
            f"expected {WEIGHTS_NAME} (save with safe_serialization=True)"
        )
    raise ModelFolderError(f"{folder}: no weights; expected {WEIGHTS_NAME}")


def _model_index_classes(path: Path, index: dict[str, Any]) -> dict[str, str]:
    """Component name -> class name, from model_index.json's `name: [library, class]` entries."""
    out = {}
    for key, value in index.items():
        if key.startswith("_"):
            continue
        if isinstance(value, list) and len(value) == 2 and value[1] is not None:
            out[key] = str(value[1])
    return out


def inspect_model_folder(path: str | Path) -> ModelFolder:
    """Read a model folder's configs and check that diffaudit can audit it (nothing is loaded).

    Accepted: a pipeline folder with `model_index.json` (DDPMPipeline, DDIMPipeline, or an LDMPipeline
    with a VQModel or AutoencoderKL), or a bare `unet/` + `scheduler/` pair (diffaudit's own export is
    one). Weights must be safetensors.

    Raises:
        `ModelFolderError`: naming the file at fault and what was expected.
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelFolderError(f"{root}: not a folder (model.path must be a diffusers model folder)")
    index_path = root / MODEL_INDEX
    unet_dir, sched_dir = root / UNET_SUBFOLDER, root / SCHEDULER_SUBFOLDER
    pipeline_class, components = None, {}
    if index_path.is_file():
        index = _json(index_path)
        pipeline_class = _class_of(index_path, index, SUPPORTED_PIPELINES, "pipeline")
        components = _model_index_classes(index_path, index)
        for need in (UNET_SUBFOLDER, SCHEDULER_SUBFOLDER):
            if need not in components:
                raise ModelFolderError(f"{index_path}: no {need!r} component; a {pipeline_class} needs one")
    elif not (unet_dir / CONFIG_NAME).is_file() or not (sched_dir / SCHEDULER_CONFIG).is_file():
        raise ModelFolderError(
            f"{root}: not a diffusers model; expected {MODEL_INDEX}, or {UNET_SUBFOLDER}/{CONFIG_NAME} with "
            f"{SCHEDULER_SUBFOLDER}/{SCHEDULER_CONFIG}"
        )
    for need, name in ((unet_dir / CONFIG_NAME, "UNet"), (sched_dir / SCHEDULER_CONFIG, "scheduler")):
        if not need.is_file():
            raise ModelFolderError(f"{need}: missing; the {name} config is needed")
    unet_config = _json(unet_dir / CONFIG_NAME)
    _class_of(unet_dir / CONFIG_NAME, unet_config, SUPPORTED_UNETS, "UNet")
    _weights(unet_dir)
    scheduler_config = _json(sched_dir / SCHEDULER_CONFIG)
    scheduler_class = _class_of(
        sched_dir / SCHEDULER_CONFIG, scheduler_config, SUPPORTED_SCHEDULERS, "scheduler"
    )
    ptype = scheduler_config.get("prediction_type", "epsilon")
    if ptype not in PREDICTION_TYPES:
        raise ModelFolderError(
            f"{sched_dir / SCHEDULER_CONFIG}: prediction_type {ptype!r} is not supported; "
            f"supported: {', '.join(PREDICTION_TYPES)}"
        )
    vae_sub = next((s for s in VAE_SUBFOLDERS if s in components or (root / s / CONFIG_NAME).is_file()), None)
    vae_class = vae_config = None
    if vae_sub is not None:
        vae_path = root / vae_sub / CONFIG_NAME
        if not vae_path.is_file():
            raise ModelFolderError(f"{vae_path}: missing; the {vae_sub!r} component needs its config")
        vae_config = _json(vae_path)
        vae_class = _class_of(vae_path, vae_config, SUPPORTED_VAES, "autoencoder")
        _weights(root / vae_sub)
    elif pipeline_class == "LDMPipeline":
        raise ModelFolderError(f"{index_path}: an LDMPipeline needs a vqvae/ or vae/ autoencoder")
    return ModelFolder(
        root=root,
        kind="pipeline" if pipeline_class else "unet_scheduler",
        pipeline_class=pipeline_class,
        scheduler_class=scheduler_class,
        unet_config=unet_config,
        scheduler_config=scheduler_config,
        vae_subfolder=vae_sub,
        vae_class=vae_class,
        vae_config=vae_config,
    )


def folder_md5(path: str | Path) -> str:
    """DVC's hash of a folder dependency (utils/lineage.py `path_md5`), the value dvc.lock records for
    `model.path`."""
    return path_md5(path)


def copy_model(folder: ModelFolder, dest: str | Path) -> None:
    """Copy the model's files (configs and safetensors, nothing else) into the folder `dest`."""
    for rel in folder.files():
        (Path(dest) / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder.root / rel, Path(dest) / rel)


def fit_data_to_model(raw: dict[str, Any]) -> str | None:
    """At compose time, bring `data.image_size` of a composed config to an imported model's image size
    (the dataset is resized to the model, not the reverse); say what changed, or None."""
    model, data = raw.get("model") or {}, raw.get("data")
    if model.get("source") != "pretrained" or not isinstance(data, dict):
        return None
    size = inspect_model_folder(model.get("path", "")).image_size
    if data.get("image_size") == size:
        return None
    before, data["image_size"] = data.get("image_size"), size
    data["requested_image_size"] = before
    return f"data.image_size {before} -> {size}: the dataset is brought to the imported model's size"


def check_fits(folder: ModelFolder, cfg: Config) -> None:
    """The run can audit this model: the data's channels and size are the model's, and the membership
    attack's timesteps lie within the model's own schedule.

    Raises:
        `ModelFolderError`: naming the model's value and the config key that differs.
    """
    where = folder.root / UNET_SUBFOLDER / CONFIG_NAME
    if folder.channels != cfg.data.channels:
        raise ModelFolderError(
            f"{where}: the model makes {folder.channels}-channel images, data.channels={cfg.data.channels} "
            f"({cfg.data.name}); audit it against a dataset with {folder.channels} channels"
        )
    if folder.image_size != cfg.data.image_size:
        raise ModelFolderError(
            f"{where}: the model makes {folder.image_size}x{folder.image_size} images: set "
            f"data.image_size={folder.image_size} (`make audit` does)"
        )
    steps = int(folder.scheduler_config.get("num_train_timesteps", 1000))
    m = cfg.audit.membership
    late = sorted(t for t in {*m.timesteps, *m.pia_timesteps} if t >= steps)
    if m.enabled and late:
        raise ModelFolderError(
            f"{folder.root / SCHEDULER_SUBFOLDER / SCHEDULER_CONFIG}: audit.membership timesteps {late} are "
            f"not below the model's num_train_timesteps={steps}"
        )
