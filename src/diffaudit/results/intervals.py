"""The two interval spellings of the result files, one type each, so readers render them by type.

- `Interval`: {"low": x, "high": y}, a bootstrap interval standing beside its estimate under its own
  key (quality.json `fid_evaluator_ci`; metrics/bootstrap.py `interval()`).
- `Estimate`: {"value": v, "ci": [lo, hi]}, an estimate carrying its interval (fairness.json;
  audit/fairness.py `_stat`, audit/per_group.py gaps, audit/bias.py). Subclasses add fields.

`CI` is the bare [lo, hi] list (NaN ends where nothing could be resampled).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from diffaudit.results.base import ResultModel

CI = Annotated[list[float], Field(min_length=2, max_length=2)]


class Interval(ResultModel):
    low: float
    high: float


class Estimate(ResultModel):
    value: float
    ci: CI

    def estimate(self) -> Estimate:
        """Only the estimate and its interval (a subclass's extra fields dropped)."""
        return Estimate(value=self.value, ci=list(self.ci))
