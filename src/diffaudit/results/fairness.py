"""metrics/fairness.json: audit/fairness_report.py `fairness_report` (representation from audit/fairness.py,
bias amplification from audit/bias.py, per-group quality from audit/per_group.py), the mitigation section
(audit/model_audit.py `_mitigate`) and the audit's `seconds` (its inputs loaded; the work of
audit/model_audit.py `audit_model`)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from diffaudit.results.base import ResultFile, ResultModel
from diffaudit.results.intervals import CI, Estimate
from diffaudit.utils.intervals import Method

Reference = Literal["uniform", "train"]
Estimator = Literal["raw", "corrected"]
# The confusion matrix a share was corrected with (audit/fairness.py Shares.correction).
Correction = Literal["pooled", "per_class"]


class Discrepancy(Estimate):
    """A discrepancy of generated shares from the reference: `value` is its median-unbiased estimate,
    which the test-inversion interval holds, `plug_in` the distance of the estimated shares (biased
    upward); with the null: the plug-in's 95th percentile for a perfect generator of the same size."""

    plug_in: float
    null_q95: float
    exceeds_null: bool


class Discrepancies(ResultModel):
    fd_l2: Discrepancy
    tv: Discrepancy
    kl: Discrepancy


class OtherReference(ResultModel):
    reference: Reference
    p_ref: list[float]
    p_gen_corrected: list[float]
    raw: Discrepancies
    corrected: Discrepancies


class Representation(ResultModel):
    groups: list[str]
    n: int
    p_ref: list[float]
    correction: Correction | Literal["per_class/pooled"]  # per-class strata that used both
    p_gen_raw: list[float]
    p_gen_corrected: list[float]
    p_gen_raw_ci: list[CI]
    p_gen_corrected_ci: list[CI]
    p_gen_ci_method: Method
    raw: Discrepancies
    corrected: Discrepancies
    other_reference: OtherReference
    confusion_test: list[list[int]]
    confusion_condition: float

    def p_gen(self, est: Estimator) -> list[float]:
        return self.p_gen_corrected if est == "corrected" else self.p_gen_raw

    def p_gen_ci(self, est: Estimator) -> list[list[float]]:
        return self.p_gen_corrected_ci if est == "corrected" else self.p_gen_raw_ci

    def discrepancies(self, est: Estimator) -> Discrepancies:
        return self.corrected if est == "corrected" else self.raw


class BiasCell(ResultModel):
    class_: str = Field(alias="class")
    group: str
    n_gen: int
    p_train: float
    p_gen_raw: float
    p_gen: float
    ba: float
    ci: CI | None  # null with `method`: nothing was resampled
    method: Method | None
    clear_of_zero: bool
    confusion: Correction


class MaxAbsBA(Estimate):
    """The worst cell: `value` median-unbiased (audit/bias.py `_worst_cell`), `plug_in` the largest |BA|."""

    plug_in: float
    class_: str | None = Field(alias="class")
    group: str | None
    cell_ci: CI | None
    clear_of_zero: bool


# The measure of bias amplification the headline and its gate read (audit.gates.bias_amplification_measure).
BAMeasureName = Literal["worst_cell", "wang_russakovsky", "zhao"]


class BiasAmpMeasure(Estimate):
    """A signed aggregate of the cells (audit/bias.py): Wang & Russakovsky's directional BiasAmp or Zhao
    et al.'s mean bias amplification; `n_cells` the cells it sums, `method` how `ci` was computed. The
    interval always holds its estimate."""

    n_cells: int


class BiasAmplification(ResultModel):
    corrected: bool
    cells: list[BiasCell]
    wang_russakovsky: BiasAmpMeasure
    zhao: BiasAmpMeasure
    max_abs_ba: MaxAbsBA
    n_cells_clear_of_zero: int


class GroupMetrics(ResultModel):
    conditional_accuracy: float
    confidence: float
    precision: float
    recall: float
    fid: float


class NoGroups(ResultModel):
    """`overall` of a per-group report where every group was too small: {}."""


def _overall_kind(v: Any) -> str:
    return "none" if isinstance(v, NoGroups) or v == {} else "metrics"


Overall = Annotated[
    Annotated[GroupMetrics, Tag("metrics")] | Annotated[NoGroups, Tag("none")], Discriminator(_overall_kind)
]


class GroupGap(Estimate):
    """Largest minus smallest group value: `value` median-unbiased (audit/per_group.py `_gap`)."""

    plug_in: float
    worst_group: str | None


