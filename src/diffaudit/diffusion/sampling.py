"""The pieces of class-conditional sampling: guided output, per-image starting noise, labels and seeds.

The sampling loop itself is `diffaudit.diffusion.pipeline.ClassConditionalPipeline`. The conditional
and unconditional passes share one batched forward. Each image's starting noise comes from its own
seed, so an image is reproducible whatever batch it is generated in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DModel

from diffaudit.models.unet import is_class_conditional, predict


@dataclass
class StepInfo:
    """What a sampling step saw and did, for the explainability audit."""

    index: int
    timestep: torch.Tensor
    x_t: torch.Tensor  # the state before the step
    eps_cond: torch.Tensor | None
    eps_uncond: torch.Tensor | None
    x0_pred: torch.Tensor  # the scheduler's own x0-prediction when it exposes one (model space: latents)
    prev_sample: torch.Tensor


def guided_output(
    unet: UNet2DModel,
    x: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    null_class: int,
    guidance_scale: float,
    with_uncond: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """CFG output out_u + w (out_c - out_u) in one batched forward; w = 1 is plain conditional.

    At w = 1 the unconditional pass is skipped unless `with_uncond` asks for it (guidance maps
    show where the conditioning acts whatever the scale); the output is then the conditional one.
    """
    tt = t.expand(len(x)) if t.ndim == 0 else t
    if (guidance_scale == 1.0 and not with_uncond) or not is_class_conditional(unet):
        out = predict(unet, x, tt, labels)  # an unconditional UNet: no second pass to guide with
        return out, out, None
    null = torch.full_like(labels, null_class)
    both = unet(torch.cat([x, x]), torch.cat([tt, tt]), class_labels=torch.cat([labels, null])).sample
    cond, uncond = both.chunk(2)
    if guidance_scale == 1.0:
        return cond, cond, uncond
    return uncond + guidance_scale * (cond - uncond), cond, uncond


def initial_noise(
    seeds: list[int], shape: tuple[int, ...], device: torch.device | str = "cpu"
) -> torch.Tensor:
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    ).to(device)


def balanced_labels(num_classes: int, per_class: int) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(per_class)


def sample_seeds(seed: int, n: int) -> list[int]:
    """Per-image seeds derived from the run seed: image i is the same whatever the batch size."""
    return [seed * 1_000_003 + i for i in range(n)]
