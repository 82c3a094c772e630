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
since the labels were set on the source images: at 16x16 the fitted cut reproduces them on 99.7 % of the
real test digits. An image is cut at the threshold of the class it was generated for (real images: their
true class).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from diffaudit.audit.fairness_report import EVALUATOR_SUFFIX, Judged
from diffaudit.data.attributes import attribute_score
from diffaudit.data.store import DataMeta, Split


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
    best = np.flatnonzero(errors == errors.min())
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
        x = ((images.detach().to(torch.float64).clamp(-1, 1) + 1) / 2).cpu().numpy()
        return (attribute_score(self.name, x) > self.thresholds[np.asarray(labels)]).astype(np.int64)


def fit_rules(meta: DataMeta, splits: list[Split]) -> dict[str, AttributeRule]:
    """One rule per derived two-group attribute, fitted to the labels of `splits` (train and val)."""
    images = torch.cat([s.images for s in splits])
    labels = torch.cat([s.labels for s in splits]).numpy()
    x = ((images.to(torch.float64) + 1) / 2).numpy()
    rules = {}
    for name in meta.derived_attributes:
        if len(meta.attribute_groups.get(name, [])) != 2:
            continue
        groups = torch.cat([s.attributes[name] for s in splits]).numpy()
        scores = attribute_score(name, x)
        cuts = np.array([fit_threshold(scores[labels == c], groups[labels == c]) if (labels == c).any() else np.inf
                         for c in range(meta.num_classes)])
        rules[name] = AttributeRule(name, cuts)
    return rules


def apply_rules(judged: Judged, images: torch.Tensor, labels: np.ndarray | torch.Tensor,
                rules: dict[str, AttributeRule]) -> Judged:
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
