"""FID and KID through torchmetrics, with a custom feature module and the real-vs-real floor."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance


def _feed(metric: nn.Module, images: torch.Tensor, real: bool, batch_size: int = 512) -> None:
    for i in range(0, len(images), batch_size):
        metric.update(images[i : i + batch_size], real=real)


def fid(feature: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between the feature distributions of two image sets."""
    metric = FrechetInceptionDistance(feature=feature, normalize=True, input_img_size=tuple(real.shape[1:]))
    _feed(metric, real, True)
    _feed(metric, fake, False)
    return float(metric.compute())


def kid(feature: nn.Module, real: torch.Tensor, fake: torch.Tensor, subset_size: int, subsets: int = 50,
        seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance (mean, std over random subsets) in the given feature space."""
    size = min(subset_size, len(real), len(fake))
    torch.manual_seed(seed)  # KID draws its subsets from torch's global generator
    metric = KernelInceptionDistance(feature=feature, normalize=True, subsets=subsets, subset_size=size)
    _feed(metric, real, True)
    _feed(metric, fake, False)
    mean, std = metric.compute()
    return float(mean), float(std)
