"""Schema of the `explain` config group (explainability audit). Owned by the explainability audit.

Every size here trades audit time for statistical resolution; conf/explain/default.yaml is sized so the
stage runs in about a minute on a laptop CPU with the default model.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ExplainCfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Seeds per class that get filmstrips, guidance maps and attributions (the first ones of the
    # emergence set, so their curves are among the averaged ones).
    filmstrip_per_class: int = Field(ge=1)
    # Samples per class behind the emergence curves and commitment-step distributions.
    emergence_per_class: int = Field(ge=1)
    # Quantiles of the band drawn around the mean emergence curve.
    band: tuple[float, float]
    # Where to attribute, as fractions of the sampling trajectory (0 = first step, 1 = last step).
    attribution_steps: list[float] = Field(min_length=1)
    ig_steps: int = Field(ge=2)
    # Images per forward inside Integrated Gradients (bounds memory; 2x for classifier-free guidance).
    ig_internal_batch: int = Field(ge=1)
    smoothgrad_samples: int = Field(ge=1)
    # Standard deviation of SmoothGrad's input noise, in units of x_t (which has std ~1 at high noise).
    smoothgrad_stdev: float = Field(gt=0.0)
    # Adebayo et al. 2018: repeat the attributions with a re-initialised UNet and report their similarity.
    randomization_check: bool
    timestep_bins: int = Field(ge=1)
    # Validation images per timestep bin for the loss profile (all of them when fewer).
    loss_images: int = Field(ge=1)
    # A frequency band has "settled" once its power stays within this relative error of the final one.
    spectrum_tolerance: float = Field(gt=0.0, lt=1.0)
    gif_frame_ms: int = Field(ge=20)

    @model_validator(mode="after")
    def _ranges(self) -> ExplainCfg:
        lo, hi = self.band
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError("explain.band must be two quantiles 0 <= lo < hi <= 1")
        if any(not 0.0 <= f <= 1.0 for f in self.attribution_steps):
            raise ValueError("explain.attribution_steps are fractions of the trajectory, each in [0, 1]")
        if self.filmstrip_per_class > self.emergence_per_class:
            raise ValueError("explain.filmstrip_per_class cannot exceed explain.emergence_per_class")
        return self
