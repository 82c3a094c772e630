"""Derived attributes measured by their definition: the fitted cut, the rule on real digits, and the
evaluator's reads kept beside the rule's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffaudit.audit.attribute_rules import (
    EVALUATOR_SUFFIX,
    AttributeRule,
    apply_rules,
    fit_rules,
    fit_threshold,
)
from diffaudit.audit.fairness_report import Judged
from diffaudit.data.attributes import add_derived_attributes
from diffaudit.data.digits import load_digits
from diffaudit.data.prepare import stratified_split
from diffaudit.data.store import DataMeta, Split, to_model_tensor
from diffaudit.errors import DataError


def test_fit_threshold_separates_two_groups() -> None:
    scores = np.array([1.0, 2.0, 3.0, 10.0, 11.0])
    assert fit_threshold(scores, np.array([0, 0, 0, 1, 1])) == pytest.approx(6.5)
    # One group only: the cut goes past every score of the other side.
    assert fit_threshold(scores, np.zeros(5, dtype=int)) > 11.0
    assert fit_threshold(scores, np.ones(5, dtype=int)) < 1.0


def test_fit_threshold_never_cuts_between_tied_scores() -> None:
    # Two images with the same score cannot be split by any threshold: one of them must be an error.
    # Splitting the three tied 1.0s "between" them would claim 0 errors but make 2; the best real cut
    # (everything thick) makes 1.
    scores, groups = np.array([1.0, 1.0, 1.0, 2.0]), np.array([0, 1, 1, 1])
    cut = fit_threshold(scores, groups)
    assert ((scores > cut) != groups).sum() == 1


def test_fit_rules_needs_every_class() -> None:
    meta, s = _digits_splits()
    only_zero = Split(
        s["train"].images[s["train"].labels == 0],
        s["train"].labels[s["train"].labels == 0],
        {"thickness": s["train"].attributes["thickness"][s["train"].labels == 0]},
    )
    with pytest.raises(DataError, match="no train/val images"):  # the stage's one-line error, exit 1
        fit_rules(meta, [only_zero])


def test_fit_threshold_minimises_errors_with_unequal_groups() -> None:
    # 90 low scores then 10 high ones, with one label noise on each side: the best cut still splits the
    # two clusters (2 errors), whatever the group sizes (a skewed training split has few of one group).
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0, 1, 90), rng.uniform(2, 3, 10)])
    groups = np.concatenate([np.zeros(90, int), np.ones(10, int)])
    groups[0], groups[95] = 1, 0
    cut = fit_threshold(scores, groups)
    assert 1.0 < cut < 2.0
    assert ((scores > cut) != groups).sum() == 2


def _digits_splits() -> tuple[DataMeta, dict[str, Split]]:
    ds = add_derived_attributes(load_digits(), ["thickness"])
    splits = stratified_split(ds, 0.1, 0.2, seed=0)
    meta = DataMeta(ds.class_names, ds.attribute_groups, 16, 1, ds.source, list(ds.derived_attributes))
    as_split = {
        k: Split(
            to_model_tensor(v.images, 16),
            torch.from_numpy(v.labels),
            {a: torch.from_numpy(g) for a, g in v.attributes.items()},
        )
        for k, v in splits.items()
    }
    return meta, as_split


def test_rule_reproduces_the_definition_on_held_out_digits() -> None:
    meta, s = _digits_splits()
    assert meta.derived_attributes == ["thickness"]
    rule = fit_rules(meta, [s["train"], s["val"]])["thickness"]
    pred = rule.predict(s["test"].images, s["test"].labels)
    # The labels were set on the 8x8 sources; the cut is fitted at 16x16, so a few digits at the median flip.
    assert (pred == s["test"].attributes["thickness"].numpy()).mean() >= 0.98
    # More ink means thick: half as much ink again moves a digit the rule calls thin across its class's cut.
    thin = int(np.flatnonzero(pred == 0)[0])
    x, y = s["test"].images[thin : thin + 1], s["test"].labels[thin : thin + 1]
    inked = ((x + 1) / 2 * 1.5).clamp(0, 1) * 2 - 1
    assert rule.predict(inked, y)[0] == 1


def test_rule_uses_the_class_it_is_given() -> None:
    rule = AttributeRule("thickness", np.array([10.0, 100.0]))
    img = torch.full((1, 1, 4, 4), 1.0)  # ink 16 in [0, 1] units
    assert rule.predict(img, np.array([0]))[0] == 1
    assert rule.predict(img, np.array([1]))[0] == 0


def test_apply_rules_replaces_reads_and_keeps_the_heads() -> None:
    head = np.array([0, 0, 1])
    judged = Judged(
        probs={"thickness": np.eye(2)[head], "class": np.eye(2)[[0, 1, 1]]},
        preds={"thickness": head, "class": np.array([0, 1, 1])},
        feats=np.zeros((3, 4)),
    )
    rule = AttributeRule("thickness", np.array([5.0, 5.0]))
    images = torch.stack([torch.full((1, 2, 2), v) for v in (1.0, 1.0, -1.0)])  # ink 4, 4, 0
    out = apply_rules(judged, images, np.array([0, 1, 1]), {"thickness": rule})
    np.testing.assert_array_equal(out.preds["thickness"], [0, 0, 0])
    np.testing.assert_array_equal(out.preds["thickness" + EVALUATOR_SUFFIX], head)
    np.testing.assert_array_equal(out.probs["thickness"], np.eye(2)[[0, 0, 0]])
    np.testing.assert_array_equal(out.preds["class"], judged.preds["class"])
    assert apply_rules(judged, images, np.array([0, 1, 1]), {}) is judged
