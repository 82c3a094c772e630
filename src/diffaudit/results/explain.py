"""metrics/explain.json (audit/explain/audit.py `explain_model`, from the summaries of emergence.py,
guidance.py, attribution.py, timestep_profile.py and spectrum.py). `ExplainResult` in audit/explain
holds the figures and tables of a run beside this."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Discriminator, Tag

from diffaudit.results.applicability import Conditioning, LabelSource
from diffaudit.results.base import ResultFile, ResultModel


class ExplainSampler(ResultModel):
    name: str
    steps: int
    guidance_scale: float  # as sampled: 1 where guidance does not apply


class ExplainModel(ResultModel):
    """How the explained model is conditioned (results/applicability.py): an unconditional model's images
    are grouped and attributed by the class the evaluator finally reads in them."""

    conditioning: Conditioning
    labels: LabelSource


class CommitmentStats(ResultModel):
    """Sampling step after which a head's argmax no longer changes."""

    mean: float
    median: float
    std: float
    mean_fraction: float
    never_settled: float


class HeadCommitment(CommitmentStats):
    per_class: dict[str, CommitmentStats]  # class id (conditioning, or the evaluator's final) -> stats


class CommitmentOrder(ResultModel):
    share_attribute_first: float
    share_same_step: float
    share_class_first: float
    mean_step_difference: float  # < 0: the attribute settles earlier


class Commitment(ResultModel):
    per_head: dict[str, HeadCommitment]
    attribute_vs_class: dict[str, CommitmentOrder]  # attribute head -> order against the class head


class EmergenceSummary(ResultModel):
    area_under_curve: dict[str, float]  # head -> mean probability of the final value over the steps
    final_matches_condition: float | None  # null: not applicable (an unconditional model has no condition)


class GuidanceSummary(ResultModel):
    peak_step: int
    peak_fraction: float
    mean_magnitude: float
    top10_pixel_share: float


class GuidanceNote(ResultModel):
    """What the file says instead when the sampler ran no unconditional pass."""

    note: str


def _guidance_kind(v: Any) -> str:
    return "note" if isinstance(v, GuidanceNote) or (isinstance(v, dict) and "note" in v) else "summary"


Guidance = Annotated[
    Annotated[GuidanceSummary, Tag("summary")] | Annotated[GuidanceNote, Tag("note")],
    Discriminator(_guidance_kind),
]


class ConvergenceDelta(ResultModel):
    max_abs: float
    mean_abs: float
    max_relative: float
    mean_relative: float


class SpearmanPair(ResultModel):
    integrated_gradients: float
    smoothgrad: float


class RandomizationCheck(SpearmanPair):
    per_step: dict[str, SpearmanPair]  # trajectory step -> similarity


class AttributionSummary(ResultModel):
    steps: list[int]
    timesteps: list[int]
    ig_convergence_delta: ConvergenceDelta
    logit_gap_mean: float
    randomization_spearman: RandomizationCheck | None = None  # absent when the check did not run


class TimestepLoss(ResultModel):
    loss: float
    x0_mse: float


class HighFrequencyShare(ResultModel):
    first: float
    middle: float
    last: float


class SpectrumSummary(ResultModel):
    settle_step: dict[str, int]  # band ("low", "mid", "high"; a band too narrow to exist is left out)
    coarse_to_fine: bool
    first_step_power_ratio: dict[str, float]  # band -> power at step 0 / at the last step
    high_frequency_share: HighFrequencyShare


class ExplainSeconds(ResultModel):
    sampling: float
    emergence: float
    filmstrips: float
    attribution: float
    loss_by_timestep: float
    spectrum: float
    total: float


class ExplainMetrics(ResultFile):
    FILE: ClassVar[str] = "explain.json"
    HEADLINE: ClassVar[tuple[str, ...]] = (
        "commitment",
        "emergence",
        "guidance",
        "attribution.ig_convergence_delta",
        "spectrum",
    )

    sampler: ExplainSampler
    model: ExplainModel
    num_images: int
    not_applicable: dict[str, str] = {}  # quantity -> why it does not apply to this model
    commitment: Commitment
    emergence: EmergenceSummary
    guidance: Guidance
    attribution: AttributionSummary
    loss_by_timestep: dict[str, TimestepLoss]  # "t0000_0332" (timestep bin) -> loss
    spectrum: SpectrumSummary
    seconds: ExplainSeconds
