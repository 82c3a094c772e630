"""Class-conditional sampling with classifier-free guidance, as one diffusers pipeline; it also runs the
models diffaudit audits without training them: unconditional UNets, class-conditional ones without a
null class (no guidance), and latent models whose samples its decoder turns into images.

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
from diffusers import (
    DDPMScheduler,
    DiffusionPipeline,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
    ModelMixin,
    UNet2DModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm

from diffaudit.config.eval_schema import SamplerCfg
from diffaudit.diffusion.edm import VPView, epsilon_of, is_edm_scheduler, step_sigma, vp_schedule
from diffaudit.diffusion.parameterization import eps_from_x0, to_x0_eps
from diffaudit.diffusion.sampling import StepInfo, guided_output, initial_noise
from diffaudit.diffusion.schedulers import SAMPLERS, build_sampler
from diffaudit.models.unet import load_model, null_class
from diffaudit.results.applicability import CONDITIONINGS


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
    labels: torch.Tensor  # -1 for an unconditional model (no label conditioned the image)
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
        vae ([`VQModel`] or [`AutoencoderKL`], *optional*):
            The decoder of a latent model: the UNet denoises latents, and `vae.decode(latents /
            scaling_factor)` makes the images (as diffusers' `LDMPipeline` does).
        conditioning (`str`, *optional*, defaults to `"class_cfg"`):
            `class_cfg` (a null class for guidance, as diffaudit trains), `class` (no null class: guidance
            is 1) or `none` (unconditional: labels and guidance are ignored).
    """

    model_cpu_offload_seq = "unet->vae"

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        noise_scheduler: DDPMScheduler,
        vae: ModelMixin | None = None,
        conditioning: str = "class_cfg",
    ) -> None:
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; allowed: {', '.join(CONDITIONINGS)}")
        self.register_modules(unet=unet, scheduler=scheduler, noise_scheduler=noise_scheduler, vae=vae)
        self.conditioning = conditioning

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DModel,
        noise_scheduler: DDPMScheduler,
        sampler: str,
        vae: ModelMixin | None = None,
        conditioning: str = "class_cfg",
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
            scheduler=build_sampler(sampler, dict(noise_scheduler.config), clip=vae is None),
            noise_scheduler=noise_scheduler,
            vae=vae,
            conditioning=conditioning,
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
        m = load_model(model_dir)
        return cls.from_unet(m.unet, m.noise_scheduler, sampler, vae=m.vae, conditioning=m.conditioning)

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
        return type(self).from_unet(
            self.unet, self.noise_scheduler, sampler, vae=self.vae, conditioning=self.conditioning
        )

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts (`epsilon`, `v_prediction` or `sample`): the training schedule's
        objective (an EDM model's `epsilon` is diffusers' name for EDM's F, see diffusion/edm.py)."""
        return str(self.noise_scheduler.config.prediction_type)

    @property
    def is_edm(self) -> bool:
        """Whether the UNet is an EDM network F (sigma-parameterized, preconditioned by its scheduler)."""
        return is_edm_scheduler(self.noise_scheduler)

    def vp_denoiser(self) -> tuple[torch.nn.Module, DDPMScheduler]:
        """The model as a denoiser on a discrete VP schedule, with that schedule: what the membership attacks
        and the timestep profile run on. A DDPM's own UNet and training schedule; an EDM model's network
        through `edm.VPView` on `edm.vp_schedule()` (x0-prediction)."""
        if not self.is_edm:
            return self.unet, self.noise_scheduler
        vp = vp_schedule()
        view = VPView(self.unet, vp.alphas_cumprod, float(self.noise_scheduler.config.sigma_data))
        return view.to(next(self.unet.parameters()).device).eval(), vp

    @property
    def is_conditional(self) -> bool:
        """Whether labels condition the images (False: an unconditional model, labels are ignored)."""
        return self.conditioning != "none"

    @property
    def guides(self) -> bool:
        """Whether classifier-free guidance applies (a null class the model was trained with)."""
        return self.conditioning == "class_cfg"

    def guidance(self, scale: float) -> float:
        """The guidance scale sampling uses: `scale` where guidance applies, else 1 (no guidance)."""
        return float(scale) if self.guides else 1.0

    @property
    def latent(self) -> bool:
        return getattr(self, "vae", None) is not None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the pipeline makes (a latent model's: decoded)."""
        c = self.unet.config
        if not self.latent:
            return (int(c.in_channels), int(c.sample_size), int(c.sample_size))
        v = self.vae.config
        side = int(c.sample_size) * 2 ** (len(v.block_out_channels) - 1)
        return (int(v.out_channels), side, side)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from model-space samples (the identity for a pixel-space model)."""
        if not self.latent:
            return latents
        z = latents.to(next(self.vae.parameters()).device) / self.vae.config.scaling_factor
        return self.vae.decode(z).sample.clamp(-1.0, 1.0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Model-space samples of images in [-1, 1] (training images, for the loss attacks): the
        autoencoder's latents times its scaling factor, the mean for a KL autoencoder."""
        if not self.latent:
            return images
        with torch.no_grad():
            enc = self.vae.encode(images.to(next(self.vae.parameters()).device))
        z = enc.latent_dist.mean if hasattr(enc, "latent_dist") else enc.latents
        return z * self.vae.config.scaling_factor

    @property
    def null_class(self) -> int:
        """The class id that means "no condition" (the class embedding's last row)."""
        return null_class(self.unet)

    @property
    def num_classes(self) -> int:
        """The number of real classes (the null class excluded; 0 for an unconditional model)."""
        if self.conditioning == "class":
            return int(self.unet.config.num_class_embeds)
        return self.null_class if self.is_conditional else 0

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
            guidance_scale=self.guidance(settings.guidance_scale),
            batch_size=settings.batch_size,
            progress=progress,
        )

    @torch.no_grad()
    def __call__(
        self,
        *,
        labels: torch.Tensor | Sequence[int] | None,
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
            labels (`torch.Tensor` or sequence of `int`, or `None`):
                The class of each image, in `[0, num_classes)`; ignored (may be `None`) for an
                unconditional model, whose output labels are -1.
            seeds (sequence of `int`):
                One seed per image: its starting noise and its step noise (stochastic samplers) come
                from it alone, so image i is the same whatever batch it is drawn in.
            num_inference_steps (`int`):
                The number of denoising steps (denoiser evaluations per image and guidance pass).
            guidance_scale (`float`):
                Classifier-free guidance weight w: out_u + w (out_c - out_u). At 1 the output is the
                conditional one and the unconditional pass is skipped (unless `with_uncond`). Only 1 is
                allowed where guidance does not apply ([`~ClassConditionalPipeline.guides`]).
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
        seeds = [int(s) for s in seeds]
        if not self.is_conditional:
            labels, with_uncond = torch.full((len(seeds),), -1, dtype=torch.long), False
        labels = torch.as_tensor(labels)
        if not self.guides and guidance_scale != 1.0:
            raise ValueError(
                f"guidance_scale={guidance_scale}: this model has no null class to guide with; use 1"
            )
        with_uncond = with_uncond and self.guides
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
        labels = labels.to(device) if self.is_conditional else None
        scheduler.set_timesteps(steps, device=device)  # first: Euler's init_noise_sigma depends on it
        x = initial_noise(seeds, shape, device) * scheduler.init_noise_sigma
        # One noise stream per image (not per batch), apart from its starting-noise stream: a stochastic
        # sampler then gives image i the same pixels whatever batch it is drawn in (serving, the study).
        gen = [torch.Generator(device=device).manual_seed(_step_noise_seed(s)) for s in seeds]
        is_euler = isinstance(scheduler, EulerDiscreteScheduler)
        edm = is_edm_scheduler(scheduler)
        clip = not self.latent  # latents are unbounded: clipped only in pixel space
        takes_gen = _takes_generator(scheduler)  # once, not per step
        null = self.null_class
        for i, t in enumerate(scheduler.timesteps):
            x_in = scheduler.scale_model_input(x, t)
            out, cond, uncond = guided_output(unet, x_in, t, labels, null, guidance_scale, with_uncond)
            if edm:
                step, x0 = _edm_step(scheduler, out, t, x, clip)
                if on_step is not None:  # the passes as the noise they imply, as a DDPM's epsilon
                    sigma, sd = scheduler.sigmas[i].to(x.device), float(scheduler.config.sigma_data)
                    cond, uncond = (
                        None if o is None else epsilon_of(o, x, sigma, sd) for o in (cond, uncond)
                    )
                    on_step(StepInfo(i, t, x, cond, uncond, x0, step.prev_sample))
                x = step.prev_sample
                continue
            if is_euler:
                # Euler has no x0 clipping: clip here and hand it the epsilon of the clipped x0 (build_sampler
                # configures it for epsilon whatever the model predicts), so its own x0 = x - sigma * eps is
                # clipped.
                a = _alpha_bar_euler(scheduler)
                x0, _ = to_x0_eps(out, x_in, a, prediction_type)
                out = eps_from_x0(x0.clamp(-1, 1) if clip else x0, x_in, a)
            step = scheduler.step(out, t, x, generator=gen) if takes_gen else scheduler.step(out, t, x)
            if on_step is not None:
                x0_pred = getattr(step, "pred_original_sample", None)
                if x0_pred is None:
                    x0_pred = _x0_of(scheduler, out, x_in, t, prediction_type, clip)
                on_step(StepInfo(i, t, x, cond, uncond, x0_pred, step.prev_sample))
            x = step.prev_sample
        return self.decode(x) if self.latent else x.clamp(-1.0, 1.0)


def _edm_step(
    scheduler: SchedulerMixin, out: torch.Tensor, t: torch.Tensor, x: torch.Tensor, clip: bool
) -> tuple[BaseOutput, torch.Tensor]:
    """One EDM scheduler step and its x0 = D(x; sigma) = c_skip x + c_out F (the scheduler's own
    preconditioning), clipped in pixel space: Euler steps from the clipped x0, DPM-Solver++ thresholds its
    own."""
    x0 = scheduler.precondition_outputs(x, out, step_sigma(scheduler))  # before step() moves the index
    x0 = x0.clamp(-1, 1) if clip else x0
    if isinstance(scheduler, EDMEulerScheduler):
        return scheduler.step(out, t, x, pred_original_sample=x0), x0
    return scheduler.step(out, t, x), x0


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
    scheduler: SchedulerMixin,
    out: torch.Tensor,
    x_in: torch.Tensor,
    t: torch.Tensor,
    prediction_type: str,
    clip: bool,
) -> torch.Tensor:
    """x0-prediction for schedulers whose step output lacks it (DPM-Solver): same formula, clipped in pixel
    space."""
    a = scheduler.alphas_cumprod.to(x_in.device)[int(t)]
    x0, _ = to_x0_eps(out, x_in, a, prediction_type)
    return x0.clamp(-1, 1) if clip else x0
