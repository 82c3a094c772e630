"""The near-copy (DCR) detector on real digits: it must flag lightly noised training images planted as
generated ones, and flag real held-out images no more often than its calibration promises, measured on
held-out images that did not set the threshold. docs/privacy.md quotes these rates
(`python -m benchmarks.near_copies` prints them for more noise levels and the feature space)."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from diffaudit.audit.privacy import (
    conformal_rank,
    dcr_threshold,
    gallery_figure,
    leave_one_out_flags,
    privacy_report,
)
from diffaudit.data.attributes import add_derived_attributes
from diffaudit.data.digits import load_digits
from diffaudit.data.prepare import stratified_split
from diffaudit.data.store import to_model_tensor
from diffaudit.errors import ResultFileError
from diffaudit.results.base import parse_result
from diffaudit.results.privacy import PrivacyResult, Share
from diffaudit.utils.images import labelled_pairs
from diffaudit.utils.intervals import wilson

PERCENTILE = 1.0  # audit.copy_percentile's default


@pytest.fixture(scope="module")
def splits() -> dict[str, torch.Tensor]:
    """The digits splits the default pipeline prepares (stratified by class and thickness; val 0.1, test
    0.2, seed 42), at 16x16 in [-1, 1]."""
    parts = stratified_split(add_derived_attributes(load_digits(), ["thickness"]), 0.1, 0.2, seed=42)
    return {name: to_model_tensor(ds.images, 16) for name, ds in parts.items()}


def noised(images: torch.Tensor, sigma: float, seed: int = 42) -> torch.Tensor:
    """Training images plus Gaussian noise of std `sigma`, clamped to [-1, 1] as every sampled image is."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images + sigma * noise).clamp(-1, 1)


def pixel_report(gen: torch.Tensor, s: dict[str, torch.Tensor]) -> PrivacyResult:
    report, _ = privacy_report({"pixel": gen}, {"pixel": s["train"]}, {"pixel": s["test"]}, 1 / 3, 16)
    return report


def shares(obj: object) -> list[Share]:
    """Every Share anywhere in a result model."""
    if isinstance(obj, Share):
        return [obj]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in shares(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in shares(v)]
    if hasattr(obj, "model_fields"):
        return [x for name in type(obj).model_fields for x in shares(getattr(obj, name))]
    return []


def test_wilson_is_the_score_interval_and_contains_its_estimate() -> None:
    for k, n in [(0, 1), (0, 30), (1, 30), (3, 360), (15, 30), (29, 30), (30, 30), (7, 1000)]:
        for level in (0.8, 0.95, 0.99):
            lo, hi = wilson(k, n, level)
            z, p = NormalDist().inv_cdf((1 + level) / 2), k / n  # Wilson (1927), by hand
            centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
            ref = ((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n))
            assert (lo, hi) == pytest.approx(ref, abs=1e-9)
            assert lo <= k / n <= hi
    assert wilson(0, 0, 0.95) == (0.0, 1.0)


def test_threshold_is_the_conformal_order_statistic() -> None:
    d = np.arange(1.0, 361.0)[::-1].copy()  # 360 distinct held-out DCRs, 1..360
    assert conformal_rank(360, 1.0) == 3  # floor(0.01 * 361)
    assert dcr_threshold(d, 1.0) == (3.0, 3)  # the 3rd smallest: only 1 and 2 lie below it
    assert conformal_rank(99, 1.0) == 1 and conformal_rank(98, 1.0) == 0
    assert dcr_threshold(d[:98], 1.0) == (0.0, 0)  # too few held-out images for 1 %: nothing is flagged
    assert dcr_threshold(d, 5.0) == (18.0, 18)


def test_leave_one_out_matches_recalibrating_without_each_image() -> None:
    rng = np.random.default_rng(0)
    for n, p in [(50, 5.0), (200, 1.0), (360, 1.0), (30, 10.0), (2, 50.0), (1, 50.0)]:
        d = np.round(rng.gamma(4.0, 1.0, n), 1)  # rounded: ties included
        brute = np.array([d[i] < dcr_threshold(np.delete(d, i), p)[0] for i in range(n)], dtype=bool)
        np.testing.assert_array_equal(leave_one_out_flags(d, p), brute)


def test_exact_copies_are_flagged_fresh_real_images_rarely(splits: dict[str, torch.Tensor]) -> None:
    report = pixel_report(splits["train"], splits)
    near = report.near_copies["pixel"]
    assert near.fraction.value == 1.0 and near.dcr_min == 0.0
    assert near.rank == 3 and near.heldout.n == len(splits["test"]) == 360
    assert report.memorization["pixel"].fraction == 1.0  # d1/d2 stays beside it
    # Real images that neither trained nor set the threshold: the validation split.
    fresh = pixel_report(splits["val"], splits).near_copies["pixel"]
    assert fresh.threshold == near.threshold
    print(
        f"\nfresh real (val split): {fresh.fraction.n_flagged}/{fresh.fraction.n} flagged {fresh.fraction.ci}"
    )
    # At 1 % the expected count is under 2 of 180: the share must be consistent with the nominal rate.
    assert fresh.fraction.ci[0] <= PERCENTILE / 100 and fresh.fraction.value <= 0.03


