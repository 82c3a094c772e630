"""Record what the sampler does at every step (x_t, the x0-prediction, the guidance difference).

Everything else in the explainability audit reads these recordings, so the x0-prediction is taken
from the scheduler's own state wherever it keeps one: the audit explains the images the sampler
actually made, not a re-derivation of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from diffusers import DPMSolverMultistepScheduler, EDMDPMSolverMultistepScheduler, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from diffaudit.diffusion.edm import c_in, is_edm_scheduler, vp_alpha_bar
from diffaudit.diffusion.parameterization import to_x0_eps
from diffaudit.diffusion.pipeline import ClassConditionalPipeline
from diffaudit.diffusion.sampling import StepInfo


@dataclass
class Trajectory:
    """Sampling trajectories of N images over S steps (CPU tensors)."""

    labels: torch.Tensor  # (N,) conditioning labels (an unconditional model's: the evaluator's final class)
    seeds: list[int]
    timesteps: torch.Tensor  # (S,)
    alpha_bar: torch.Tensor  # (S,) signal level of each step, for re-running a step exactly
    input_scale: torch.Tensor  # (S,) x_in = input_scale * x_t (1 except for sigma-space samplers)
    x_t: torch.Tensor  # (S, N, C, H, W) the state each step starts from (a latent model's: latents)
    x0: torch.Tensor  # (S, N, C, H, W) the scheduler's x0-prediction at each step, as an image (decoded)
    guidance: torch.Tensor | None  # (S, N, C, H, W) eps_cond - eps_uncond, in epsilon units; None without CFG
    final: torch.Tensor  # (N, C, H, W) the generated images in [-1, 1]
    x_t_image: torch.Tensor  # x_t as an image to look at: x_t itself, or a latent model's decoded latents
    edm: bool = False  # an EDM sampler's: timesteps are c_noise = ln(sigma) / 4, steps are named by sigma

    @property
    def image_size(self) -> int:
        return int(self.final.shape[-1])

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def subset(self, index: torch.Tensor) -> Trajectory:
        """The trajectories of some of the images (all steps)."""
        g = None if self.guidance is None else self.guidance[:, index]
        return Trajectory(
            self.labels[index],
            [self.seeds[int(i)] for i in index],
            self.timesteps,
            self.alpha_bar,
            self.input_scale,
            self.x_t[:, index],
            self.x0[:, index],
            g,
            self.final[index],
            self.x_t_image[:, index],
            self.edm,
        )

    def step_name(self, index: int) -> str:
        """The noise level of a step, as figures label it: `t=` its timestep, an EDM step's `sigma=`."""
        if self.edm:
            a = float(self.alpha_bar[index])
            return f"sigma={((1 - a) / a) ** 0.5:.3g}"
        return f"t={float(self.timesteps[index]):.0f}"

    def with_labels(self, labels: torch.Tensor) -> Trajectory:
        """The same trajectories read as `labels` (an unconditional model's: the evaluator's classes)."""
        return replace(self, labels=labels.cpu())


def step_alpha_bar(scheduler: SchedulerMixin, index: int, timestep: torch.Tensor) -> float:
    """alpha_bar of the step: from the sigma grid for Euler (its timesteps may be fractional) and EDM (the VP
    level 1 / (1 + sigma^2) of x = x0 + sigma eps; its timesteps are c_noise)."""
    if is_edm_scheduler(scheduler):
        return float(vp_alpha_bar(scheduler.sigmas[index]))
    if isinstance(scheduler, EulerDiscreteScheduler):
        sigma = float(scheduler.sigmas[index])
        return 1.0 / (sigma**2 + 1.0)
    return float(scheduler.alphas_cumprod[int(timestep)])


def step_input_scale(scheduler: SchedulerMixin, index: int) -> float:
    """The factor scale_model_input applies (Euler works in sigma space: x_in = x / sqrt(sigma^2 + 1); EDM's
    is c_in = 1 / sqrt(sigma^2 + sigma_data^2))."""
    if is_edm_scheduler(scheduler):
        sigma = torch.as_tensor(float(scheduler.sigmas[index]), dtype=torch.float64)
        return float(c_in(sigma, float(scheduler.config.sigma_data)))
    if isinstance(scheduler, EulerDiscreteScheduler):
        return 1.0 / (float(scheduler.sigmas[index]) ** 2 + 1.0) ** 0.5
    return 1.0


