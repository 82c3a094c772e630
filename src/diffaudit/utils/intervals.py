"""Interval methods, one per kind of statistic; the result files name the method beside each interval.

Every interval contains the estimate reported with it (by construction for all but the percentile
bootstrap, where it follows from the bootstrap's centre; results/intervals.py refuses a file that breaks
it), and tests/test_interval_coverage.py measures coverage against known truth:

- `percentile`: the percentile bootstrap, for means of per-image values (accuracies, shares, k-NN
  memberships, per-cell bias amplification, a membership attack's AUC). A mean's bootstrap is centred on
  the mean, so the plain percentile interval is fine and contains it. `percentile_widened`: the rare
  such interval of error-corrected shares that fell on one side of its estimate, stretched to it.
- `half_sample`: FID and the full-set KID. Resampling with replacement duplicates images, and a
  duplicated image biases both statistics upward (the old FID interval lay above its estimate). So the
  sets are subsampled to n/2 *without* replacement: a half-sample varies about the full-sample value as
  the full sample varies about the truth (the finite-population factor 1 - m/n is 1/2), and its bias at
  n/2 is twice the bias at n. Hence a bias-corrected estimate 2*theta - median(theta*), the two-point
  form of Chong & Forsyth's (2020) extrapolation of FID to infinite n, and the basic interval
  [2*theta - q_hi, 2*theta - q_lo] around it.
- `order_statistic`: the true-positive rate of a membership attack at 1 % false positives
  (audit/membership.py `tpr_interval`).
- `wilson`: the Wilson score interval of a share of flagged images (near-copies, false alarms).
- `inversion`: distances of an estimated vector from a reference (the fairness discrepancy FD, TV, KL,
  the worst cell of bias amplification, the worst-group gap). Such a distance is biased upward and sits
  on a boundary at zero, where no bootstrap interval of the plug-in covers (at a true distance of 0
  every resample is further from the reference than the estimate). The interval inverts a test instead:
  a true vector on the ray from the reference through the estimate, at scale s, is kept when the
  estimate's distance is not in the tails of the distance of (truth + bootstrap deviation). The
  estimate reported with it is the median-unbiased point of the same family; the plug-in is reported
  beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

Method = Literal["percentile", "percentile_widened", "half_sample", "inversion", "wilson", "order_statistic"]
PERCENTILE: Method = "percentile"
# A percentile interval stretched to its estimate: a linear statistic of error-corrected shares, whose
# clipping at 0 can put every replicate on one side of the estimate (audit/bias.py).
PERCENTILE_WIDENED: Method = "percentile_widened"
HALF_SAMPLE: Method = "half_sample"
INVERSION: Method = "inversion"
# Distribution-free bounds of a TPR at a fixed FPR: order statistics of the negatives' quantile and
# Clopper-Pearson on the positives (audit/membership.py).
ORDER_STATISTIC: Method = "order_statistic"
WILSON: Method = "wilson"  # the Wilson score interval of a binomial share (flagged images)

_NAN2 = (float("nan"), float("nan"))


def _tails(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return (1.0 - level) / 2.0


def percentile(replicates: np.ndarray, level: float) -> tuple[float, float]:
    """[low, high] percentile interval of bootstrap replicates (NaN ends without any)."""
    r = np.asarray(replicates, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    if r.size == 0:
        return _NAN2
    a = _tails(level)
    lo, hi = np.quantile(r, [a, 1.0 - a])
    return float(lo), float(hi)


def half_sample_basic(
    estimate: float, replicates: np.ndarray, level: float, lower_bound: float | None = 0.0
) -> tuple[float, tuple[float, float]]:
    """Bias-corrected estimate and basic interval from half-sample replicates (see the module doc).

    `lower_bound` clips all three (a distance is never negative); clipping is monotone, so the estimate
    stays inside its interval.
    """
    r = np.asarray(replicates, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    if r.size == 0 or not np.isfinite(estimate):
        return float("nan"), _NAN2
    a = _tails(level)
    q_lo, med, q_hi = np.quantile(r, [a, 0.5, 1.0 - a])
    out = np.array([2 * estimate - med, 2 * estimate - q_hi, 2 * estimate - q_lo])
    if lower_bound is not None:
        out = np.maximum(out, lower_bound)
    return float(out[0]), (float(out[1]), float(out[2]))


def centred(estimate: float, replicates: np.ndarray, level: float) -> tuple[float, float]:
    """The spread of half-sample replicates about their median, placed around an unbiased `estimate`
    computed otherwise (KID: the subset mean, while the replicates are of the full-set MMD^2)."""
    r = np.asarray(replicates, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    if r.size == 0 or not np.isfinite(estimate):
        return _NAN2
    a = _tails(level)
    q_lo, med, q_hi = np.quantile(r, [a, 0.5, 1.0 - a])
    return float(estimate - (med - q_lo)), float(estimate + (q_hi - med))


def inversion(
    distance: Callable[[np.ndarray], np.ndarray],
    point: np.ndarray,
    center: np.ndarray,
    deviations: np.ndarray,
    level: float,
    s_max: float | None = None,
) -> tuple[float, tuple[float, float]]:
    """Median-unbiased estimate and test-inversion interval of distance(point) (see the module doc).

    `distance` maps vectors (..., k) to distances (any leading shape), convex with its minimum 0 at
    `center`; `deviations` (B, k) are bootstrap replicates minus `point`. The scale s of the truth
    center + s (point - center) is kept when P(distance(truth + deviation) <= distance(point)) lies in
    [a, 1 - a]; that probability falls as s grows, so the kept scales form an interval, whose ends (and
    the estimate's 0.5 point) are found by bisection. `s_max` bounds the truths searched (shares: where
    the ray leaves the simplex); None: as far as the probability is above a.
    """
    point, center = np.asarray(point, dtype=np.float64), np.asarray(center, dtype=np.float64)
    dev = np.asarray(deviations, dtype=np.float64).reshape(-1, point.size)
    dev = dev[np.isfinite(dev).all(1)]
    t = float(distance(point[None])[0])
    if dev.shape[0] == 0 or not np.isfinite(t):
        return t, _NAN2
    a = _tails(level)
    direction = (point - center).reshape(point.shape)

    def noise_only() -> tuple[float, tuple[float, float]]:
        """Zero, up to the one-sided upper bound of the distance that noise alone produces."""
        return 0.0, (0.0, float(np.quantile(distance(center + dev), 1.0 - a)))

    if t == 0.0:  # no direction to search along
        return noise_only()

    def below(scales: np.ndarray) -> np.ndarray:
        truths = center + np.asarray(scales, dtype=np.float64)[:, None] * direction  # (S, k)
        return np.mean(distance(truths[:, None, :] + dev[None]) <= t, axis=1)

    top = s_max if s_max is not None else 2.0
    if s_max is None:
        while below(np.array([top]))[0] >= a and top < 1e6:
            top *= 2.0
    grid = np.linspace(0.0, top, 65)
    f = np.minimum.accumulate(below(grid))  # a coarse, monotone bracket for the bisections
    if f[0] < a:
        # Closer to the reference than noise about it allows even at a true distance of 0 (the
        # resampling is noisier than the design, e.g. classes drawn in fixed numbers): no scale is kept
        # by the test, and the data are read as no evidence of any distance.
        return noise_only()

    def first_scale(hit: Callable[[np.ndarray], np.ndarray]) -> float:
        """The smallest scale whose probability hits (`hit`), to 1e-9 of the range; `top` if none."""
        hits = hit(f)
        if not hits.any():
            return float(top)
        i = int(np.argmax(hits))
        if i == 0:
            return 0.0
        lo, hi = grid[i - 1], grid[i]
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if hit(below(np.array([mid])))[0] else (mid, hi)
        return float(hi)

    s_lo = first_scale(lambda p: p <= 1.0 - a)
    s_mid = max(first_scale(lambda p: p <= 0.5), s_lo)
    s_hi = max(first_scale(lambda p: p < a), s_mid)

    def at(s: float) -> float:
        return float(distance((center + s * direction)[None])[0])

    return at(s_mid), (at(s_lo), at(s_hi))


def _widen(
    inverted: tuple[float, tuple[float, float]], lower: float, upper: float
) -> tuple[float, tuple[float, float]]:
    value, (lo, hi) = inverted
    return value, (min(lo, max(lower, 0.0)), max(hi, upper))


def worst_coordinate(
    point: np.ndarray, deviations: np.ndarray, level: float
) -> tuple[float, tuple[float, float]]:
    """max_i |x_i| (the worst bias-amplification cell): the inversion, widened to per-coordinate bounds.

    Along the estimate's ray alone the upper end under-covers when the observed maximum sits in a noise
    cell rather than the true worst one (measured coverage 0.75 to 0.87 between "all equal" and "one cell
    far out"). The upper end is raised to the largest per-coordinate bound of |x_i| (it covers the truly
    worst cell with 97.5 %), and the lower end lowered to the bound of |x_a| for the observed worst cell a
    (the truth is at least |x_a|'s): 0.95 to 0.99 (tests/test_interval_coverage.py)."""
    point = np.asarray(point, dtype=np.float64)
    dev = np.asarray(deviations, dtype=np.float64).reshape(-1, point.size)
    inverted = inversion(lambda v: np.abs(v).max(-1), point, np.zeros_like(point), dev, level)
    if not np.isfinite(inverted[1][1]):
        return inverted
    a = _tails(level)
    lo, hi = np.quantile(point + dev, [a, 1.0 - a], axis=0)
    w = int(np.argmax(np.abs(point)))
    lower = 0.0 if lo[w] <= 0.0 <= hi[w] else min(abs(lo[w]), abs(hi[w]))
    return _widen(inverted, lower, float(np.maximum(np.abs(lo), np.abs(hi)).max()))


def range_of(point: np.ndarray, deviations: np.ndarray, level: float) -> tuple[float, tuple[float, float]]:
    """max_i x_i - min_i x_i (the worst-group gap): the inversion toward equal groups; from three groups
    on widened as in `worst_coordinate`: up to (largest per-group upper bound) - (smallest per-group lower
    bound), down to (lower bound of the observed top group) - (upper bound of the observed bottom one)."""
    point = np.asarray(point, dtype=np.float64)
    dev = np.asarray(deviations, dtype=np.float64).reshape(-1, point.size)
    inverted = inversion(
        lambda v: v.max(-1) - v.min(-1), point, np.full_like(point, point.mean()), dev, level
    )
    if not np.isfinite(inverted[1][1]) or point.size <= 2:
        return inverted  # two groups: the gap is one difference, on the ray itself (no noise cell to mislead)
    a = _tails(level)
    lo, hi = np.quantile(point + dev, [a, 1.0 - a], axis=0)
    top, bottom = int(np.argmax(point)), int(np.argmin(point))
    return _widen(inverted, float(lo[top] - hi[bottom]), float(hi.max() - lo.min()))


def wilson(k: int, n: int, level: float) -> tuple[float, float]:
    """Wilson score interval of the share k/n (scipy's); it always contains k/n ([0, 1] at n = 0)."""
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest  # scipy is slow to import; only the privacy audit needs it

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return min(float(ci.low), k / n), max(float(ci.high), k / n)


def contains(estimate: float | None, low: float, high: float, tol: float = 1e-9) -> bool:
    """Whether [low, high] holds the estimate (NaN anywhere: nothing to check, so True)."""
    if estimate is None or not all(np.isfinite([estimate, low, high])):
        return True
    return low - tol <= estimate <= high + tol
