"""metrics/privacy.json (audit/privacy.py `privacy_report`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import model_validator

from diffaudit.results.base import FieldError, ResultFile, ResultModel
from diffaudit.results.intervals import Estimate
from diffaudit.results.membership import MembershipResult


class TestFloor(ResultModel):
    """The same test on real held-out images: the detector's false-alarm floor."""

    fraction: float
    n: int
    ratio_min: float


class ClosestPair(ResultModel):
    generated: int
    train: int
    ratio: float


class SpaceMemorization(ResultModel):
    fraction: float
    n_flagged: int
    n: int
    ratio_min: float
    ratio_median: float
    # Quantile (as written, "0.01", "0.05", "0.25") -> d1/d2; empty when nothing was compared.
    ratio_quantiles: dict[str, float]
    real_test_floor: TestFloor
    closest_pairs: list[ClosestPair]


class Share(Estimate):
    """A share of images flagged: `value` = n_flagged / n, inside its interval `ci`, which `method`
    names ("wilson": the Wilson score interval of a binomial share, at audit.ci_level)."""

    n_flagged: int
    n: int

    @model_validator(mode="after")
    def _consistent(self) -> Share:
        if not 0 <= self.n_flagged <= self.n:
            raise FieldError("n_flagged", f"{self.n_flagged} flagged of n={self.n}")
        return self


class HeldoutCalibration(ResultModel):
    """The real held-out images (the test split) that set the threshold, and their own false-alarm rate:
    each one's DCR against the threshold set by the others (`scheme`: "leave-one-out")."""

    n: int
    dcr_min: float
    dcr_median: float
    scheme: str
    false_alarm: Share


class NearCopyPair(ResultModel):
    generated: int
    train: int  # the nearest training image
    dcr: float  # distance to it
    ratio: float  # d1/d2 of the same generated image
    flagged: bool  # dcr < threshold


class SpaceNearCopies(ResultModel):
    """DCR test in one space: a generated image is a near-copy when its distance to the closest training
    image is below the `rank`-th smallest of the held-out images' distances (`percentile` %)."""

    percentile: float  # audit.copy_percentile
    rank: int  # floor(percentile / 100 * (n_heldout + 1)); 0: too few held-out images, nothing can be flagged
    threshold: float  # that held-out DCR; a generated DCR strictly below it is flagged
    fraction: Share  # generated images flagged
    dcr_min: float  # generated images' DCRs
    dcr_median: float
    heldout: HeldoutCalibration
    closest_pairs: list[NearCopyPair]  # smallest DCR first


class PrivacyResult(ResultFile):
    FILE: ClassVar[str] = "privacy.json"

    ratio: float  # the d1/d2 threshold
    n_generated: int
    n_train: int
    memorization: dict[str, SpaceMemorization]  # "pixel", "feature"
    near_copies: dict[str, SpaceNearCopies]  # "pixel", "feature"
    # Membership inference on train vs held-out images (audit/membership.py); absent when it is off.
    membership: MembershipResult | None = None
