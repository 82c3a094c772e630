"""Schedulers: the training noise schedule and the samplers built from the same config.

Every sampler clips or thresholds the x0-prediction: with epsilon prediction on the cosine schedule
the x0-prediction explodes at high noise otherwise (measured: several times worse FID). A latent
model's samplers do not (`clip=False`): latents are not bounded to [-1, 1], and diffusers' LDMPipeline
does not clip them either.

An EDM model (diffusion.family=edm) saves an `EDMEulerScheduler` config instead of the DDPM schedule and
samples only with the EDM samplers; a DDPM model only with the DDPM ones (`build_sampler` refuses the
mismatch, naming both).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from diffaudit.config.schema import DiffusionCfg
from diffaudit.diffusion.edm import build_edm_scheduler, is_edm_scheduler

DDPM_SAMPLERS = ("ddpm", "ddim", "dpm_solver", "euler")
EDM_SAMPLERS = ("edm_euler", "edm_dpm_solver")
SAMPLERS = DDPM_SAMPLERS + EDM_SAMPLERS


def samplers_for(train_config: dict[str, Any]) -> tuple[str, ...]:
    """The samplers a model trained with this scheduler config can use (its family's)."""
    return EDM_SAMPLERS if is_edm_scheduler(train_config) else DDPM_SAMPLERS


def scheduler_config(model_dir: str | Path) -> dict[str, Any]:
    """An exported model's saved scheduler config (`scheduler/scheduler_config.json`), without loading it."""
    path = Path(model_dir) / "scheduler" / "scheduler_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def build_noise_scheduler(cfg: DiffusionCfg) -> DDPMScheduler | EDMEulerScheduler:
    """The forward (noising) process used in training; its config is saved with the model (an EDM model's:
    its EDM scheduler, diffusion/edm.py)."""
    if cfg.is_edm:
        return build_edm_scheduler(cfg)
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=True,
        clip_sample_range=1.0,
    )


def _dpm_solver_pp(clip: bool) -> dict[str, Any]:
    """DPM-Solver++ (2nd order) as both families run it: x0 thresholded to [-1, 1] when `clip`, the last
    step to sigma 0 in first order."""
    return {
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "thresholding": clip,
        "sample_max_value": 1.0,
        "dynamic_thresholding_ratio": 0.995,
        "final_sigmas_type": "zero",
        "lower_order_final": True,
    }


def build_sampler(name: str, train_config: dict[str, Any], clip: bool = True) -> SchedulerMixin:
    """A sampler scheduler sharing the training schedule (betas, objective); `clip`: clip (or threshold)
    the x0-prediction to [-1, 1] (pixel-space models).

    Raises:
        `ValueError`: for an unknown name, or a sampler of the other family than the model's (an EDM
        sampler for a DDPM-trained model or the reverse), in one line naming both.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    edm_model = is_edm_scheduler(train_config)
    if edm_model != (name in EDM_SAMPLERS):
        model = "an EDM-trained model" if edm_model else "a DDPM-trained model"
        kind = "an EDM sampler" if name in EDM_SAMPLERS else "a DDPM sampler"
        raise ValueError(
            f"sampler {name!r} is {kind} but the model is {model} (scheduler "
            f"{train_config.get('_class_name') or ('EDMEulerScheduler' if edm_model else 'DDPMScheduler')}); "
            f"use one of {', '.join(samplers_for(train_config))}"
        )
    if name == "edm_euler":
        return EDMEulerScheduler.from_config(train_config)  # pipeline.py clips its x0 (pixel space)
    if name == "edm_dpm_solver":
        return EDMDPMSolverMultistepScheduler.from_config(train_config, **_dpm_solver_pp(clip))
    if name == "ddpm":
        return DDPMScheduler.from_config(train_config, clip_sample=clip)
    if name == "ddim":
        return DDIMScheduler.from_config(train_config, clip_sample=clip, set_alpha_to_one=True)
    if name == "dpm_solver":
        return DPMSolverMultistepScheduler.from_config(train_config, **_dpm_solver_pp(clip))
    if name == "euler":
        # Euler has no clipping option of its own: diffusion/pipeline.py clips the x0-prediction and hands
        # Euler the matching epsilon, so Euler is configured for epsilon whatever the model predicts.
        return EulerDiscreteScheduler.from_config(train_config, prediction_type="epsilon")
    raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
