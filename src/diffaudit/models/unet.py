"""The denoiser: diffusers' UNet2DModel, class-conditional with one extra "null" class for CFG."""

from __future__ import annotations

from pathlib import Path

from diffusers import DDPMScheduler, UNet2DModel

from diffaudit.config.schema import ModelCfg
from diffaudit.models.export import SCHEDULER_SUBFOLDER, UNET_SUBFOLDER, exported_unet_config


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
    """The class id that means "no condition" (the embedding's last row)."""
    return int(unet.config.num_class_embeds) - 1


def save_exported(unet: UNet2DModel, noise_scheduler: DDPMScheduler, out_dir: str | Path) -> None:
    """Write the UNet (safetensors) and its training noise schedule in diffusers format under `out_dir`."""
    unet.save_pretrained(Path(out_dir) / UNET_SUBFOLDER, safe_serialization=True)
    noise_scheduler.save_pretrained(Path(out_dir) / SCHEDULER_SUBFOLDER)


def load_exported(model_dir: str | Path) -> tuple[UNet2DModel, DDPMScheduler]:
    """The exported UNet (eval mode) and its training noise schedule."""
    model_dir = Path(model_dir)
    if not exported_unet_config(model_dir).is_file():
        raise FileNotFoundError(f"{model_dir / UNET_SUBFOLDER} not found: run the train stage first")
    unet = UNet2DModel.from_pretrained(model_dir / UNET_SUBFOLDER, use_safetensors=True).eval()
    return unet, DDPMScheduler.from_pretrained(model_dir / SCHEDULER_SUBFOLDER)
