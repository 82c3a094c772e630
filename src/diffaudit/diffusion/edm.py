"""EDM (Karras et al. 2022): the preconditioned denoiser, its training sigmas and loss, and its scheduler.

The network F is wrapped as D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (the paper's Table 1), so
that F's input and target have unit variance at every sigma. diffusers' EDM schedulers apply the same
c_in, c_noise (as the timestep) and c_out with `prediction_type="epsilon"`: a UNet trained here samples
with them unchanged, in diffaudit's pipeline and in plain diffusers code.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, EDMDPMSolverMultistepScheduler, EDMEulerScheduler, UNet2DModel
from diffusers.models.unets.unet_2d import UNet2DOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from diffaudit.config.schema import DiffusionCfg
from diffaudit.models.export import EDM_SCHEDULER_CLASSES

EDM_SCHEDULERS = (EDMEulerScheduler, EDMDPMSolverMultistepScheduler)
# diffusers' EDM schedulers name EDM's own F-parameterization (c_out > 0) "epsilon".
EDM_PREDICTION_TYPE = "epsilon"


def _col(sigma: torch.Tensor | float, like: torch.Tensor | None = None) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=torch.float32 if like is None else like.dtype)
    if like is not None:
        s = s.to(like.device).reshape(-1, *([1] * (like.ndim - 1)))
    return s


def c_skip(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """sigma_data^2 / (sigma^2 + sigma_data^2): how much of the noisy input D passes through."""
    return sigma_data**2 / (sigma**2 + sigma_data**2)


def c_out(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """sigma sigma_data / sqrt(sigma^2 + sigma_data^2): the scale of F's contribution."""
    return sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()


