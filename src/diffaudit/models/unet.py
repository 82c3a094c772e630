"""The denoiser: diffusers' UNet2DModel, class-conditional with one extra "null" class for CFG when
diffaudit trains it; an imported one may be conditional without a null class, or unconditional."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, EDMEulerScheduler, ModelMixin, UNet2DModel
from safetensors import SafetensorError

from diffaudit.config.schema import ModelCfg
from diffaudit.errors import ModelFolderError
from diffaudit.models.export import (
    EDM_SCHEDULER_CLASSES,
    SCHEDULER_SUBFOLDER,
    UNET_SUBFOLDER,
    exported_unet_config,
)
from diffaudit.models.imported import SCHEDULER_CONFIG, SOURCE_RECORD, inspect_model_folder
from diffaudit.results.applicability import Conditioning
from diffaudit.results.base import read_result
from diffaudit.results.model_source import ModelSource


def build_unet(cfg: ModelCfg, image_size: int, channels: int, num_classes: int) -> UNet2DModel:
    """A UNet whose class embedding has num_classes + 1 rows: the last is the null (unconditional) class."""
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=min(32, cfg.block_out_channels[-1]),
        dropout=cfg.dropout,
        num_class_embeds=num_classes + 1,
    )


def null_class(unet: UNet2DModel) -> int:
    """The class id that means "no condition" (the embedding's last row; 0 for an unconditional UNet,
    which ignores labels)."""
    n = unet.config.num_class_embeds
    return int(n) - 1 if n else 0


def is_class_conditional(unet: UNet2DModel) -> bool:
    return unet.config.num_class_embeds is not None


def predict(unet: UNet2DModel, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """The UNet's output for class `labels`; an unconditional UNet is called without them."""
    return unet(x, t, class_labels=labels if is_class_conditional(unet) else None).sample


def save_exported(unet: UNet2DModel, noise_scheduler: DDPMScheduler, out_dir: str | Path) -> None:
    """Write the UNet (safetensors) and its training noise schedule in diffusers format under `out_dir`."""
    unet.save_pretrained(Path(out_dir) / UNET_SUBFOLDER, safe_serialization=True)
    noise_scheduler.save_pretrained(Path(out_dir) / SCHEDULER_SUBFOLDER)


def load_exported(model_dir: str | Path) -> tuple[UNet2DModel, DDPMScheduler]:
    """The exported UNet (eval mode) and its training noise schedule."""
    loaded = load_model(model_dir)
    return loaded.unet, loaded.noise_scheduler


@dataclass
class LoadedModel:
    """A model folder as the stages use it: the UNet (eval mode), the DDPM noise schedule it was trained
    with (any supported scheduler's config converts to it), the decoder of a latent model, and where an
    imported model came from (None: diffaudit trained it)."""

    unet: UNet2DModel
    noise_scheduler: DDPMScheduler
    vae: ModelMixin | None
    source: ModelSource | None

    @property
    def conditioning(self) -> Conditioning:
        """As source.json recorded it against the dataset; without one, diffaudit's own convention (a
        class embedding ends in the null class), or unconditional without an embedding."""
        if self.source is not None:
            return self.source.conditioning
        return "class_cfg" if is_class_conditional(self.unet) else "none"


def load_model(model_dir: str | Path) -> LoadedModel:
    """Load a model folder (the train stage's export or an imported copy) from safetensors only.

    Raises:
        `FileNotFoundError`: when the folder holds no UNet (the train stage has not run).
        `ModelFolderError`: when a config or weights file cannot be read as what it should be.
    """
    from diffusers import AutoencoderKL, VQModel

    model_dir = Path(model_dir)
    if not exported_unet_config(model_dir).is_file():
        raise FileNotFoundError(f"{model_dir / UNET_SUBFOLDER} not found: run the train stage first")
    record = model_dir / SOURCE_RECORD
    source = read_result(record, ModelSource) if record.is_file() else None
    vae_cls = {"VQModel": VQModel, "AutoencoderKL": AutoencoderKL}
    try:
        with _quiet_diffusers():
            unet = UNet2DModel.from_pretrained(model_dir / UNET_SUBFOLDER, use_safetensors=True).eval()
            noise_scheduler = _training_scheduler(model_dir / SCHEDULER_SUBFOLDER)
            vae = None
            folder = inspect_model_folder(model_dir)
            if folder.vae_class is not None and folder.vae_subfolder is not None:
                path = model_dir / folder.vae_subfolder
                vae = vae_cls[folder.vae_class].from_pretrained(path, use_safetensors=True).eval()
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise ModelFolderError(
            f"{model_dir}: the model cannot be loaded ({str(err).splitlines()[0]})"
        ) from None
    return LoadedModel(unet=unet, noise_scheduler=noise_scheduler, vae=vae, source=source)


def _training_scheduler(folder: Path) -> DDPMScheduler | EDMEulerScheduler:
    """The DDPM schedule (any supported VP scheduler's config converts to it), or an EDM model's
    EDMEulerScheduler (an EDM DPM-Solver config converts to it: the same sigma range and sigma_data)."""
    config_path = folder / SCHEDULER_CONFIG
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if config.get("_class_name") in EDM_SCHEDULER_CLASSES:
        return EDMEulerScheduler.from_pretrained(folder)
    return DDPMScheduler.from_pretrained(folder)


@contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """diffusers warns when a DDIM/PNDM config is read as the DDPM schedule (keys it ignores): expected."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
