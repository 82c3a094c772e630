"""Schema of the `sampler` and `eval` config groups (sampling, quality evaluation, sampler study)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SamplerName = Literal["ddpm", "ddim", "dpm_solver", "euler", "edm_euler", "edm_dpm_solver"]


MAX_PER_CLASS = 100_000  # images per class in one sample set
MAX_BATCH = 65_536  # images per denoising batch


class SamplerCfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: SamplerName
    steps: int = Field(ge=1, le=10000)
    guidance_scale: float = Field(ge=0.0, le=100.0)
    eta: float = Field(ge=0.0, le=1.0)
    # Bounded so a typo (1e9) fails at compose time, not with an 80 GB allocation after training; 100k per
    # class is beyond the 50k images a published FID uses.
    num_per_class: int = Field(ge=1, le=MAX_PER_CLASS)
    batch_size: int = Field(ge=1, le=MAX_BATCH)


class EvaluatorCfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0.0)
    width: int = Field(ge=4)


class GuidanceSweepCfg(BaseModel):
    """Guidance scales swept at one (sampler, NFE); null means the configured `sampler` group's value."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    sampler: SamplerName | None = None
    nfe: int | None = Field(default=None, ge=1, le=10000)
    scales: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _non_negative(self) -> GuidanceSweepCfg:
        if any(s < 0 for s in self.scales):
            raise ValueError("eval.study.guidance.scales must all be >= 0")
        return self


class StudyCfg(BaseModel):
    """The sampler study: the same model and seeds sampled with every sampler over NFE lists, plus a guidance
    sweep."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    num_per_class: int = Field(ge=1, le=MAX_PER_CLASS)
    # Guidance of the NFE sweep; null: the configured sampler.guidance_scale.
    guidance_scale: float | None = Field(default=None, ge=0.0)
    nfe: dict[SamplerName, list[int]] = Field(min_length=1)
    guidance: GuidanceSweepCfg
    # "Reaches the target quality": FID within this multiple of its real-vs-real floor ...
    target_fid_over_floor: float = Field(default=3.0, gt=0.0)
    # ... and at least this conditional accuracy.
    target_conditional_accuracy: float = Field(default=0.9, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _nfe_lists(self) -> StudyCfg:
        for name, steps in self.nfe.items():
            if not steps or any(s < 1 for s in steps):
                raise ValueError(f"eval.study.nfe.{name} must be a non-empty list of positive step counts")
        return self


class EvalCfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    feature: Literal["evaluator", "inception"]
    inception_weights: str | None = None
    kid_subset_size: int = Field(ge=2)
    kid_subsets: int = Field(default=50, ge=1)
    # k of the k-NN manifolds of precision/recall (Kynkäänniemi et al. 2019 use 3).
    pr_k: int = Field(default=3, ge=1)
    # Bootstrap resamples behind every 95% interval (`*_ci`); 0 turns the intervals off.
    bootstrap: int = Field(default=200, ge=0)
    # Train the CAS classifiers (one on generated, one on as many real images).
    cas: bool = True
    evaluator: EvaluatorCfg
    study: StudyCfg | None = None

    @model_validator(mode="after")
    def _inception_needs_weights(self) -> EvalCfg:
        if self.feature == "inception" and not self.inception_weights:
            raise ValueError(
                "eval.feature=inception needs "
                "eval.inception_weights=/path/to/pt_inception-2015-12-05-6726825d.pth (the FID InceptionV3 "
                "weights of torch-fidelity, copied to this machine; nothing is downloaded), "
                "or use eval.feature=evaluator"
            )
        return self