def c_in(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """1 / sqrt(sigma^2 + sigma_data^2): F's input at unit variance."""
    return 1.0 / (sigma**2 + sigma_data**2).sqrt()


def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """ln(sigma) / 4: the noise level as the UNet's timestep."""
    return sigma.log() / 4.0


def loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2: F's loss unweighted."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def training_sigmas(
    n: int,
    p_mean: float,
    p_std: float,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """n sigmas with ln(sigma) ~ N(p_mean, p_std^2): training effort where the loss can still fall."""
    return (torch.randn(n, generator=generator, device=device) * p_std + p_mean).exp()


def denoise(
    unet: UNet2DModel, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None, sigma_data: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(D(x; sigma), F's raw output) for one sigma per image."""
    s = _col(sigma, x)
    out = unet(x * c_in(s, sigma_data), c_noise(sigma.float()), class_labels=labels).sample
    return c_skip(s, sigma_data) * x + c_out(s, sigma_data) * out, out


def edm_loss(
    unet: UNet2DModel,
    x0: torch.Tensor,
    labels: torch.Tensor,
    cfg: DiffusionCfg,
    generator: torch.Generator | None = None,
    sigmas: torch.Tensor | None = None,
    reduce: bool = True,
) -> torch.Tensor:
    r"""
    EDM's loss lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2, written as the equal unit-weight MSE of F
    against its effective target (x0 - c_skip x) / c_out (eq. 8), in fp32.

    Args:
        unet ([`UNet2DModel`]): the network F.
        x0 (`torch.Tensor`): clean images in [-1, 1].
        labels (`torch.Tensor`): class ids (the null class included).
        cfg ([`DiffusionCfg`]): an `edm` family config (sigma_data, p_mean, p_std).
        generator (`torch.Generator`, *optional*): for the noise and the sigmas (validation is fixed).
        sigmas (`torch.Tensor`, *optional*): one sigma per image instead of log-normal draws.
        reduce (`bool`): the batch mean, else one loss per image.
    """
    n, sd = len(x0), float(cfg.sigma_data)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if sigmas is None:
        sigmas = training_sigmas(n, cfg.p_mean, cfg.p_std, generator=generator, device=x0.device)
    s = _col(sigmas, x0)
    x = x0 + s * noise
    out = unet(x * c_in(s, sd), c_noise(sigmas.float()), class_labels=labels).sample
    target = (x0 - c_skip(s, sd) * x) / c_out(s, sd)
    loss = (out.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    return loss.mean() if reduce else loss


def build_edm_scheduler(cfg: DiffusionCfg) -> EDMEulerScheduler:
    """The scheduler saved with an EDM model: its sigma range, sigma_data and Karras grid (the EDM
    samplers are built from its config, and plain diffusers samples with it)."""
    return EDMEulerScheduler(
        sigma_min=cfg.sigma_min,
        sigma_max=cfg.sigma_max,
        sigma_data=cfg.sigma_data,
        sigma_schedule="karras",
        rho=cfg.rho,
        prediction_type=EDM_PREDICTION_TYPE,
        final_sigmas_type="zero",
    )


def is_edm_scheduler(scheduler: SchedulerMixin | dict) -> bool:
    """Whether a scheduler (or a scheduler config) is one of diffusers' EDM schedulers."""
    if isinstance(scheduler, dict):  # a saved config names its class; a live one's dict may not
        name = scheduler.get("_class_name")
        if name is not None:
            return name in EDM_SCHEDULER_CLASSES
        return "sigma_data" in scheduler and "beta_schedule" not in scheduler
    return isinstance(scheduler, EDM_SCHEDULERS)


def step_sigma(scheduler: SchedulerMixin) -> torch.Tensor:
    """The sigma of an EDM scheduler's current step (after `scale_model_input`, before `step`)."""
    return scheduler.sigmas[scheduler.step_index]


# -- the VP view: where the audit works on a discrete DDPM schedule ------------------------------------------
def vp_alpha_bar(sigma: torch.Tensor | float) -> torch.Tensor:
    """alpha_bar = 1 / (1 + sigma^2): the VP signal level of the EDM state x = x0 + sigma eps (scaled by
    sqrt(alpha_bar), it is the VP state sqrt(a) x0 + sqrt(1 - a) eps)."""
    return 1.0 / (1.0 + torch.as_tensor(sigma, dtype=torch.float64) ** 2)


def vp_sigma(alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """The EDM sigma of a VP signal level: sqrt((1 - a) / a)."""
    a = torch.as_tensor(alpha_bar, dtype=torch.float64)
    return ((1.0 - a) / a).sqrt()


def vp_schedule() -> DDPMScheduler:
    """The discrete grid the membership attacks and the per-timestep loss profile of an EDM model run on:
    the cosine schedule of diffaudit's DDPMs (1000 steps), its model predicting x0 (`VPView`)."""
    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample"
    )


class VPView(torch.nn.Module):
    r"""
    An EDM network seen as a VP x0-predictor on a discrete schedule: (x_t, t) with x_t = sqrt(a_t) x0 +
    sqrt(1 - a_t) eps is the EDM state x_t / sqrt(a_t) at sigma = sqrt((1 - a_t) / a_t), and the output is
    D(x; sigma). Code written for DDPMs (the membership attacks, the timestep profile) then audits an EDM
    model unchanged, with `vp_schedule()` (prediction_type `sample`) as its noise schedule.

    Args:
        unet ([`UNet2DModel`]): the EDM network F.
        alphas_cumprod (`torch.Tensor`): the VP grid's signal levels (`vp_schedule().alphas_cumprod`).
        sigma_data (`float`): the preconditioning's sigma_data.
    """

    def __init__(self, unet: UNet2DModel, alphas_cumprod: torch.Tensor, sigma_data: float) -> None:
        super().__init__()
        self.unet, self.sigma_data = unet, float(sigma_data)
        self.register_buffer("alphas_cumprod", alphas_cumprod.clone().float(), persistent=False)

    @property
    def config(self) -> object:
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(
        self, x_t: torch.Tensor, timestep: torch.Tensor | int, class_labels: torch.Tensor | None = None
    ) -> UNet2DOutput:
        t = torch.as_tensor(timestep, device=x_t.device).long().reshape(-1).expand(len(x_t))
        a = self.alphas_cumprod.to(x_t.device)[t]
        sigma = ((1 - a) / a).sqrt()
        x = x_t / a.sqrt().reshape(-1, *([1] * (x_t.ndim - 1)))
        d, _ = denoise(self.unet, x, sigma, class_labels, self.sigma_data)
        return UNet2DOutput(sample=d)


def epsilon_of(output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """The noise (x - D) / sigma that F's output implies at the EDM state x: the epsilon the explainability
    audit's guidance maps are drawn in."""
    s = _col(sigma, x)
    return ((1 - c_skip(s, sigma_data)) * x - c_out(s, sigma_data) * output) / s
