"""Which pixels of the noisy input x_t drive the class the model ends up drawing?

At one sampling step, with the timestep, the label and the guidance held fixed, the map
x_t -> UNet -> x0-prediction (clipped, as the samplers do) -> evaluator class logit is a
deterministic function of x_t. Captum attributes the final class's logit to x_t with Integrated
Gradients (plus its convergence delta) and SmoothGrad; the model-randomization sanity check of
Adebayo et al. (2018) repeats them with a re-initialised UNet: maps that barely change explain the
evaluator or the input, not the diffusion model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
from diffusers import UNet2DModel
from scipy.stats import spearmanr
from torch import nn

from diffaudit.audit.explain.trajectory import Trajectory
from diffaudit.config.explain_schema import ExplainCfg
from diffaudit.diffusion import edm
from diffaudit.diffusion.edm import vp_sigma
from diffaudit.diffusion.parameterization import to_x0_eps
from diffaudit.diffusion.pipeline import ClassConditionalPipeline
from diffaudit.diffusion.sampling import guided_output
from diffaudit.models.evaluator import Evaluator
from diffaudit.models.unet import null_class


class StepClassLogit(nn.Module):
    """f(x_t) = evaluator class logits of the clipped x0-prediction at one fixed sampling step."""

    def __init__(
        self,
        unet: UNet2DModel,
        evaluator: Evaluator,
        timestep: torch.Tensor,
        alpha_bar: float,
        input_scale: float,
        guidance_scale: float,
        prediction_type: str,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        sigma_data: float | None = None,
    ) -> None:
        super().__init__()
        self.unet, self.evaluator, self.decode = unet, evaluator, decode
        self.sigma_data = sigma_data  # an EDM network: x0 = D(x_t; sigma) (diffusion/edm.py)
        self.timestep = timestep
        self.alpha_bar, self.input_scale = float(alpha_bar), float(input_scale)
        self.guidance_scale, self.prediction_type = guidance_scale, prediction_type

    @classmethod
    def at_step(
        cls,
        unet: UNet2DModel,
        evaluator: Evaluator,
        traj: Trajectory,
        step: int,
        guidance_scale: float,
        prediction_type: str,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
        sigma_data: float | None = None,
    ) -> StepClassLogit:
        return cls(
            unet,
            evaluator,
            traj.timesteps[step],
            float(traj.alpha_bar[step]),
            float(traj.input_scale[step]),
            guidance_scale,
            prediction_type,
            decode,
            sigma_data,
        )

    def x0(self, x_t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The x0-prediction of this step as an image, exactly as the sampler forms it: clipped to [-1, 1], or
        a latent model's decoded (`decode`; gradients pass the decoder)."""
        x_in = x_t * self.input_scale
        out, _, _ = guided_output(
            self.unet, x_in, self.timestep, labels, null_class(self.unet), self.guidance_scale
        )
        if self.sigma_data is None:
            x0, _ = to_x0_eps(out, x_in, self.alpha_bar, self.prediction_type)
        else:  # the step's sigma from its VP level a = 1 / (1 + sigma^2); D = c_skip x + c_out F
            sigma = vp_sigma(self.alpha_bar).to(x_t.dtype)
            x0 = edm.c_skip(sigma, self.sigma_data) * x_t + edm.c_out(sigma, self.sigma_data) * out
        return x0.clamp(-1.0, 1.0) if self.decode is None else self.decode(x0)

    def forward(self, x_t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.evaluator(self.x0(x_t, labels))["class"]


@dataclass
class Attributions:
    """Maps for K steps of N images; `target` is the class the evaluator gives the final image."""

    steps: list[int]
    target: torch.Tensor  # (N,)
    ig: torch.Tensor  # (K, N, C, H, W) signed
    ig_delta: torch.Tensor  # (K, N) sum(IG) - (f(x) - f(baseline)), Captum's convergence delta
    f_gap: torch.Tensor  # (K, N) f(x) - f(baseline) of the target logit
    smoothgrad: torch.Tensor  # (K, N, C, H, W) mean |gradient| under input noise
    ig_random: torch.Tensor | None = None  # the same with a re-initialised UNet
    smoothgrad_random: torch.Tensor | None = None


def trajectory_steps(fractions: list[float], num_steps: int) -> list[int]:
    """Step indices for fractions of the trajectory (0 = first, 1 = last), sorted and distinct."""
    return sorted({min(num_steps - 1, round(f * (num_steps - 1))) for f in fractions})


def target_logit(
    f: StepClassLogit, x: torch.Tensor, labels: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    with torch.no_grad():
        return f(x, labels).gather(1, target.view(-1, 1)).squeeze(1)


def _ig(
    f: StepClassLogit, x: torch.Tensor, labels: torch.Tensor, target: torch.Tensor, cfg: ExplainCfg
) -> tuple[torch.Tensor, torch.Tensor]:
    attr, delta = IntegratedGradients(f).attribute(
        x,
        baselines=torch.zeros_like(x),
        target=target,
        additional_forward_args=(labels,),
        n_steps=cfg.ig_steps,
        internal_batch_size=cfg.ig_internal_batch,
        return_convergence_delta=True,
    )
    return attr.detach(), delta.detach()


def _smoothgrad(
    f: StepClassLogit, x: torch.Tensor, labels: torch.Tensor, target: torch.Tensor, cfg: ExplainCfg, seed: int
) -> torch.Tensor:
    torch.manual_seed(seed)  # NoiseTunnel draws its noise from the global generator
    attr = NoiseTunnel(Saliency(f)).attribute(
        x,
        nt_type="smoothgrad",
        nt_samples=cfg.smoothgrad_samples,
        stdevs=cfg.smoothgrad_stdev,
        target=target,
        additional_forward_args=(labels,),
        nt_samples_batch_size=max(1, cfg.ig_internal_batch // len(x)),
    )
    return attr.detach()


def randomized_like(unet: UNet2DModel, seed: int) -> UNet2DModel:
    """The same architecture with fresh (default-initialised) weights."""
    torch.manual_seed(seed)
    return UNet2DModel.from_config(unet.config).eval()


def attribute(
    pipe: ClassConditionalPipeline,
    evaluator: Evaluator,
    traj: Trajectory,
    target: torch.Tensor,
    cfg: ExplainCfg,
    guidance_scale: float,
    seed: int,
) -> Attributions:
    """IG and SmoothGrad of the target class logit w.r.t. x_t at the configured steps (and the randomized
    check)."""
    unet, prediction_type = pipe.unet, pipe.prediction_type
    decode = pipe.decode if pipe.latent else None
    sd = float(pipe.noise_scheduler.config.sigma_data) if pipe.is_edm else None
    steps = trajectory_steps(cfg.attribution_steps, traj.num_steps)
    random_unet = randomized_like(unet, seed) if cfg.randomization_check else None
    ig, delta, gap, sg, ig_r, sg_r = [], [], [], [], [], []
    for k in steps:
        x = traj.x_t[k]
        f = StepClassLogit.at_step(unet, evaluator, traj, k, guidance_scale, prediction_type, decode, sd)
        a, d = _ig(f, x, traj.labels, target, cfg)
        ig.append(a)
        delta.append(d)
        gap.append(
            target_logit(f, x, traj.labels, target)
            - target_logit(f, torch.zeros_like(x), traj.labels, target)
        )
        sg.append(_smoothgrad(f, x, traj.labels, target, cfg, seed + k))
        if random_unet is not None:
            fr = StepClassLogit.at_step(
                random_unet, evaluator, traj, k, guidance_scale, prediction_type, decode, sd
            )
            ig_r.append(_ig(fr, x, traj.labels, target, cfg)[0])
            sg_r.append(_smoothgrad(fr, x, traj.labels, target, cfg, seed + k))
    return Attributions(
        steps=steps,
        target=target,
        ig=torch.stack(ig),
        ig_delta=torch.stack(delta),
        f_gap=torch.stack(gap),
        smoothgrad=torch.stack(sg),
        ig_random=torch.stack(ig_r) if ig_r else None,
        smoothgrad_random=torch.stack(sg_r) if sg_r else None,
    )


def rank_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) maps -> (...) Spearman correlation of their per-pixel magnitudes (channels summed)."""
    ma = a.abs().sum(-3).flatten(-2).reshape(-1, a.shape[-1] * a.shape[-2]).double().numpy()
    mb = b.abs().sum(-3).flatten(-2).reshape(-1, b.shape[-1] * b.shape[-2]).double().numpy()
    rho = [
        spearmanr(x, y).statistic if x.std() > 0 and y.std() > 0 else 0.0 for x, y in zip(ma, mb, strict=True)
    ]
    return torch.tensor(np.nan_to_num(np.asarray(rho, dtype=np.float64)), dtype=torch.float64).reshape(
        a.shape[:-3]
    )


def attribution_summary(attr: Attributions, traj: Trajectory) -> dict:
    """IG convergence delta (absolute and relative to the logit gap), randomization similarity, per step."""
    rel = attr.ig_delta.abs() / attr.f_gap.abs().clamp_min(1e-6)
    out: dict = {
        "steps": attr.steps,
        "timesteps": [int(traj.timesteps[k]) for k in attr.steps],
        "ig_convergence_delta": {
            "max_abs": float(attr.ig_delta.abs().max()),
            "mean_abs": float(attr.ig_delta.abs().mean()),
            "max_relative": float(rel.max()),
            "mean_relative": float(rel.mean()),
        },
        "logit_gap_mean": float(attr.f_gap.mean()),
    }
    if attr.ig_random is not None and attr.smoothgrad_random is not None:
        rho_ig = rank_similarity(attr.ig, attr.ig_random)
        rho_sg = rank_similarity(attr.smoothgrad, attr.smoothgrad_random)
        out["randomization_spearman"] = {
            "integrated_gradients": float(rho_ig.mean()),
            "smoothgrad": float(rho_sg.mean()),
            "per_step": {
                str(k): {
                    "integrated_gradients": float(rho_ig[i].mean()),
                    "smoothgrad": float(rho_sg[i].mean()),
                }
                for i, k in enumerate(attr.steps)
            },
        }
    return out
