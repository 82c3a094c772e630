"""Coverage against known truth: over 200 simulated data sets each, the nominal 95 % interval of FID (in
a Gaussian feature space with a known Fréchet distance) and of the fairness discrepancy FD (Bernoulli /
categorical groups with a known FD) must hold the truth in 90 % to 99 % of them, and every interval must
hold the estimate reported with it. The plain percentile bootstrap these replace fails both: the last
test shows it on the same simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffaudit.audit.fairness import confusion_counts, pooled_shares, representation
from diffaudit.metrics.bootstrap import half_sample_ci
from diffaudit.utils import intervals

REPS = 200  # simulated data sets per case
LEVEL = 0.95


def frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance of Gaussians fitted to two sets (metrics/fid.py's formula; torchmetrics' own
    implementation is checked against pytorch-fid elsewhere; this one is fast enough for 40k calls)."""
    a, b = a.double().numpy(), b.double().numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0.0, None)).sum()
    return max(0.0, float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * root))


def true_frechet(mu: np.ndarray, sd1: np.ndarray, sd2: np.ndarray) -> float:
    """The exact distance of N(0, diag sd1^2) and N(mu, diag sd2^2)."""
    return float((mu**2).sum() + ((sd1 - sd2) ** 2).sum())


@pytest.mark.parametrize("shift", [0.5, 0.2], ids=["clear", "near_zero"])
def test_fid_interval_covers_the_true_frechet_distance(shift: float) -> None:
    d, n = 8, 360  # the default run compares 360 images per side
    sd1 = np.linspace(0.2, 1.5, d)
    sd2, mu = sd1 * 1.1, np.eye(d)[0] * shift
    truth = true_frechet(mu, sd1, sd2)
    gen = torch.Generator().manual_seed(0)
    covered, plug_ins, corrected = 0, [], []
    for r in range(REPS):
        a = torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.from_numpy(sd1)
        b = torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.from_numpy(sd2) + torch.from_numpy(
            mu
        )
        plug_in = frechet(a, b)
        out = half_sample_ci(frechet, plug_in, a, b, reps=100, seed=r)
        assert out is not None
        value, ci = out
        assert ci.method == intervals.HALF_SAMPLE and ci.low <= value <= ci.high
        covered += ci.low <= truth <= ci.high
        plug_ins.append(plug_in)
        corrected.append(value)
    coverage = covered / REPS
    assert 0.90 <= coverage <= 0.99, f"coverage {coverage:.3f} of the true FD {truth:.4f}"
    # The plug-in is biased upward; the correction removes most of it.
    assert abs(np.mean(corrected) - truth) < 0.5 * (np.mean(plug_ins) - truth)


def _discrepancy_coverage(p_true: np.ndarray, n: int) -> tuple[float, list]:
    """Coverage of the FD interval over REPS generated sets of n images whose groups are drawn from
    `p_true`, read by a perfect evaluator (so raw and corrected agree), against a uniform reference."""
    k = len(p_true)
    ref = np.full(k, 1.0 / k)
    truth = float(np.sqrt(((p_true - ref) ** 2).sum()))
    rng = np.random.default_rng(1)
    perfect = confusion_counts(np.repeat(np.arange(k), 200), np.repeat(np.arange(k), 200), k)
    covered, stats = 0, []
    for _ in range(REPS):
        pred = rng.choice(k, size=n, p=p_true)
        rep = representation(
            pooled_shares(pred, perfect, ref, 400, rng), ref, [str(g) for g in range(k)], LEVEL
        )
        stat = rep["raw"]["fd_l2"]
        assert stat["method"] == intervals.INVERSION and stat["ci"][0] <= stat["value"] <= stat["ci"][1]
        covered += stat["ci"][0] <= truth <= stat["ci"][1]
        stats.append(stat)
    return covered / REPS, stats


