"""k-NN manifold metrics in feature space, all from the same balls (a point's distance to its k-th
nearest neighbour in its own set).

- Improved precision and recall (Kynkäänniemi et al. 2019): precision = share of generated points
  inside some real point's ball; recall = share of real points inside some generated point's ball.
- Density and coverage (Naeem et al. 2020), which use only the real balls and so are not inflated by
  generated outliers: density = how many real balls hold a generated point, over k, averaged over
  generated points (about 1 for matching distributions, above 1 where samples crowd real modes);
  coverage = share of real points whose ball holds at least one generated point.
The radii come from an exact k-NN search (faiss, metrics/knn.py); the ball tests compute distances in
blocks of at most 2^24 (metrics/knn.py), so memory stays bounded whatever N, not O(N^2).
"""

from __future__ import annotations

import torch

from diffaudit.metrics.knn import nearest, rows_per_chunk

# The radii are exact float64 distances; the ball tests' `cdist` (a matrix product) agrees with them to
# about 1e-15 relative, not bitwise. A point on a ball's edge (a copy of the real point that sets the
# radius) must count as inside, as `<=` intends: the radii are widened by this much.
EDGE = 1e-9


def knn_radii(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set (exact search,
    metrics/knn.py)."""
    return nearest(feats, feats, k + 1)[0][:, k] * (1 + EDGE)  # +1: the point itself is at distance 0


def coverage_share(
    queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """Per query: 1.0 if it lies inside the ball of any support point, else 0.0."""
    inside = []
    chunk = chunk or rows_per_chunk(len(support))
    for i in range(0, len(queries), chunk):
        d = torch.cdist(queries[i : i + chunk], support)
        inside.append((d <= radii[None, :]).any(dim=1).float())
    return torch.cat(inside)


def balls_holding(
    queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per query: how many support balls hold it, per support point: 1.0 if its ball holds a query)."""
    counts, held = [], torch.zeros(len(support), dtype=torch.bool)
    chunk = chunk or rows_per_chunk(len(support))
    for i in range(0, len(queries), chunk):
        inside = torch.cdist(queries[i : i + chunk], support) <= radii[None, :]
        counts.append(inside.sum(1).double())
        held |= inside.any(0)
    return torch.cat(counts), held.double()


def density_coverage_indicators(
    real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point terms: (real balls holding each fake point / k, real point's ball holds a fake point).

    Their means are density and coverage (Naeem et al. 2020); the real balls are held fixed.
    """
    real, fake = real.double(), fake.double()
    if len(real) <= k:
        raise ValueError(f"density/coverage with k={k} needs more than {k} real points (got {len(real)})")
    counts, covered = balls_holding(fake, real, knn_radii(real, k), chunk)
    return counts / k, covered


def precision_recall_indicators(
    real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int | None = None
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
    in_real = coverage_share(fake, real, knn_radii(real, k), chunk)
    in_fake = coverage_share(real, fake, knn_radii(fake, k), chunk)
    return in_real, in_fake


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int | None = None
) -> tuple[float, float]:
    """(precision, recall) of `fake` against `real` feature sets, k-NN manifolds with k neighbours."""
    in_real, in_fake = precision_recall_indicators(real, fake, k, chunk)
    return float(in_real.double().mean()), float(in_fake.double().mean())
