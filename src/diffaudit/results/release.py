"""reports/release.json (the report stage: pipelines/report.py; `record` from release/promote.py
`register_and_decide`, `revoked` added by `make retrain` when a later check undoes a promotion)."""

from __future__ import annotations

from typing import ClassVar, Literal

from diffaudit.results.base import ResultFile, ResultModel


class Comparison(ResultModel):
    """One configured metric of the candidate against a reference (the champion, or a baseline)."""

    metric: str
    mode: Literal["max", "min"]
    tolerance: float
    relative: bool
    candidate: float | None
    reference: float | None
    ok: bool
    note: str


class ReleaseRecord(ResultModel):
    """What the report stage did in the registry."""

    model_name: str
    candidate_version: str | None
    champion_version: str | None  # after the decision
    previous_champion_version: str | None
    promoted: bool
    reasons: list[str]
    comparisons: list[Comparison]
    gates_ran: bool
    gates_passed: bool
    model_uri: str | None
    run_id: str | None
    pipeline_id: str | None


class ReleaseSummary(ResultFile):
    FILE: ClassVar[str] = "release.json"

    promoted: bool
    registered: bool
    gates_ran: bool
    gates_passed: bool
    candidate_metrics: dict[str, float | None]  # release.compare metric -> the candidate's value
    record: ReleaseRecord | None = None  # absent when the model was not registered
    revoked: list[str] | None = None  # absent unless `make retrain` revoked the promotion (its reasons)
