"""Tiny diffusion models written with plain diffusers and torch only: no diffaudit code.

They stand in for models trained elsewhere (issue 13): a few steps of the loop diffusers'
`examples/unconditional_image_generation/train_unconditional.py` runs (noise, `add_noise`,
MSE on the UNet's prediction, AdamW), then `save_pretrained`. Their images are noise-like; the
tests check that every stage runs and says what applies, not that the model draws digits.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    LDMPipeline,
    UNet2DModel,
    VQModel,
)


def _unet(*, channels: int, size: int, num_class_embeds: int | None = None) -> UNet2DModel:
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=num_class_embeds,
    )


def _fit(unet: UNet2DModel, scheduler, *, channels: int, size: int, steps: int, seed: int) -> None:
    """train_unconditional.py's loop on random 'images' (the tests need weights, not skill)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    labels_n = unet.config.num_class_embeds
    for _ in range(steps):
        clean = torch.rand(8, channels, size, size, generator=g) * 2 - 1
        noise = torch.randn(clean.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (8,), generator=g)
        noisy = scheduler.add_noise(clean, noise, t)
        labels = torch.randint(0, labels_n, (8,), generator=g) if labels_n else None
        pred = unet(noisy, t, class_labels=labels).sample
        target = noise if scheduler.config.prediction_type == "epsilon" else clean
        loss = F.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()


def unconditional_pipeline(
    folder: Path, *, channels: int = 1, size: int = 16, prediction_type: str = "epsilon", steps: int = 5
) -> Path:
    """A DDPMPipeline folder (model_index.json, unet/, scheduler/), safetensors weights."""
    torch.manual_seed(0)
    unet = _unet(channels=channels, size=size)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    _fit(unet, scheduler, channels=channels, size=size, steps=steps, seed=0)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def conditional_unet_scheduler(
    folder: Path, *, num_classes: int = 10, size: int = 16, steps: int = 5
) -> Path:
    """A bare unet/ + scheduler/ pair: a class-conditional UNet (one embedding per class, no null
    class) from another codebase, with a DDIM scheduler config."""
    torch.manual_seed(1)
    unet = _unet(channels=1, size=size, num_class_embeds=num_classes)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    _fit(unet, scheduler, channels=1, size=size, steps=steps, seed=1)
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    return folder


def latent_pipeline(folder: Path, *, vae: str = "vq", size: int = 16, steps: int = 5) -> Path:
    """An LDMPipeline folder: a tiny VQModel (or AutoencoderKL) that halves the image side, and a
    UNet on its 2-channel latents."""
    torch.manual_seed(2)
    common = dict(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=2,
        norm_num_groups=8,
        sample_size=size,
    )
    autoencoder = VQModel(**common, num_vq_embeddings=32) if vae == "vq" else AutoencoderKL(**common)
    latent = size // 2
    unet = UNet2DModel(
        sample_size=latent,
        in_channels=2,
        out_channels=2,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    _fit(unet, scheduler, channels=2, size=latent, steps=steps, seed=2)
    if vae == "vq":
        LDMPipeline(vqvae=autoencoder, unet=unet, scheduler=scheduler).save_pretrained(folder)
    else:  # LDMPipeline's slot is named vqvae; an AutoencoderKL folder names it vae.
        unet.save_pretrained(folder / "unet")
        scheduler.save_pretrained(folder / "scheduler")
        autoencoder.save_pretrained(folder / "vae")
    return folder
