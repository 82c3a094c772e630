"""Explainability audit: how the diffusion model reaches an image (docs/explainability.md).

One module per measurement: trajectory (recording the sampler), emergence (emergence curves and
commitment steps), guidance (guidance maps), attribution (Integrated Gradients, SmoothGrad and the
model-randomization check), timestep_profile (loss by timestep), spectrum (coarse-to-fine), figures
(pictures), audit (all of them in order).
"""

from diffaudit.audit.explain.audit import ExplainResult, explain_model

__all__ = ["ExplainResult", "explain_model"]
