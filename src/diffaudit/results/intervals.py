"""The two interval spellings of the result files, one type each, so readers render them by type.

- `Interval`: {"low": x, "high": y, "method": m}, an interval standing beside its estimate under its own
  key (quality.json `fid_evaluator_debiased_ci` beside `fid_evaluator_debiased`).
- `Estimate`: {"value": v, "ci": [lo, hi], "method": m}, an estimate carrying its interval
  (fairness.json; audit/fairness.py, audit/per_group.py gaps, audit/bias.py). Subclasses add fields.

`method` names how the interval was made (utils/intervals.py explains each). Every interval contains
its estimate: `Estimate` checks its own, `check_beside` the `X` / `X_ci` pairs of a model, so a file that
breaks the rule cannot be written or read. `CI` is the bare [lo, hi] list (NaN ends where nothing could
be resampled).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from diffaudit.results.base import FieldError, ResultModel
from diffaudit.utils.intervals import Method, contains

CI = Annotated[list[float], Field(min_length=2, max_length=2)]


class Interval(ResultModel):
    low: float
    high: float
    method: Method


class Estimate(ResultModel):
    value: float
    ci: CI | None  # null: no interval could be made (nothing to resample), and `method` is null too
    method: Method | None

    @model_validator(mode="after")
    def _holds_its_value(self) -> Estimate:
        if (self.ci is None) != (self.method is None):
            raise FieldError("method", f"method {self.method!r} with interval {self.ci}: both or neither")
        if self.ci is not None and not contains(self.value, *self.ci):
            raise FieldError("ci", f"interval {self.ci} does not contain its estimate {self.value}")
        return self

    def estimate(self) -> Estimate:
        """Only the estimate and its interval (a subclass's extra fields dropped)."""
        return Estimate(value=self.value, ci=None if self.ci is None else list(self.ci), method=self.method)


def _ends(ci: Any) -> tuple[float, float] | None:
    if isinstance(ci, Interval):
        return ci.low, ci.high
    if isinstance(ci, list) and len(ci) == 2 and all(isinstance(v, float) for v in ci):
        return ci[0], ci[1]
    return None


def check_beside(model: ResultModel) -> None:
    """Every set field `X_ci` holds the set field `X` (element-wise for lists and dicts of them)."""
    fields = model.model_fields_set
    for name in fields:
        base = name.removesuffix("_ci")
        if base == name or base not in fields:
            continue
        est, ci = getattr(model, base), getattr(model, name)
        pairs: list[tuple[str, Any, Any]] = [(name, est, ci)]
        if isinstance(est, dict) and isinstance(ci, dict):
            pairs = [(f"{name}.{k}", est.get(k), c) for k, c in ci.items()]
        elif isinstance(est, list) and isinstance(ci, list) and len(est) == len(ci) and _ends(ci) is None:
            pairs = [(f"{name}[{i}]", e, c) for i, (e, c) in enumerate(zip(est, ci, strict=True))]
        for where, e, c in pairs:
            ends = _ends(c)
            if ends is not None and isinstance(e, float) and not contains(e, *ends):
                raise FieldError(where, f"interval {list(ends)} does not contain its estimate {e}")
