"""Conversions between what the network predicts (epsilon, v or x0) and (x0, epsilon) at a timestep."""

from __future__ import annotations

import torch


def to_x0_eps(
    output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor | float, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) implied by the network output for x_t = sqrt(a) x0 + sqrt(1 - a) eps."""
    a = torch.as_tensor(alpha_bar, dtype=x_t.dtype, device=x_t.device).reshape(-1, *([1] * (x_t.ndim - 1)))
    sa, s1a = a.sqrt(), (1 - a).sqrt()
    if prediction_type == "epsilon":
        eps = output
        x0 = (x_t - s1a * eps) / sa
    elif prediction_type == "v_prediction":
        x0 = sa * x_t - s1a * output
        eps = sa * output + s1a * x_t
    elif prediction_type == "sample":
        x0 = output
        eps = (x_t - sa * x0) / s1a
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    return x0, eps


def eps_from_x0(x0: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    a = torch.as_tensor(alpha_bar, dtype=x_t.dtype, device=x_t.device).reshape(-1, *([1] * (x_t.ndim - 1)))
    return (x_t - a.sqrt() * x0) / (1 - a).sqrt()


def training_target(
    x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """What the network is trained to predict for the given objective."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        a = alpha_bar.reshape(-1, *([1] * (x0.ndim - 1)))
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}")
