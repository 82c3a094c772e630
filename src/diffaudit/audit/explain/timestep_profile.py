"""Validation loss by timestep bin: at which noise levels the denoiser is good or poor.

The training loss averages over all timesteps and hides where the model struggles; here the same
objective is measured on held-out images separately per bin of timesteps, with fixed noise, so two
models (or two checkpoints) compare bin by bin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffaudit.diffusion.parameterization import to_x0_eps, training_target
from diffaudit.diffusion.pipeline import ClassConditionalPipeline
from diffaudit.models.unet import predict


def _se(v: torch.Tensor) -> float:
    return float(v.std() / len(v) ** 0.5) if len(v) > 1 else 0.0


@torch.no_grad()
def loss_by_timestep(
    pipe: ClassConditionalPipeline,
    images: torch.Tensor,
    labels: torch.Tensor,
    bins: int,
    max_images: int,
    seed: int,
    batch_size: int = 256,
) -> list[dict[str, float]]:
    """Per bin of [0, T): the objective's MSE and the (clipped) x0-prediction's MSE, mean and standard error.

    The bins cover `pipe`'s training noise schedule; the objective is the model's prediction type. A latent
    model is measured on the latents of the images (`pipe.encode`), so x0_mse is in latent units there.
    """
    unet, schedule = pipe.vp_denoiser()  # an EDM model: on a VP grid, as an x0-predictor (edm.VPView)
    alphas_cumprod, prediction_type = schedule.alphas_cumprod, str(schedule.config.prediction_type)
    gen = torch.Generator().manual_seed(seed)
    n = min(max_images, len(images))
    pick = torch.randperm(len(images), generator=gen)[:n]
    x0_all, y_all = pipe.encode(images[pick]).cpu(), labels[pick]
    clip = not pipe.latent
    total = len(alphas_cumprod)
    edges = torch.linspace(0, total, bins + 1).round().long()
    rows = []
    for b in range(bins):
        lo, hi = int(edges[b]), int(edges[b + 1])
        t = torch.randint(lo, max(hi, lo + 1), (n,), generator=gen)
        noise = torch.randn(x0_all.shape, generator=gen)
        losses, x0_err = [], []
        for i in range(0, n, batch_size):
            x0, y, tt, eps = (
                x0_all[i : i + batch_size],
                y_all[i : i + batch_size],
                t[i : i + batch_size],
                noise[i : i + batch_size],
            )
            a = alphas_cumprod[tt].to(x0.dtype).view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
            out = predict(unet, x_t, tt, y)
            target = training_target(x0, eps, a.flatten(), prediction_type)
            losses.append(F.mse_loss(out.float(), target.float(), reduction="none").mean(dim=(1, 2, 3)))
            pred_x0, _ = to_x0_eps(out, x_t, a.flatten(), prediction_type)
            x0_err.append(
                F.mse_loss(
                    (pred_x0.clamp(-1, 1) if clip else pred_x0).float(), x0.float(), reduction="none"
                ).mean(dim=(1, 2, 3))
            )
        loss, err = torch.cat(losses).double(), torch.cat(x0_err).double()
        rows.append(
            {
                "t_lo": lo,
                "t_hi": hi - 1,
                "t_mid": (lo + hi - 1) / 2,
                "loss": float(loss.mean()),
                "loss_se": _se(loss),
                "x0_mse": float(err.mean()),
                "x0_mse_se": _se(err),
                "n": n,
            }
        )
    return rows
