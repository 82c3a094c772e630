"""Guidance maps: |eps_cond - eps_uncond| per pixel and step, i.e. where and when the label acts.

Classifier-free guidance moves each step by w (eps_cond - eps_uncond); the magnitude of that
difference is the part of the update the conditioning is responsible for.
"""

from __future__ import annotations

import numpy as np
import torch

from diffaudit.audit.explain.trajectory import Trajectory


def guidance_maps(traj: Trajectory) -> torch.Tensor:
    """(S, N, H, W) |eps_cond - eps_uncond| averaged over channels."""
    if traj.guidance is None:
        raise ValueError("no guidance recorded: the sampler ran without classifier-free guidance (scale 1)")
    return traj.guidance.abs().mean(dim=2)


def guidance_profile(traj: Trajectory, band: tuple[float, float]) -> dict[str, np.ndarray]:
    """Mean |eps_cond - eps_uncond| per image and step, summarised over images: mean and quantile band."""
    per_image = guidance_maps(traj).mean(dim=(2, 3)).double().numpy()  # (S, N)
    return {
        "mean": per_image.mean(1),
        "lo": np.quantile(per_image, band[0], axis=1),
        "hi": np.quantile(per_image, band[1], axis=1),
    }


def guidance_summary(traj: Trajectory, band: tuple[float, float]) -> dict:
    """Where along the trajectory the conditioning pushes hardest, and how concentrated it is in space."""
    prof = guidance_profile(traj, band)
    maps = guidance_maps(traj)  # (S, N, H, W)
    flat = maps.flatten(2)
    top = flat.topk(max(1, flat.shape[-1] // 10), dim=-1).values.sum(-1) / flat.sum(-1).clamp_min(1e-12)
    return {
        "peak_step": int(np.argmax(prof["mean"])),
        "peak_fraction": float(np.argmax(prof["mean"]) / max(1, len(prof["mean"]) - 1)),
        "mean_magnitude": float(prof["mean"].mean()),
        # Share of the guidance in the top 10% of pixels (0.1 = spread evenly, 1 = all in a few pixels).
        "top10_pixel_share": float(top.mean()),
    }
