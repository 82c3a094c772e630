"""Schema of the `release` config group: what the report stage registers, and when a run may become
the champion. Owned by the release loop (report stage, registry, `make retrain`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class CompareMetric(BaseModel):
    """One number a candidate must not lose against the champion (or the baseline branch) by more
    than `tolerance` (absolute, or a fraction of the champion's value when `relative`).

    `metric` is `<file>.<dotted key>` of a metrics JSON: `quality.conditional_accuracy` reads
    `conditional_accuracy` from metrics/quality.json.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    metric: str = Field(pattern=r"^[A-Za-z0-9_]+\.[^.].*$")
    mode: Literal["max", "min"]
    tolerance: float = Field(default=0.0, ge=0.0)
    relative: bool = False


def _default_compare() -> list[CompareMetric]:
    return [
        CompareMetric(metric="quality.conditional_accuracy", mode="max", tolerance=0.02),
        CompareMetric(metric="quality.fid_evaluator", mode="min", tolerance=0.10, relative=True),
    ]


class ReleaseCfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    # Log the pyfunc model and register it (alias `candidate`) on every report run.
    register_model: bool = True
    # No metrics/gates.json (the audit has not run) means no promotion: never release unaudited.
    require_gates: bool = True
    compare: list[CompareMetric] = Field(default_factory=_default_compare)
    # Default sampling steps of the served model (null: the pipeline's sampler.steps).
    serve_steps: int | None = Field(default=None, ge=1)
    # Where reviewers open MLflow (run links in the report). null: the tracking URI when it is a
    # server, else the local `make ui` address.
    ui_url: str | None = None
    # Most images embedded per report section (keeps the page loadable).
    max_images_per_section: int = Field(default=24, ge=1)


def release_config(cfg: Any) -> ReleaseCfg:
    """cfg.release when the composed config has the group, else the defaults (so the release loop
    also works on configs composed before the group existed)."""
    found = getattr(cfg, "release", None)
    return found if isinstance(found, ReleaseCfg) else ReleaseCfg.model_validate(found or {})
