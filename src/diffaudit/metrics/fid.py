"""FID and KID through torchmetrics, in any feature space.

The `*_features` functions take features computed once (metrics.features.FeatureCache) and hand them
to torchmetrics through an identity feature module, so a floor or a bootstrap resample costs no
network pass. `fid` / `kid` are the image-level forms: extract with the feature module, then the same.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from diffaudit.metrics.features import CachedFeatures, extract, single_thread


def _feed(metric: nn.Module, feats: torch.Tensor, real: bool, batch_size: int = 4096) -> None:
    for i in range(0, len(feats), batch_size):
        metric.update(feats[i : i + batch_size], real=real)


def fid_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between two feature sets (N, D), each with at least 2 rows."""
    metric = FrechetInceptionDistance(feature=CachedFeatures(real.shape[1]), normalize=True,
                                      input_img_size=(real.shape[1],))
    with single_thread():
        _feed(metric, real.double(), True)
        _feed(metric, fake.double(), False)
        return max(0.0, float(metric.compute()))


def kid_features(real: torch.Tensor, fake: torch.Tensor, subset_size: int, subsets: int = 50,
                 seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance (mean, std over `subsets` random subsets) between two feature sets."""
    size = min(subset_size, len(real), len(fake))
    metric = KernelInceptionDistance(feature=CachedFeatures(real.shape[1]), normalize=True, subsets=subsets,
                                     subset_size=size)
    _feed(metric, real.double(), True)
    _feed(metric, fake.double(), False)
    with torch.random.fork_rng(devices=[]), single_thread():
        torch.manual_seed(seed)  # KID draws its subsets from torch's global generator
        mean, std = metric.compute()
    return float(mean), float(std)


def fid(feature: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between the feature distributions of two image sets."""
    return fid_features(extract(feature, real), extract(feature, fake))


def kid(feature: nn.Module, real: torch.Tensor, fake: torch.Tensor, subset_size: int, subsets: int = 50,
        seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance (mean, std over random subsets) in the given feature space."""
    return kid_features(extract(feature, real), extract(feature, fake), subset_size, subsets, seed)
