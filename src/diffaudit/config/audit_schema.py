"""Schema of the `audit` config group (fairness, privacy, gates). Owned by the fairness/privacy audit.

Every threshold lives here so that a change to one reruns the audit stage alone (dvc.yaml lists
`audit` as its params); a gate set to null is not evaluated.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class GatesCfg(_Strict):
    """Release thresholds. Fairness values are read from the error-corrected estimates when
    `audit.correct_errors` is true, and through `audit.gate_statistic` (estimate or an interval end)."""

    min_conditional_accuracy: float | None = Field(default=0.8, ge=0.0, le=1.0)
    # FID of generated vs real test images minus the real-vs-real floor, in the evaluate stage's feature
    # space.
    max_fid_over_floor: float | None = Field(default=None, ge=0.0)
    max_fairness_discrepancy: float | None = Field(default=0.1, ge=0.0)
    max_abs_bias_amplification: float | None = Field(default=0.25, ge=0.0)
    # Which bias amplification the gate above reads (audit/bias.py): the worst cell's |BA|, or the absolute
    # value of Wang & Russakovsky's directional BiasAmp or of Zhao et al.'s mean bias amplification.
    bias_amplification_measure: Literal["worst_cell", "wang_russakovsky", "zhao"] = "worst_cell"
    max_worst_group_gap: float | None = Field(default=0.15, ge=0.0)
    max_memorized_fraction: float | None = Field(default=0.05, ge=0.0, le=1.0)
    # Share of generated images flagged as near-copies by the held-out-calibrated DCR test, in the worse
    # space. Null: not evaluated (about copy_percentile % is flagged even for a model that copies nothing).
    max_near_copy_fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    # Membership inference: the headline attack's ROC AUC (members vs held-out images, docs/privacy.md).
    max_mia_auc: float | None = Field(default=None, ge=0.0, le=1.0)


class MitigationCfg(_Strict):
    """Balanced selection sampling: draw extra candidates per class and keep a set whose attribute
    shares (by the evaluator) match the target; the audit is then rerun on that set."""

    enabled: bool = True
    attribute: str | None = None  # null: the first sensitive attribute of the data
    target: Literal["uniform", "train"] = "uniform"
    oversample: float = Field(
        default=3.0, ge=1.0, le=50.0
    )  # most candidates per class, in units of the set's own count
    max_rounds: int = Field(default=4, ge=1)


class MembershipCfg(_Strict):
    """Membership inference against the trained model (audit/membership.py, docs/privacy.md): training
    images (members) against as many test images (non-members), by a loss attack and PIA."""

    enabled: bool = True
    # Loss attack (Matsumoto et al. 2023): the denoising error at each of these timesteps (of the training
    # schedule's num_train_timesteps), averaged over `noise_draws` seeded noise draws.
    timesteps: list[Annotated[int, Field(ge=0)]] = Field(default=[50, 100, 200, 300, 500], min_length=1)
    noise_draws: int = Field(default=4, ge=1)
    # PIA (Kong et al. 2024): the timesteps it attacks at (the paper's DDPM attack: t = 200 of 1000).
    pia_timesteps: list[Annotated[int, Field(ge=1)]] = Field(default=[200], min_length=1)
    max_images: int = Field(default=256, ge=4)  # at most this many members (and as many non-members)
    batch_size: int = Field(default=256, ge=1)  # images per denoiser forward

    @field_validator("timesteps", "pia_timesteps")
    @classmethod
    def _distinct_non_negative(cls, v: list[int]) -> list[int]:
        if min(v) < 0 or len(set(v)) != len(v):
            raise ValueError(f"timesteps must be distinct and >= 0, got {v}")
        return v


class AuditCfg(_Strict):
    fail_on_gate: bool = False
    reference: Literal["train", "uniform"] = "uniform"
    correct_errors: bool = True
    # Attributes the data defines by a pixel rule (thickness): measured by that rule (exact), or by the
    # evaluator's head like any other attribute (audit/attribute_rules.py says why the rule is the default).
    derived_attributes: Literal["definition", "evaluator"] = "definition"
    gate_statistic: Literal["estimate", "ci_low", "ci_high"] = "estimate"
    bootstrap: int = Field(default=1000, ge=0)
    ci_level: float = Field(default=0.95, gt=0.0, lt=1.0)
    # Per-class confusion matrices for p(a|c) need this many real test images in every true group of the
    # class; otherwise the pooled matrix is used.
    min_confusion_count: int = Field(default=10, ge=1)
    # Pseudo-counts per true group pulling each per-class matrix toward the pooled one (0: none).
    confusion_prior: float = Field(default=10.0, ge=0.0)
    min_group_size: int = Field(default=20, ge=2)
    min_group_size_fid: int = Field(default=100, ge=2)
    pr_k: int = Field(default=3, ge=1)
    memorization_ratio: float = Field(default=1.0 / 3.0, gt=0.0, lt=1.0)
    # Near-copy test (docs/privacy.md): a generated image whose distance to its closest training image is
    # below this percentile (in %) of the real test images' such distances is flagged.
    copy_percentile: float = Field(default=1.0, gt=0.0, le=50.0)
    gallery_size: int = Field(default=16, ge=1)
    gates: GatesCfg = GatesCfg()
    mitigation: MitigationCfg = MitigationCfg()
    membership: MembershipCfg = MembershipCfg()
