"""metrics/privacy.json (audit/privacy.py `privacy_report`)."""

from __future__ import annotations

from typing import ClassVar

from diffaudit.results.base import ResultFile, ResultModel


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


class PrivacyResult(ResultFile):
    FILE: ClassVar[str] = "privacy.json"

    ratio: float  # the d1/d2 threshold
    n_generated: int
    n_train: int
    memorization: dict[str, SpaceMemorization]  # "pixel", "feature"
