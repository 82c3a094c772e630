"""Percentile bootstrap intervals (95 % by default) for the quality metrics.

Two forms: `mean_ci` resamples per-item values (accuracy hits, manifold memberships) in one
vectorised draw; `bootstrap_ci` resamples whole sets and recomputes a statistic (FID, KID).
Intervals are `results.Interval`, written as {"low": ..., "high": ...} so DVC and MLflow show both ends.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffaudit.results.intervals import Interval

LEVEL = 0.95


def interval(values: torch.Tensor, level: float = LEVEL) -> Interval:
    lo, hi = torch.quantile(
        values.double(), torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    )
    return Interval(low=float(lo), high=float(hi))


def mean_ci(values: torch.Tensor, reps: int, seed: int, level: float = LEVEL) -> Interval | None:
    """Interval of the mean of per-item values; None when reps is 0 or there is nothing to resample."""
    if reps <= 0 or len(values) == 0:
        return None
    gen = torch.Generator().manual_seed(seed)
    v = values.double().flatten()
    means = (
        torch.stack([v[torch.randint(len(v), (len(v),), generator=gen)].mean() for _ in range(reps)])
        if len(v) * reps > 50_000_000
        else v[torch.randint(len(v), (reps, len(v)), generator=gen)].mean(1)
    )
    return interval(means, level)


def bootstrap_ci(
    statistic: Callable[..., float], *samples: torch.Tensor, reps: int, seed: int, level: float = LEVEL
) -> Interval | None:
    """Interval of statistic(*samples) with every sample resampled (with replacement) independently."""
    if reps <= 0:
        return None
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(reps):
        values.append(statistic(*(s[torch.randint(len(s), (len(s),), generator=gen)] for s in samples)))
    return interval(torch.tensor(values, dtype=torch.float64), level)