@pytest.mark.parametrize(
    ("p_true", "n"),
    [
        ([0.5, 0.5], 1000),  # no skew: the estimate sits on the boundary at zero
        ([0.52, 0.48], 1000),  # a skew about the size of the noise
        ([0.6, 0.4], 1000),  # a clear skew
        ([0.1] * 10, 1000),  # ten balanced classes (the class head)
        ([0.13, 0.07] + [0.1] * 8, 1000),  # ten classes, two of them off
        ([0.4, 0.35, 0.25], 100),  # few images
    ],
    ids=["k2_fair", "k2_small", "k2_clear", "k10_fair", "k10_small", "k3_n100"],
)
def test_fairness_discrepancy_interval_covers_the_true_fd(p_true: list[float], n: int) -> None:
    coverage, stats = _discrepancy_coverage(np.asarray(p_true), n)
    assert 0.90 <= coverage <= 0.99, f"coverage {coverage:.3f}"
    if len(set(p_true)) == 1:  # at a true FD of 0 the plug-in is biased upward and the estimate much less
        assert np.mean([s["value"] for s in stats]) < 0.8 * np.mean([s["plug_in"] for s in stats])


def test_the_old_percentile_intervals_fail_the_same_simulation() -> None:
    """What the methods replace: the percentile bootstrap of the plug-in FD excludes its own estimate
    and misses a true FD of zero almost always (every resample lies farther from the reference)."""
    k, n = 10, 1000
    ref = np.full(k, 1.0 / k)
    rng = np.random.default_rng(2)
    missed = excluded = 0
    for _ in range(REPS):
        p_hat = rng.multinomial(n, ref) / n
        boots = np.sqrt(((rng.multinomial(n, p_hat, size=500) / n - ref) ** 2).sum(1))
        lo, hi = intervals.percentile(boots, LEVEL)
        missed += not lo <= 0.0 <= hi
        excluded += not lo <= float(np.sqrt(((p_hat - ref) ** 2).sum())) <= hi
    assert missed / REPS > 0.9 and excluded / REPS > 0.03


def test_an_estimate_closer_than_the_noise_gets_zero_up_to_the_noise_bound() -> None:
    """Shares fixed by the design (ten classes drawn 100 times each) but resampled as if free: the
    observed distance is smaller than nearly every resample's, even at a truth of 0; the interval is
    then [0, the noise's 95th percentile], never the degenerate [0, 0]."""
    ref = np.full(10, 0.1)
    point = ref + np.array([0.002, -0.002] + [0.0] * 8)
    rng = np.random.default_rng(3)
    boots = rng.multinomial(1000, point, size=500) / 1000

    def fd(v: np.ndarray) -> np.ndarray:
        return np.sqrt(((v - ref) ** 2).sum(-1))

    value, (lo, hi) = intervals.inversion(fd, point, ref, boots - point, LEVEL)
    assert value == lo == 0.0 and hi == pytest.approx(np.quantile(fd(ref + boots - point), 0.975))
    assert hi > 0.02


@pytest.mark.parametrize(
    ("cells", "far"),
    [(10, 0.0), (10, 1.5), (10, 3.0), (20, 2.5), (20, 6.0), (2, 1.0), (2, 3.0)],
    ids=["none_far", "one_near", "one_clear", "20_cells", "20_one_far_out", "two_near", "two_clear"],
)
def test_worst_cell_and_worst_gap_intervals_cover_the_truth(cells: int, far: float) -> None:
    """The worst bias-amplification cell (max |x_i|) and the worst-group gap (max - min) of noisy cells
    with unit noise, one of them `far` noise units out: the intervals of audit/bias.py and
    audit/per_group.py cover the true maximum and the true range in 90-99 %."""
    rng = np.random.default_rng(4)
    truth = np.zeros(cells)
    truth[0] = far
    worst = gap = 0
    for _ in range(REPS):
        x, dev = truth + rng.normal(size=cells), rng.normal(size=(400, cells))
        v, (lo, hi) = intervals.worst_coordinate(x, dev, LEVEL)
        assert lo <= v <= hi
        worst += lo <= far <= hi
        v, (lo, hi) = intervals.range_of(x, dev, LEVEL)
        assert lo <= v <= hi
        gap += lo <= far <= hi  # the range of (far, 0, ..., 0) is far
    assert 0.90 <= worst / REPS <= 0.99, f"worst cell: {worst / REPS:.3f}"
    assert 0.90 <= gap / REPS <= 0.99, f"gap: {gap / REPS:.3f}"
