"""Intervals of the quality metrics (95 % by default), each made by the method its statistic needs
(utils/intervals.py explains the methods and why).

- `mean_ci`: per-item values (accuracy hits, manifold memberships): percentile bootstrap of the mean,
  in one vectorised draw.
- `half_sample_ci`: a statistic of whole sets (FID): recomputed on half-samples drawn without
  replacement, giving a bias-corrected estimate and its basic interval.
Intervals are `results.Interval` ({"low", "high", "method"}), so DVC and MLflow show both ends.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from diffaudit.results.intervals import Interval
from diffaudit.utils import intervals

LEVEL = 0.95


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
    lo, hi = intervals.percentile(means.numpy(), level)
    return Interval(low=lo, high=hi, method=intervals.PERCENTILE)


def half_indices(n: int, reps: int, gen: torch.Generator) -> torch.Tensor:
    """(reps, n // 2) indices, each row a half-sample of range(n) drawn without replacement."""
    return torch.rand(reps, n, generator=gen).argsort(1)[:, : n // 2]


def half_sample_ci(
    statistic: Callable[..., float],
    estimate: float,
    *samples: torch.Tensor,
    reps: int,
    seed: int,
    level: float = LEVEL,
) -> tuple[float, Interval] | None:
    """(bias-corrected estimate, its basic interval) of statistic(*samples) = `estimate`, from `reps`
    half-samples of every sample drawn independently without replacement; None when reps is 0."""
    if reps <= 0:
        return None
    gen = torch.Generator().manual_seed(seed)
    picks = [half_indices(len(s), reps, gen) for s in samples]
    values = np.array(
        [statistic(*(s[p[r]] for s, p in zip(samples, picks, strict=True))) for r in range(reps)]
    )
    corrected, (lo, hi) = intervals.half_sample_basic(estimate, values, level)
    return corrected, Interval(low=lo, high=hi, method=intervals.HALF_SAMPLE)
