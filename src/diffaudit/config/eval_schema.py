"""Schema of the `sampler` and `eval` config groups (sampling and quality evaluation)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SamplerCfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["ddpm", "ddim", "dpm_solver", "euler"]
    steps: int = Field(ge=1, le=10000)
    guidance_scale: float = Field(ge=0.0)
    eta: float = Field(ge=0.0, le=1.0)
    num_per_class: int = Field(ge=1)
    batch_size: int = Field(ge=1)


class EvaluatorCfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0.0)
    width: int = Field(ge=4)


class EvalCfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    feature: Literal["evaluator", "inception"]
    inception_weights: str | None = None
    kid_subset_size: int = Field(ge=2)
    evaluator: EvaluatorCfg