def scheduler_x0(scheduler: SchedulerMixin, info: StepInfo) -> torch.Tensor:
    """The x0-prediction the scheduler itself used for this step.

    DPM-Solver++ keeps it (after its thresholding) as the newest entry of `model_outputs`; the
    others return it as `pred_original_sample`, which the pipeline passes on in StepInfo.
    """
    dpm = (DPMSolverMultistepScheduler, EDMDPMSolverMultistepScheduler)
    if isinstance(scheduler, dpm) and scheduler.config.algorithm_type in (
        "dpmsolver++",
        "sde-dpmsolver++",
    ):
        return scheduler.model_outputs[-1].detach().clone()
    return info.x0_pred.detach().clone()


def epsilon_difference(
    cond: torch.Tensor, uncond: torch.Tensor, alpha_bar: float, prediction_type: str
) -> torch.Tensor:
    """eps_cond - eps_uncond whatever the network predicts (the x_t terms cancel: the maps are linear)."""
    diff = cond - uncond
    _, eps = to_x0_eps(diff, torch.zeros_like(diff), alpha_bar, prediction_type)
    return eps


class _Recorder:
    def __init__(
        self, scheduler: SchedulerMixin, prediction_type: str, decode: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        self.scheduler, self.prediction_type, self.decode = scheduler, prediction_type, decode
        self.timesteps: list[torch.Tensor] = []
        self.alpha_bar: list[float] = []
        self.input_scale: list[float] = []
        self.x_t: list[torch.Tensor] = []
        self.x0: list[torch.Tensor] = []
        self.guidance: list[torch.Tensor] = []

    def __call__(self, info: StepInfo) -> None:
        a = step_alpha_bar(self.scheduler, info.index, info.timestep)
        self.timesteps.append(info.timestep.detach().cpu().reshape(()))
        self.alpha_bar.append(a)
        self.input_scale.append(step_input_scale(self.scheduler, info.index))
        self.x_t.append(info.x_t.detach().cpu().clone())
        self.x0.append(self.decode(scheduler_x0(self.scheduler, info)).cpu())
        if info.eps_cond is not None and info.eps_uncond is not None:
            self.guidance.append(
                epsilon_difference(info.eps_cond, info.eps_uncond, a, self.prediction_type).cpu()
            )


def record_trajectories(
    pipe: ClassConditionalPipeline,
    labels: torch.Tensor,
    seeds: list[int],
    num_inference_steps: int,
    guidance_scale: float,
    batch_size: int,
) -> Trajectory:
    """Sample with `pipe` (its own sampler), in batches, keeping every step of every image."""
    parts: list[_Recorder] = []
    finals = []
    for i in range(0, len(labels), batch_size):
        rec = _Recorder(pipe.scheduler, pipe.prediction_type, pipe.decode)
        finals.append(
            pipe(
                labels=labels[i : i + batch_size],
                seeds=seeds[i : i + batch_size],
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                on_step=rec,
                with_uncond=True,
            ).images
        )
        parts.append(rec)
    first = parts[0]
    has_guidance = all(len(p.guidance) == len(p.x_t) for p in parts)
    x_t = torch.cat([torch.stack(p.x_t) for p in parts], dim=1)
    x_t_image = x_t
    if pipe.latent:  # decoded step by step: what a noisy latent looks like as an image
        with torch.no_grad():
            x_t_image = torch.stack([pipe.decode(s).cpu() for s in x_t])
    return Trajectory(
        labels=labels.cpu(),
        seeds=[int(s) for s in seeds],
        timesteps=torch.stack(first.timesteps),
        alpha_bar=torch.tensor(first.alpha_bar, dtype=torch.float64),
        input_scale=torch.tensor(first.input_scale, dtype=torch.float64),
        x_t=x_t,
        x0=torch.cat([torch.stack(p.x0) for p in parts], dim=1),
        guidance=torch.cat([torch.stack(p.guidance) for p in parts], dim=1) if has_guidance else None,
        final=torch.cat(finals),
        x_t_image=x_t_image,
        edm=is_edm_scheduler(pipe.scheduler),
    )


def explain_seeds(seed: int, num_classes: int, per_class: int, sample_per_class: int) -> list[int]:
    """Seeds for `per_class` images of each class, class-major.

    The first `sample_per_class` of each class are the very seeds the sample stage used
    (sampling.sample_seeds over balanced labels), so a filmstrip ends in an image of samples/; any
    beyond those get fresh seeds past the end of that set.
    """
    base = seed * 1_000_003
    out = []
    for c in range(num_classes):
        for j in range(per_class):
            if j < sample_per_class:
                out.append(base + c * sample_per_class + j)
            else:
                extra = per_class - sample_per_class
                out.append(base + num_classes * sample_per_class + c * extra + (j - sample_per_class))
    return out