class PerGroup(ResultModel):
    sizes: dict[str, int]
    excluded_small_groups: list[str]
    real_sizes: dict[str, int]
    by_group: dict[str, GroupMetrics]
    overall: Overall
    gap: dict[str, GroupGap]  # metric name (GroupMetrics' fields) -> largest difference between groups


class HeadMeasure(ResultModel):
    measured_by: Literal["evaluator"]


class RuleMeasure(ResultModel):
    """An attribute read by its pixel rule, with what the evaluator's head would have said."""

    measured_by: Literal["definition"]
    definition_test_accuracy: float
    evaluator_test_accuracy: float
    generated_shares_definition: dict[str, float]
    generated_shares_evaluator: dict[str, float]
    agreement_on_generated: float


AttributeMeasure = Annotated[HeadMeasure | RuleMeasure, Field(discriminator="measured_by")]


class HeadlineFigure(ResultModel):
    """The worst figure of a kind: `value` is the gated number (estimate or an interval end), `estimate`
    and `ci` the statistic it came from; NaN with `where` null (and nothing else) when none was measured."""

    value: float
    where: str | None
    estimate: float | None = None
    ci: CI | None = None

    def gated_ci(self) -> list[float] | None:
        """The interval of the number the gate reads."""
        return None if self.ci is None else list(self.ci)


class BAHeadlineFigure(HeadlineFigure):
    """The bias amplification headline: `measure` names which of the three it is. For the two signed
    ones the gate reads |x|: `value` and `ci` are of |x| (audit/fairness_report.py `headline`), while
    `estimate` and `signed_ci` keep the sign."""

    measure: BAMeasureName
    signed_ci: CI | None = None


class Headline(ResultModel):
    estimate: Estimator
    statistic: Literal["estimate", "ci_low", "ci_high"]
    fairness_discrepancy: HeadlineFigure
    bias_amplification: BAHeadlineFigure
    worst_group_gap: HeadlineFigure


class FairnessReport(ResultModel):
    """The audit of one generated set (also the mitigation section's `report`)."""

    n_generated: int
    reference: Reference
    corrected: bool
    ci_level: float
    bootstrap: int
    evaluator_test_accuracy: dict[str, float]  # head -> accuracy on real test images
    representation: dict[str, Representation]  # head ("class" and every attribute) ->
    bias_amplification: dict[str, BiasAmplification]  # attribute ->
    per_group: dict[str, PerGroup]  # attribute, and "class" ->
    attribute_measure: dict[str, AttributeMeasure]  # attribute -> how it was read
    headline: Headline


class ClassSelection(ResultModel):
    extra_draws: int
    target: list[int]
    kept: list[int]
    shortfall: int


class Selection(ResultModel):
    extra_draws: int
    per_class: dict[str, ClassSelection]  # class id -> selection
    classes_short: list[int]

    @field_validator("per_class", mode="before")
    @classmethod
    def _class_ids_as_keys(cls, v: Any) -> Any:
        """audit/mitigation.py keys classes by int id; JSON keys are strings (only ints are converted)."""
        if isinstance(v, dict):
            return {str(k) if isinstance(k, int) and not isinstance(k, bool) else k: x for k, x in v.items()}
        return v


class MitigationSide(ResultModel):
    p_gen: list[float]
    fd_l2: Discrepancy
    max_abs_ba: MaxAbsBA
    headline: Headline


class Mitigation(ResultModel):
    attribute: str
    target: list[float]
    seconds: float
    selection: Selection
    before: MitigationSide
    after: MitigationSide
    report: FairnessReport  # the audit of the selected set


class FairnessResult(FairnessReport, ResultFile):
    FILE: ClassVar[str] = "fairness.json"
    HEADLINE: ClassVar[tuple[str, ...]] = ("headline",)

    mitigation: Mitigation | None = None  # absent when audit.mitigation is off or the data has no attribute
    seconds: float

    @classmethod
    def of(
        cls, report: FairnessReport, seconds: float, mitigation: Mitigation | None = None
    ) -> FairnessResult:
        """The file: the report of the generated set, its mitigation (if any) and the stage's time."""
        extra = {"mitigation": mitigation} if mitigation is not None else {}
        parts = {name: getattr(report, name) for name in type(report).model_fields}
        return cls(**parts, **extra, seconds=seconds)
