"""Improved precision and recall (Kynkäänniemi et al. 2019): k-NN balls in feature space.

precision = share of generated points inside some real point's k-NN ball; recall = the reverse.
Distances are computed in chunks, so memory stays O(chunk * N) rather than O(N^2).
"""

from __future__ import annotations

import torch


def knn_radii(feats: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    radii = []
    for i in range(0, len(feats), chunk):
        d = torch.cdist(feats[i : i + chunk], feats)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself is at distance 0
    return torch.cat(radii)


def coverage_share(
    queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """Per query: 1.0 if it lies inside the ball of any support point, else 0.0."""
    inside = []
    for i in range(0, len(queries), chunk):
        d = torch.cdist(queries[i : i + chunk], support)
        inside.append((d <= radii[None, :]).any(dim=1).float())
    return torch.cat(inside)


def precision_recall_indicators(
    real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point memberships: (fake point inside the real manifold, real point inside the fake manifold).

    Their means are precision and recall; resampling them gives a bootstrap interval with the manifolds held
    fixed.
    """
    real, fake = real.double(), fake.double()
    if min(len(real), len(fake)) <= k:
        raise ValueError(
            f"precision/recall with k={k} needs more than {k} points in each set "
            f"(got {len(real)} real, {len(fake)} generated)"
        )
    in_real = coverage_share(fake, real, knn_radii(real, k, chunk), chunk)
    in_fake = coverage_share(real, fake, knn_radii(fake, k, chunk), chunk)
    return in_real, in_fake


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1024
) -> tuple[float, float]:
    """(precision, recall) of `fake` against `real` feature sets, k-NN manifolds with k neighbours."""
    in_real, in_fake = precision_recall_indicators(real, fake, k, chunk)
    return float(in_real.double().mean()), float(in_fake.double().mean())
