"""What does not apply to a model, and why (issue 13): the reasons are spelled once here, so the JSON,
the report, the model card and the gates say the same thing.

A result that does not apply is written as null beside a `not_applicable` entry naming why; a gate that
does not apply is neither passed nor failed (results/gates.py).
"""

from __future__ import annotations

from typing import Literal

# How a UNet is conditioned against the dataset's classes (models/imported.py reads it from the config):
# `class_cfg` one embedding per class plus a null class (classifier-free guidance, as diffaudit trains),
# `class` one per class without a null class, `none` unconditional.
Conditioning = Literal["class_cfg", "class", "none"]
CONDITIONINGS: tuple[Conditioning, ...] = ("class_cfg", "class", "none")

# samples/ metadata `labels`: what the stored labels are. "condition": the class each image was conditioned
# on; "evaluator": the class the evaluator reads in an unconditional model's image.
LABELS_FROM_CONDITION = "condition"
LABELS_FROM_EVALUATOR = "evaluator"
LabelSource = Literal["condition", "evaluator"]

UNCONDITIONAL = "not applicable: unconditional model (no conditioning label to check against)"
UNCONDITIONAL_GUIDANCE = "not applicable: unconditional model (no label to guide towards)"
NO_NULL_CLASS = "not applicable: the model has no null class, so no classifier-free guidance"


def not_applicable(conditioning: Conditioning) -> dict[str, str]:
    """Quantity -> why it does not apply to a model conditioned so ({} for diffaudit's own models).

    Conditional accuracy and CAS score generated images against the label that conditioned them, and
    guidance mixes a conditional with an unconditional (null-class) prediction.
    """
    out: dict[str, str] = {}
    if conditioning == "none":
        out |= {"conditional_accuracy": UNCONDITIONAL, "cas": UNCONDITIONAL}
    if conditioning != "class_cfg":
        out["guidance"] = UNCONDITIONAL_GUIDANCE if conditioning == "none" else NO_NULL_CLASS
    return out


def conditioning_of_labels(labels: str | None) -> Conditioning:
    """The conditioning the samples' label source tells apart: unconditional or not (downstream of the
    sample stage, quality needs no more; the explain stage reads the model itself)."""
    return "none" if labels == LABELS_FROM_EVALUATOR else "class_cfg"
