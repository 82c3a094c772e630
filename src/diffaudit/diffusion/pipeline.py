"""Class-conditional sampling with classifier-free guidance, as one diffusers pipeline.

`ClassConditionalPipeline` owns what every sampling call shares: the UNet, the sampler (a diffusers
scheduler) and the training noise schedule the sampler was built from, which fixes the model's
prediction type (the sampler's own config need not say it: Euler is built for epsilon whatever the
model predicts, see schedulers.py). The conditional and unconditional passes share one batched
forward. Each image's starting noise and step noise come from its own seed, so an image is
reproducible whatever batch it is generated in.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DiffusionPipeline, EulerDiscreteScheduler, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm

from diffaudit.config.eval_schema import SamplerCfg
from diffaudit.diffusion.parameterization import eps_from_x0, to_x0_eps
from diffaudit.diffusion.sampling import StepInfo, guided_output, initial_noise
from diffaudit.diffusion.schedulers import SAMPLERS, build_sampler
from diffaudit.models.unet import load_exported, null_class


@dataclass
class ClassConditionalPipelineOutput(BaseOutput):
    """
    Output class for class-conditional sampling.

    Args:
        images (`torch.Tensor`):
            The generated images, `(len(labels), channels, height, width)` float32 in [-1, 1], on the CPU.
        labels (`torch.Tensor`):
            The class each image was conditioned on, `(len(labels),)` on the CPU.
        seeds (`list[int]`):
            The seed each image was drawn from.
    """

    images: torch.Tensor
    labels: torch.Tensor
    seeds: list[int]


class ClassConditionalPipeline(DiffusionPipeline):
    r"""
    Pipeline for class-conditional image generation with classifier-free guidance.

    The scheduler is stateful: one pipeline samples one call at a time. For another sampler (or a
    fresh scheduler) take [`~ClassConditionalPipeline.with_sampler`], which shares the UNet.

    Parameters:
        unet ([`UNet2DModel`]):
            A class-conditional `UNet2DModel` whose class embedding has one row more than there are
            classes: the last row is the null (unconditional) class.
        scheduler ([`SchedulerMixin`]):
            The sampler, one of `diffaudit.diffusion.schedulers.SAMPLERS` as `build_sampler` configures
            it from `noise_scheduler`'s config.
        noise_scheduler ([`DDPMScheduler`]):
            The training noise schedule saved with the model. Its `prediction_type` is the model's,
            whatever the sampler's config says; new samplers are built from its config.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, noise_scheduler: DDPMScheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, noise_scheduler=noise_scheduler)

    @classmethod
    def from_unet(
        cls, unet: UNet2DModel, noise_scheduler: DDPMScheduler, sampler: str
    ) -> ClassConditionalPipeline:
        r"""
        A pipeline over an in-memory UNet with a fresh `sampler` built from its training noise schedule.

        Args:
            unet ([`UNet2DModel`]):
                The class-conditional denoiser (put it in eval mode first).
            noise_scheduler ([`DDPMScheduler`]):
                The noise schedule the UNet was trained with (`schedulers.build_noise_scheduler`).
            sampler (`str`):
                One of `diffaudit.diffusion.schedulers.SAMPLERS`.

        Raises:
            `ValueError`: for a sampler name not in `SAMPLERS` (the message lists the allowed ones).
        """
        return cls(
            unet=unet,
            scheduler=build_sampler(sampler, dict(noise_scheduler.config)),
            noise_scheduler=noise_scheduler,
        )

    @classmethod
    def from_exported(cls, model_dir: str | Path, sampler: str) -> ClassConditionalPipeline:
        r"""
        The exported model (the train stage's `unet/` and `scheduler/`, diffusers format) with a fresh
        `sampler`.

        Args:
            model_dir (`str` or `Path`):
                The exported model folder (`models/diffusion`).
            sampler (`str`):
                One of `diffaudit.diffusion.schedulers.SAMPLERS`.

        Raises:
            `ValueError`: for a sampler name not in `SAMPLERS` (checked before anything is loaded).
            `FileNotFoundError`: when the folder holds no exported UNet.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
        unet, noise_scheduler = load_exported(model_dir)
        return cls.from_unet(unet, noise_scheduler, sampler)

    def with_sampler(self, sampler: str) -> ClassConditionalPipeline:
        r"""
        A pipeline over the same UNet and noise schedule with a fresh `sampler` (the scheduler keeps state
        between steps, so each sampler and each concurrent caller needs its own).

        Args:
            sampler (`str`):
                One of `diffaudit.diffusion.schedulers.SAMPLERS`.

        Raises:
            `ValueError`: for a sampler name not in `SAMPLERS`.
        """
        return type(self).from_unet(self.unet, self.noise_scheduler, sampler)

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts (`epsilon`, `v_prediction` or `sample`): the training schedule's
        objective."""
        return str(self.noise_scheduler.config.prediction_type)

    @property
    def null_class(self) -> int:
        """The class id that means "no condition" (the class embedding's last row)."""
        return null_class(self.unet)

    @property
    def num_classes(self) -> int:
        """The number of real classes (the null class excluded)."""
        return self.null_class

    def sample_as_configured(
        self, settings: SamplerCfg, *, labels: torch.Tensor, seeds: Sequence[int], progress: bool = False
    ) -> ClassConditionalPipelineOutput:
        r"""
        The run's own sampling (the `sampler` config group's steps, guidance scale and batch size).

        Args:
            settings ([`SamplerCfg`]):
                The composed config's `sampler` section (its `name` chose this pipeline's scheduler).
            labels (`torch.Tensor`), seeds (`Sequence[int]`), progress (`bool`):
                As in [`~ClassConditionalPipeline.__call__`].
        """
        return self(
            labels=labels,
            seeds=seeds,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            batch_size=settings.batch_size,
            progress=progress,
        )

    @torch.no_grad()
    def __call__(
        self,
        *,
        labels: torch.Tensor | Sequence[int],
        seeds: Sequence[int],
        num_inference_steps: int,
        guidance_scale: float,
        batch_size: int | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
        with_uncond: bool = False,
        progress: bool = False,
    ) -> ClassConditionalPipelineOutput:
        r"""
        Generate one image per label.

        Args:
            labels (`torch.Tensor` or sequence of `int`):
                The class of each image, in `[0, num_classes)`.
            seeds (sequence of `int`):
                One seed per image: its starting noise and its step noise (stochastic samplers) come
                from it alone, so image i is the same whatever batch it is drawn in.
            num_inference_steps (`int`):
                The number of denoising steps (denoiser evaluations per image and guidance pass).
            guidance_scale (`float`):
                Classifier-free guidance weight w: out_u + w (out_c - out_u). At 1 the output is the
                conditional one and the unconditional pass is skipped (unless `with_uncond`).
            batch_size (`int`, *optional*):
                Images per denoising batch; all of them in one batch when `None`.
            on_step (`Callable[[StepInfo], None]`, *optional*):
                Called after every step of every batch with what the step saw and did (the explainability
                audit records trajectories with it). `StepInfo.index` restarts at 0 in each batch.
            with_uncond (`bool`, *optional*, defaults to `False`):
                Run the unconditional pass at guidance 1 too, so `on_step` sees it (guidance maps).
            progress (`bool`, *optional*, defaults to `False`):
                Show a progress bar over the batches.

        Returns:
            [`ClassConditionalPipelineOutput`]: the images in [-1, 1] (CPU), with their labels and seeds.

        Raises:
            `ValueError`: when labels and seeds differ in length, there are none, or `batch_size` < 1.
        """
        labels = torch.as_tensor(labels)
        seeds = [int(s) for s in seeds]
        if labels.ndim != 1 or len(labels) != len(seeds) or len(seeds) == 0:
            raise ValueError(
                f"need one seed per label and at least one of each; got {tuple(labels.shape)} labels "
                f"and {len(seeds)} seeds"
            )
        if batch_size is None:
            batch_size = len(seeds)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        images = []
        batches = range(0, len(seeds), batch_size)
        for i in tqdm(batches, desc=f"sampling {len(seeds)} images", disable=not progress):
            images.append(
                self._denoise(
                    labels[i : i + batch_size],
                    seeds[i : i + batch_size],
                    num_inference_steps,
                    guidance_scale,
                    on_step,
                    with_uncond,
                ).cpu()
            )
        return ClassConditionalPipelineOutput(images=torch.cat(images), labels=labels.cpu(), seeds=seeds)

    def _denoise(
        self,
        labels: torch.Tensor,
        seeds: list[int],
        steps: int,
        guidance_scale: float,
        on_step: Callable[[StepInfo], None] | None,
        with_uncond: bool,
    ) -> torch.Tensor:
        """One batch, on the UNet's device, from pure noise to images clamped to [-1, 1]."""
        unet, scheduler, prediction_type = self.unet, self.scheduler, self.prediction_type
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
        null = self.null_class
        for i, t in enumerate(scheduler.timesteps):
            x_in = scheduler.scale_model_input(x, t)
            out, cond, uncond = guided_output(unet, x_in, t, labels, null, guidance_scale, with_uncond)
            if is_euler:
                # Euler has no x0 clipping: clip here and hand it the epsilon of the clipped x0 (build_sampler
                # configures it for epsilon whatever the model predicts), so its own x0 = x - sigma * eps is
                # clipped.
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


def _alpha_bar_euler(scheduler: EulerDiscreteScheduler) -> torch.Tensor:
    """alpha_bar of the current Euler step: x_in = x / sqrt(sigma^2 + 1) is the VP state with a = 1 / (sigma^2
    + 1)."""
    sigma = scheduler.sigmas[scheduler.step_index].double()
    return (1.0 / (sigma**2 + 1.0)).float()


def _step_noise_seed(seed: int) -> int:
    return (int(seed) ^ 0x9E3779B97F4A7C15) & ((1 << 63) - 1)


def _takes_generator(scheduler: SchedulerMixin) -> bool:
    return "generator" in inspect.signature(scheduler.step).parameters


def _x0_of(
    scheduler: SchedulerMixin, out: torch.Tensor, x_in: torch.Tensor, t: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """x0-prediction for schedulers whose step output lacks it (DPM-Solver): same formula, clipped."""
    a = scheduler.alphas_cumprod.to(x_in.device)[int(t)]
    x0, _ = to_x0_eps(out, x_in, a, prediction_type)
    return x0.clamp(-1, 1)