@pytest.mark.parametrize(("sigma", "min_rate"), [(0.05, 0.99), (0.1, 0.95)])
def test_noised_training_images_are_flagged(
    splits: dict[str, torch.Tensor], sigma: float, min_rate: float
) -> None:
    report = pixel_report(noised(splits["train"], sigma), splits)
    near = report.near_copies["pixel"]
    alarm = near.heldout.false_alarm
    print(
        f"\nsigma {sigma}: near-copy {near.fraction.value:.4f} {near.fraction.ci}, d1/d2 "
        f"{report.memorization['pixel'].fraction:.4f}; held-out false alarm {alarm.n_flagged}/{alarm.n}"
    )
    assert near.fraction.value >= min_rate
    # Real held-out images, each against the threshold the others set: at most 1 % flagged.
    assert alarm.value <= 0.01 and alarm.n == 360 and near.heldout.scheme == "leave-one-out"
    assert near.fraction.value > report.memorization["pixel"].fraction  # the point of the DCR test


def test_every_interval_contains_its_estimate_and_names_its_method(splits: dict[str, torch.Tensor]) -> None:
    gen = torch.cat([noised(splits["train"][:100], 0.1), splits["val"][:100]])
    report, _ = privacy_report(
        {"pixel": gen, "feature": gen.mean(dim=(2, 3))},  # any second space will do for the structure
        {"pixel": splits["train"], "feature": splits["train"].mean(dim=(2, 3))},
        {"pixel": splits["test"], "feature": splits["test"].mean(dim=(2, 3))},
        1 / 3,
        8,
        percentile=5.0,
        level=0.9,
    )
    found = shares(report)
    assert len(found) == 4  # generated and held-out, per space
    for s in found:
        assert s.method == "wilson"
        assert s.ci[0] <= s.value <= s.ci[1]
        assert s.value == s.n_flagged / s.n
    # The file's reader refuses an interval that misses its estimate.
    data = report.dump()
    data["near_copies"]["pixel"]["fraction"]["ci"] = [0.9, 1.0]
    with pytest.raises(ResultFileError, match=r"near_copies\.pixel\.fraction\.ci: .*does not contain"):
        parse_result(data, PrivacyResult, "privacy.json")


def test_gallery_is_ordered_by_dcr_and_labelled(splits: dict[str, torch.Tensor]) -> None:
    gen = torch.cat([splits["val"][:20], noised(splits["train"][:3], 0.05), splits["train"][5:6]])
    report, _ = privacy_report(
        {"pixel": gen}, {"pixel": splits["train"]}, {"pixel": splits["test"]}, 1 / 3, 6
    )
    pairs = report.near_copies["pixel"].closest_pairs
    assert pairs[0].generated == 23 and {p.generated for p in pairs[1:4]} == {20, 21, 22}
    assert pairs[0].dcr == 0.0 and pairs[0].train == 5 and all(p.flagged for p in pairs[:4])
    assert [p.dcr for p in pairs] == sorted(p.dcr for p in pairs)
    fig = gallery_figure(gen, splits["train"], report)
    assert fig.mode == "RGB" and fig.width >= 4 * 2 * 80 and fig.height > 2 * 80
    px = np.asarray(fig)
    red = (px[..., 0] == 200) & (px[..., 1] == 0) & (px[..., 2] == 0)
    assert red.any()  # flagged pairs are framed in red
    empty = labelled_pairs(gen[:0], gen[:0], [], [], ("generated", "nearest train"), ["nothing"])
    assert empty.width > 0 and empty.height > 0


def test_too_few_heldout_images_flag_nothing_and_say_so(splits: dict[str, torch.Tensor]) -> None:
    gen = splits["train"][:10]  # exact copies
    report, _ = privacy_report(
        {"pixel": gen}, {"pixel": splits["train"]}, {"pixel": splits["test"][:50]}, 1 / 3, 4
    )
    near = report.near_copies["pixel"]
    assert (near.rank, near.threshold, near.fraction.n_flagged) == (0, 0.0, 0)  # 1 % of 50 is no image
    assert near.heldout.false_alarm.n_flagged == 0 and not any(p.flagged for p in near.closest_pairs)
    assert report.memorization["pixel"].n_flagged == 10  # d1/d2 still sees them
    assert gallery_figure(gen, splits["train"], report).height > 0
