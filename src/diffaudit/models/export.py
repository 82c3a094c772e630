"""The saved model folders: the exported diffusion model (the train stage's `models/diffusion`, in
diffusers' pipeline-folder layout) and diffusers' single-model folder (config.json plus safetensors
weights, the evaluator's). Kept free of torch and diffusers, so the report can read a model's config
without loading them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CONFIG_NAME = "config.json"  # diffusers' ConfigMixin.config_name
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' SAFETENSORS_WEIGHTS_NAME
UNET_SUBFOLDER = "unet"
SCHEDULER_SUBFOLDER = "scheduler"
# The scheduler classes whose saved config marks an EDM model (diffusion=edm; diffusion/edm.py).
EDM_SCHEDULER_CLASSES = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")


def exported_unet_config(model_dir: str | Path) -> Path:
    """The exported UNet's config.json (its presence says a model was exported there)."""
    return Path(model_dir) / UNET_SUBFOLDER / CONFIG_NAME


def exported_unet_weights(model_dir: str | Path) -> Path:
    return Path(model_dir) / UNET_SUBFOLDER / WEIGHTS_NAME


def model_fingerprint(model_dir: str | Path) -> str:
    """What identifies a saved single-model folder: the md5 of its weights and of its config without
    diffusers' bookkeeping keys (`_class_name`, `_diffusers_version`, ...), so a library upgrade that only
    rewrites those does not make the same model look like another one."""
    folder = Path(model_dir)
    config = {
        k: v for k, v in json.loads((folder / CONFIG_NAME).read_text()).items() if not k.startswith("_")
    }
    digest = hashlib.md5(json.dumps(config, sort_keys=True).encode())
    digest.update(hashlib.md5((folder / WEIGHTS_NAME).read_bytes()).digest())
    return digest.hexdigest()
