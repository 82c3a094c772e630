"""Derived attributes measured by their definition instead of by the evaluator's head.

A derived attribute (data/attributes.py) is a function of the pixels: thickness is ink mass above the
median of its class. The evaluator's attribute head only approximates that function (about 0.9 accuracy
on real test digits), and correcting its reads with its confusion matrix on real images assumes it errs
the same way on generated ones, which nothing guarantees: on the default model it read 0.51 of the
generated digits as thick where the definition gives 0.60. Applying the definition itself is exact, so
the audit does that for every derived attribute (`audit.derived_attributes: definition`) and keeps the
head's reads beside it as a cross-check. Attributes that come with the data (CelebA's, a CSV's) have no
such rule and stay with the evaluator and its correction.

The per-class cut is fitted at model resolution to the prepared splits' own labels (the least-error cut),
since the labels were set on the source images: at 16x16 the fitted cut reproduces them on 99.4 to 99.7 %
of held-out real digits. An image is cut at the threshold of the class it was generated for (real images:
their true class), so a generated image that drew another digit is judged by its intended class's cut.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from diffaudit.audit.fairness_report import EVALUATOR_SUFFIX, Judged
from diffaudit.data.attributes import attribute_score
from diffaudit.data.store import DataMeta, Split
from diffaudit.errors import DataError


def fit_threshold(scores: np.ndarray, groups: np.ndarray) -> float:
    """The cut t with the fewest errors when group 1 is `score > t` (the middle of the best cuts on ties)."""
    order = np.argsort(scores, kind="stable")
    s, g = np.asarray(scores, dtype=np.float64)[order], np.asarray(groups)[order]
    if len(s) == 0:
        raise ValueError("no scores to fit a threshold to")
    # errors of the cut just after position i (i = -1: below every score): group-1 scores at or below it
    # plus group-0 scores above it.
    high_below = np.concatenate([[0], np.cumsum(g == 1)])
    low_above = (g == 0).sum() - np.concatenate([[0], np.cumsum(g == 0)])
    errors = high_below + low_above
    # A cut can only fall between two different scores (or outside them all): tied scores go together.
    possible = np.concatenate([[True], s[1:] > s[:-1], [True]])
    best = np.flatnonzero(possible & (errors == errors[possible].min()))
    i = int(best[len(best) // 2])  # cut after the i-th smallest score
    lo = s[i - 1] if i > 0 else s[0] - 1.0
    hi = s[i] if i < len(s) else s[-1] + 1.0
    return float((lo + hi) / 2)


@dataclass(frozen=True)
class AttributeRule:
    """A binary derived attribute: group 1 where the score exceeds its class's cut."""

    name: str
    thresholds: np.ndarray  # one cut per class

    def predict(self, images: torch.Tensor, labels: np.ndarray | torch.Tensor) -> np.ndarray:
        """Group ids of model-resolution images in [-1, 1], cut at the thresholds of `labels`."""
        return (attribute_score(self.name, _unit(images)) > self.thresholds[np.asarray(labels)]).astype(
            np.int64
        )


def _unit(images: torch.Tensor) -> np.ndarray:
    """Model-resolution images in [-1, 1] as float64 [0, 1] arrays, the scale the scores are defined on."""
    return ((images.detach().to(torch.float64).clamp(-1, 1) + 1) / 2).cpu().numpy()


def fit_rules(meta: DataMeta, splits: list[Split]) -> dict[str, AttributeRule]:
    """One rule per derived two-group attribute, fitted to the labels of `splits` (train and val)."""
    names = [n for n in meta.derived_attributes if len(meta.attribute_groups.get(n, [])) == 2]
    if not names:
        return {}
    x = _unit(torch.cat([s.images for s in splits]))
    labels = torch.cat([s.labels for s in splits]).numpy()
    missing = [meta.class_names[c] for c in range(meta.num_classes) if not (labels == c).any()]
    if missing:  # no cut can be fitted: reading those classes' images with any cut would bias the shares
        raise DataError(f"classes {missing} have no train/val images to fit the {names} rule to")
    rules = {}
    for name in names:
        groups = torch.cat([s.attributes[name] for s in splits]).numpy()
        scores = attribute_score(name, x)
        rules[name] = AttributeRule(
            name,
            np.array(
                [fit_threshold(scores[labels == c], groups[labels == c]) for c in range(meta.num_classes)]
            ),
        )
    return rules


def apply_rules(
    judged: Judged, images: torch.Tensor, labels: np.ndarray | torch.Tensor, rules: dict[str, AttributeRule]
) -> Judged:
    """`judged` with each ruled attribute's reads replaced by the rule's (one-hot probabilities);
    the head's own reads stay under `<attribute>:evaluator`."""
    if not rules:
        return judged
    preds, probs = dict(judged.preds), dict(judged.probs)
    for name, rule in rules.items():
        pred = rule.predict(images, labels)
        preds[name + EVALUATOR_SUFFIX], probs[name + EVALUATOR_SUFFIX] = preds[name], probs[name]
        preds[name], probs[name] = pred, np.eye(probs[name].shape[1])[pred]
    return replace(judged, preds=preds, probs=probs)
