"""metrics/gates.json (audit/gates.py `report`; `with_mitigation` added by the audit stage)."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import model_validator

from diffaudit.results.base import ResultFile, ResultModel
from diffaudit.utils.format import fmt_num

# How a verdict that rests on the estimate alone is read, by whether it passed.
CROSSING_NOTE = {
    True: "passes on the estimate; its interval crosses the threshold",
    False: "fails on the estimate; its interval crosses the threshold",
}


def crosses(ci: list[float] | None, threshold: float) -> bool | None:
    """Whether an interval [lo, hi] holds the threshold; None without an interval (not assessable)."""
    if ci is None or any(math.isnan(x) for x in ci):
        return None
    return ci[0] <= threshold <= ci[1]


class GateEntry(ResultModel):
    value: float | None  # null or NaN: not measured (fails), or not applicable
    threshold: float
    op: Literal["<=", ">="]
    # null: the gate does not apply to this model (`not_applicable` says why): neither passed nor failed.
    passed: bool | None
    not_applicable: str | None = None
    source: str  # what was measured (e.g. "thickness, corrected, estimate")
    # The interval of the gated statistic (null: it has none) and whether it holds the threshold. The
    # verdict itself is `passed`, decided by audit.gate_statistic.
    ci: list[float] | None = None
    ci_crosses_threshold: bool | None = None  # null: the gated number has no interval

    @model_validator(mode="after")
    def _applicability_agrees(self) -> GateEntry:
        if (self.passed is None) != (self.not_applicable is not None):
            raise ValueError(
                "passed is null exactly when the gate is not applicable (not_applicable says why)"
            )
        return self

    @property
    def applies(self) -> bool:
        return self.passed is not None

    @property
    def verdict(self) -> str:
        """ "passed", "failed" or "not applicable"."""
        return "not applicable" if self.passed is None else "passed" if self.passed else "failed"

    @model_validator(mode="after")
    def _crossing_agrees(self) -> GateEntry:
        if self.ci_crosses_threshold != crosses(self.ci, self.threshold):
            raise ValueError(f"ci_crosses_threshold is {self.ci_crosses_threshold} for ci {self.ci}")
        return self

    @property
    def crossing_note(self) -> str:
        """What a reviewer must know beyond pass/fail ("" when the interval is clear of the threshold)."""
        if self.passed is None or self.ci_crosses_threshold is not True:
            return ""
        return CROSSING_NOTE[self.passed]

    @property
    def measured(self) -> bool:
        return self.value is not None and not math.isnan(self.value)

    def describe(self, name: str) -> str:
        if self.not_applicable is not None:
            return f"gate {name} {self.not_applicable} (neither passed nor failed)"
        value = fmt_num(self.value) if self.measured else "not measured"
        note = f"; {self.crossing_note}" if self.crossing_note else ""
        return (
            f"gate {name} {'passed' if self.passed else 'failed'}: value {value}, threshold "
            f"{fmt_num(self.threshold)} (must be {self.op} {fmt_num(self.threshold)}; {self.source}){note}"
        )


class GatesResult(ResultFile):
    FILE: ClassVar[str] = "gates.json"

    passed: bool  # no gate failed (a gate that does not apply neither passes nor fails)
    failed: list[str]
    gates: dict[str, GateEntry]  # gate name -> verdict, in the order they were judged
    not_applicable: list[str] = []  # the gates that do not apply to this model
    # Fairness gates re-judged on the balanced-selection set (informative only); absent without mitigation.
    with_mitigation: dict[str, bool] | None = None

    @model_validator(mode="after")
    def _agrees(self) -> GatesResult:
        failing = [name for name, g in self.gates.items() if g.passed is False]
        na = [name for name, g in self.gates.items() if g.passed is None]
        if self.not_applicable != na:
            raise ValueError(f"`not_applicable` lists {self.not_applicable} but those gates are {na}")
        if self.failed != failing:
            raise ValueError(f"`failed` lists {self.failed} but the failing gates are {failing}")
        if self.passed != (not failing):
            raise ValueError(f"`passed` is {self.passed} but {len(failing)} gate(s) failed")
        return self

    def failed_gates(self) -> dict[str, GateEntry]:
        return {name: self.gates[name] for name in self.failed}

    def applicable(self) -> dict[str, GateEntry]:
        """The gates that judge this model (the release verdict rests on these alone)."""
        return {name: g for name, g in self.gates.items() if g.applies}
