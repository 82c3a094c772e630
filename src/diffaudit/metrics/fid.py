"""FID and KID through torchmetrics, in any feature space.

The `*_features` functions take features computed once (metrics.features.FeatureCache) and hand them
to torchmetrics through an identity feature module, so a floor or a bootstrap resample costs no
network pass. `fid` / `kid` are the image-level forms: extract with the feature module, then the same.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from diffaudit.metrics.bootstrap import half_indices
from diffaudit.metrics.features import CachedFeatures, extract, single_thread


def _feed(metric: nn.Module, feats: torch.Tensor, real: bool, batch_size: int = 4096) -> None:
    for i in range(0, len(feats), batch_size):
        metric.update(feats[i : i + batch_size], real=real)


def fid_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between two feature sets (N, D), each with at least 2 rows."""
    metric = FrechetInceptionDistance(
        feature=CachedFeatures(real.shape[1]),
        normalize=True,
        input_img_size=(real.shape[1],),
        sync_on_compute=False,  # the features are whole already (gathered from every rank); no all-gather
    )
    with single_thread():
        _feed(metric, real.double(), True)
        _feed(metric, fake.double(), False)
        return max(0.0, float(metric.compute()))


def kid_features(
    real: torch.Tensor, fake: torch.Tensor, subset_size: int, subsets: int = 50, seed: int = 0
) -> tuple[float, float]:
    """Kernel inception distance (mean, std over `subsets` random subsets) between two feature sets."""
    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():
        # torchmetrics warns on every KID that it keeps the features: here they are already in memory
        # (a few thousand rows at most), so there is nothing to act on.
        warnings.filterwarnings("ignore", message=r"Metric `Kernel Inception Distance` will save all")
        metric = KernelInceptionDistance(
            feature=CachedFeatures(real.shape[1]),
            normalize=True,
            subsets=subsets,
            subset_size=size,
            sync_on_compute=False,
        )
    _feed(metric, real.double(), True)
    _feed(metric, fake.double(), False)
    with torch.random.fork_rng(devices=[]), single_thread():
        torch.manual_seed(seed)  # KID draws its subsets from torch's global generator
        mean, std = metric.compute()
    return float(mean), float(std)


def _poly_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KID's kernel (torchmetrics' default): (x.y / d + 1)^3."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _weighted_kernel_sums(
    x: torch.Tensor, y: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor, chunk: int
) -> torch.Tensor:
    """wx[r]^T K(x, y) wy[r] for every row r, with K built a block of rows at a time (never N x N)."""
    total = torch.zeros(len(wx), dtype=torch.float64, device=x.device)
    for i in range(0, len(x), chunk):
        k = _poly_kernel(x[i : i + chunk], y)
        total += ((wx[:, i : i + chunk] @ k) * wy).sum(1)
    return total


def kid_half_samples(
    real: torch.Tensor, fake: torch.Tensor, reps: int, seed: int, chunk: int = 512
) -> torch.Tensor:
    """The unbiased MMD^2 of KID's kernel between half-samples (without replacement, metrics/bootstrap.py
    `half_indices`) of the two sets, for `reps` draws.

    A half-sample is a 0/1 weight vector w, and the MMD^2 of the subsets is exact from w alone: the
    off-diagonal sum is w^T K w - sum_j w_j K_jj. So all replicates come from one blocked pass over each
    kernel, memory O(reps x N) rather than O(N^2).
    """
    real, fake = real.double(), fake.double()
    gen = torch.Generator().manual_seed(seed)

    def weights(n: int) -> torch.Tensor:
        idx = half_indices(n, reps, gen)
        return torch.zeros(reps, n, dtype=torch.float64).scatter_(1, idx, 1.0)

    wr, wg = weights(len(real)).to(real.device), weights(len(fake)).to(fake.device)
    mr, mg = len(real) // 2, len(fake) // 2
    with single_thread():
        diag_r = (wr * _poly_kernel_diag(real)).sum(1)
        diag_g = (wg * _poly_kernel_diag(fake)).sum(1)
        rr = _weighted_kernel_sums(real, real, wr, wr, chunk) - diag_r
        gg = _weighted_kernel_sums(fake, fake, wg, wg, chunk) - diag_g
        rg = _weighted_kernel_sums(real, fake, wr, wg, chunk)
    return rr / (mr * (mr - 1)) + gg / (mg * (mg - 1)) - 2 * rg / (mr * mg)


def _poly_kernel_diag(x: torch.Tensor) -> torch.Tensor:
    return ((x * x).sum(1) / x.shape[1] + 1.0) ** 3


def fid(feature: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between the feature distributions of two image sets."""
    return fid_features(extract(feature, real), extract(feature, fake))


def kid(
    feature: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    subset_size: int,
    subsets: int = 50,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel inception distance (mean, std over random subsets) in the given feature space."""
    return kid_features(extract(feature, real), extract(feature, fake), subset_size, subsets, seed)
