"""The exported model folder (the train stage's output, `models/diffusion`) in diffusers' pipeline-folder
layout. Kept free of torch and diffusers, so the report can read a model's config without loading them."""

from __future__ import annotations

from pathlib import Path

UNET_SUBFOLDER = "unet"
SCHEDULER_SUBFOLDER = "scheduler"


def exported_unet_config(model_dir: str | Path) -> Path:
    """The exported UNet's config.json (its presence says a model was exported there)."""
    return Path(model_dir) / UNET_SUBFOLDER / "config.json"


def exported_unet_weights(model_dir: str | Path) -> Path:
    return Path(model_dir) / UNET_SUBFOLDER / "diffusion_pytorch_model.safetensors"
