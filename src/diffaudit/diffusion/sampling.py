"""Class-conditional sampling with classifier-free guidance over any diffusers sampler.

The conditional and unconditional passes share one batched forward. Each image's starting noise
comes from its own seed, so an image is reproducible whatever batch it is generated in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import EulerDiscreteScheduler, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

from diffaudit.diffusion.parameterization import eps_from_x0, to_x0_eps


@dataclass
class StepInfo:
    """What a sampling step saw and did, for the explainability audit."""

    index: int
    timestep: torch.Tensor
    x_t: torch.Tensor  # the state before the step
    eps_cond: torch.Tensor | None
    eps_uncond: torch.Tensor | None
    x0_pred: torch.Tensor  # the scheduler's own x0-prediction when it exposes one
    prev_sample: torch.Tensor


def guided_output(
    unet: UNet2DModel, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, null_class: int, guidance_scale: float,
    with_uncond: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """CFG output out_u + w (out_c - out_u) in one batched forward; w = 1 is plain conditional.

    At w = 1 the unconditional pass is skipped unless `with_uncond` asks for it (guidance maps
    show where the conditioning acts whatever the scale); the output is then the conditional one.
    """
    tt = t.expand(len(x)) if t.ndim == 0 else t
    if guidance_scale == 1.0 and not with_uncond:
        out = unet(x, tt, class_labels=labels).sample
        return out, out, None
    null = torch.full_like(labels, null_class)
    both = unet(torch.cat([x, x]), torch.cat([tt, tt]), class_labels=torch.cat([labels, null])).sample
    cond, uncond = both.chunk(2)
    if guidance_scale == 1.0:
        return cond, cond, uncond
    return uncond + guidance_scale * (cond - uncond), cond, uncond


def initial_noise(seeds: list[int], shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)


def _alpha_bar_euler(scheduler: EulerDiscreteScheduler) -> torch.Tensor:
    """alpha_bar of the current Euler step: x_in = x / sqrt(sigma^2 + 1) is the VP state with a = 1 / (sigma^2 + 1)."""
    sigma = scheduler.sigmas[scheduler.step_index].double()
    return (1.0 / (sigma**2 + 1.0)).float()


@torch.no_grad()
def sample(
    unet: UNet2DModel,
    scheduler: SchedulerMixin,
    labels: torch.Tensor,
    seeds: list[int],
    steps: int,
    guidance_scale: float,
    null_class: int,
    prediction_type: str,
    on_step: Callable[[StepInfo], None] | None = None,
    progress: bool = False,
    with_uncond: bool = False,
) -> torch.Tensor:
    """Generate one image per label in [-1, 1]; on_step sees every step (for filmstrips and guidance maps)."""
    device = next(unet.parameters()).device
    cfg = unet.config
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    labels = labels.to(device)
    scheduler.set_timesteps(steps, device=device)  # first: Euler's init_noise_sigma depends on it
    x = initial_noise(seeds, shape, device) * scheduler.init_noise_sigma
    # One noise stream per image (not per batch), apart from its starting-noise stream: a stochastic
    # sampler then gives image i the same pixels whatever batch it is drawn in (serving, the study).
    gen = [torch.Generator(device=device).manual_seed(_step_noise_seed(s)) for s in seeds]
    is_euler = isinstance(scheduler, EulerDiscreteScheduler)
    takes_gen = _takes_generator(scheduler)  # once, not per step
    for i, t in enumerate(tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False)):
        x_in = scheduler.scale_model_input(x, t)
        out, cond, uncond = guided_output(unet, x_in, t, labels, null_class, guidance_scale, with_uncond)
        if is_euler:
            # Euler has no x0 clipping: clip here and hand it the epsilon of the clipped x0 (build_sampler
            # configures it for epsilon whatever the model predicts), so its own x0 = x - sigma * eps is clipped.
            a = _alpha_bar_euler(scheduler)
            x0, _ = to_x0_eps(out, x_in, a, prediction_type)
            out = eps_from_x0(x0.clamp(-1, 1), x_in, a)
        step = scheduler.step(out, t, x, generator=gen) if takes_gen else scheduler.step(out, t, x)
        if on_step is not None:
            x0_pred = getattr(step, "pred_original_sample", None)
            if x0_pred is None:
                x0_pred = _x0_of(scheduler, out, x_in, t, prediction_type)
            on_step(StepInfo(i, t, x, cond, uncond, x0_pred, step.prev_sample))
        x = step.prev_sample
    return x.clamp(-1.0, 1.0)


def _step_noise_seed(seed: int) -> int:
    return (int(seed) ^ 0x9E3779B97F4A7C15) & ((1 << 63) - 1)


def _takes_generator(scheduler: SchedulerMixin) -> bool:
    import inspect

    return "generator" in inspect.signature(scheduler.step).parameters


def _x0_of(scheduler: SchedulerMixin, out: torch.Tensor, x_in: torch.Tensor, t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """x0-prediction for schedulers whose step output lacks it (DPM-Solver): same formula, clipped."""
    a = scheduler.alphas_cumprod.to(x_in.device)[int(t)]
    x0, _ = to_x0_eps(out, x_in, a, prediction_type)
    return x0.clamp(-1, 1)


def balanced_labels(num_classes: int, per_class: int) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(per_class)


def sample_seeds(seed: int, n: int) -> list[int]:
    """Per-image seeds derived from the run seed: image i is the same whatever the batch size."""
    return [seed * 1_000_003 + i for i in range(n)]


def generate(
    unet: UNet2DModel, scheduler: SchedulerMixin, labels: torch.Tensor, seeds: list[int], steps: int,
    guidance_scale: float, prediction_type: str, batch_size: int, progress: bool = False,
) -> torch.Tensor:
    """Sample many images in batches (CPU tensors in [-1, 1])."""
    from diffaudit.models.unet import null_class

    out = []
    batches = range(0, len(labels), batch_size)
    for i in tqdm(batches, desc=f"sampling {len(labels)} images", disable=not progress):
        out.append(sample(unet, scheduler, labels[i : i + batch_size], seeds[i : i + batch_size], steps,
                          guidance_scale, null_class(unet), prediction_type).cpu())
    return torch.cat(out)
