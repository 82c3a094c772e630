"""Representation, error correction, bias amplification and per-group quality on constructed data,
where the right answer is known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffaudit.audit.bias import bias_amplification
from diffaudit.audit.fairness import (
    confusion_counts,
    correct,
    discrepancies,
    distribution,
    percentile_ci,
    pooled_shares,
    representation,
    row_normalise,
    stratified_shares,
)
from diffaudit.audit.per_group import frechet_distance, per_group_quality


def test_distribution_zero_fills_absent_groups() -> None:
    np.testing.assert_allclose(distribution(np.array([0, 0, 2, 2]), 4), [0.5, 0.0, 0.5, 0.0])


def test_discrepancies_match_hand_computation() -> None:
    d = discrepancies(np.array([0.7, 0.3]), np.array([0.5, 0.5]))
    assert d["fd_l2"] == pytest.approx(math.sqrt(0.2**2 + 0.2**2))
    assert d["tv"] == pytest.approx(0.2)
    assert d["kl"] == pytest.approx(0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.5))
    same = discrepancies(np.array([0.25, 0.75]), np.array([0.25, 0.75]))
    assert all(v == pytest.approx(0.0) for v in same.values())
    # An absent group contributes 0 log 0 = 0 to KL, and its full share to FD and TV.
    gone = discrepancies(np.array([1.0, 0.0]), np.array([0.5, 0.5]))
    assert gone["kl"] == pytest.approx(math.log(2)) and gone["tv"] == pytest.approx(0.5)


def test_discrepancies_are_batched() -> None:
    p = np.array([[0.7, 0.3], [0.5, 0.5]])
    np.testing.assert_allclose(discrepancies(p, np.array([0.5, 0.5]))["tv"], [0.2, 0.0])


def test_correction_recovers_known_distribution_from_known_confusion() -> None:
    c = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.0, 0.3, 0.7]])  # rows true, columns predicted
    p_true = np.array([0.2, 0.5, 0.3])
    p_obs = c.T @ p_true
    assert not np.allclose(p_obs, p_true)
    np.testing.assert_allclose(correct(p_obs, c * 100), p_true, atol=1e-12)  # counts or rates alike


def test_correction_recovers_truth_from_sampled_labels() -> None:
    rng = np.random.default_rng(0)
    c = np.array([[0.95, 0.05], [0.25, 0.75]])
    truth = rng.choice(2, size=20000, p=[0.3, 0.7])
    observed = np.array([rng.choice(2, p=c[t]) for t in truth])
    assert distribution(observed, 2)[1] == pytest.approx(0.7 * 0.75 + 0.3 * 0.05, abs=0.01)
    np.testing.assert_allclose(correct(distribution(observed, 2), c), [0.3, 0.7], atol=0.015)


def test_correction_clips_and_renormalises() -> None:
    c = np.array([[0.9, 0.1], [0.1, 0.9]])
    p = correct(np.array([0.02, 0.98]), c)  # below what the matrix can produce: a negative solution, clipped
    assert (p >= 0).all() and p.sum() == pytest.approx(1.0) and p[1] == pytest.approx(1.0)


def test_row_normalise_keeps_identity_for_unseen_groups() -> None:
    np.testing.assert_allclose(row_normalise(np.array([[3.0, 1.0], [0.0, 0.0]])), [[0.75, 0.25], [0.0, 1.0]])
    np.testing.assert_array_equal(
        confusion_counts(np.array([0, 0, 1]), np.array([0, 1, 1]), 2), [[1, 1], [0, 1]]
    )


def test_percentile_ci() -> None:
    lo, hi = percentile_ci(np.arange(1001, dtype=float), 0.95)
    assert lo == pytest.approx(25.0) and hi == pytest.approx(975.0)
    assert all(math.isnan(x) for x in percentile_ci(np.array([]), 0.95))


def test_representation_separates_a_skew_from_noise() -> None:
    rng = np.random.default_rng(1)
    perfect = np.diag([50.0, 50.0])
    ref = np.array([0.5, 0.5])
    skewed = rng.choice(2, size=500, p=[0.75, 0.25])
    balanced = rng.choice(2, size=500, p=[0.5, 0.5])
    rs = representation(pooled_shares(skewed, perfect, ref, 500, rng), ref, ["thin", "thick"], 0.95)
    rb = representation(pooled_shares(balanced, perfect, ref, 500, rng), ref, ["thin", "thick"], 0.95)
    for r in (rs, rb):
        for key in ("raw", "corrected"):
            s = r[key]["fd_l2"]
            assert s["ci"][0] <= s["value"] <= s["ci"][1]
    assert rs["corrected"]["fd_l2"]["exceeds_null"] and rs["corrected"]["fd_l2"]["value"] > 0.3
    assert not rb["corrected"]["fd_l2"]["exceeds_null"]


def test_representation_corrects_a_biased_classifier() -> None:
    """Truly balanced images seen by a classifier that calls 30% of 'thick' ones 'thin'."""
    rng = np.random.default_rng(2)
    truth = rng.choice(2, size=4000)
    pred = np.where((truth == 1) & (rng.random(4000) < 0.3), 0, truth)
    conf = confusion_counts(truth[:2000], pred[:2000], 2)  # "held-out" half
    ref = np.array([0.5, 0.5])
    r = representation(pooled_shares(pred[2000:], conf, ref, 300, rng), ref, ["thin", "thick"], 0.95)
    assert r["raw"]["fd_l2"]["value"] > 0.15  # the classifier's own error looks like a skew
    assert r["corrected"]["fd_l2"]["value"] < 0.05
    assert r["p_gen_corrected_ci"][1][0] < 0.5 < r["p_gen_corrected_ci"][1][1]


def _constructed_ba(p_gen_thick_class0: float, n: int = 400) -> dict:
    rng = np.random.default_rng(3)
    classes = ["0", "1"]
    train_labels = np.repeat([0, 1], 200)
    train_attr = np.tile([0, 1], 200)  # p_train(thick | c) = 0.5 for both classes
    gen_labels = np.repeat([0, 1], n // 2)
    gen_attr = np.concatenate([rng.random(n // 2) < p_gen_thick_class0, rng.random(n // 2) < 0.5]).astype(int)
    test_labels, test_attr = np.repeat([0, 1], 100), np.tile([0, 1], 100)
    _, per_class = stratified_shares(
        gen_attr, gen_labels, test_attr, test_attr, test_labels, np.array([0.5, 0.5]), 10, 500, rng
    )
    return bias_amplification(
        per_class, train_labels, train_attr, classes, ["thin", "thick"], correct_errors=True, level=0.95
    )


def test_stratified_correction_uses_each_class_own_errors() -> None:
    """A judge that misses 'thick' only in class 0 (where it was rare in its training data): one pooled
    matrix would spread that error over both classes; per-class matrices undo it where it happens."""
    rng = np.random.default_rng(7)
    n = 20000
    cls = np.repeat([0, 1], n // 2)
    truth = (rng.random(n) < np.where(cls == 0, 0.2, 0.5)).astype(int)
    miss = (cls == 0) & (truth == 1) & (rng.random(n) < 0.5)
    pred = np.where(miss, 0, truth)
    held = rng.random(n) < 0.5
    ref = np.array([0.5, 0.5])
    whole, per = stratified_shares(
        pred[~held], cls[~held], truth[held], pred[held], cls[held], ref, 10, 200, rng
    )
    assert per[0].correction == "per_class" and whole.correction == "per_class"
    assert per[0].corrected[1] == pytest.approx(0.2, abs=0.03) and per[1].corrected[1] == pytest.approx(
        0.5, abs=0.03
    )
    assert whole.corrected[1] == pytest.approx(0.35, abs=0.03)
    np.testing.assert_allclose(whole.raw, distribution(pred[~held], 2))
    pooled = pooled_shares(pred[~held], confusion_counts(truth[held], pred[held], 2), ref, 0, rng)
    assert pooled.corrected[1] == pytest.approx(0.35, abs=0.03)  # right on the whole here, but not per class
    _, fallback = stratified_shares(
        pred[~held], cls[~held], truth[held], pred[held], cls[held], ref, 10**6, 0, rng
    )
    assert fallback[0].correction == "pooled"


def test_bias_amplification_on_constructed_distributions() -> None:
    r = _constructed_ba(0.2)
    cell = next(c for c in r["cells"] if c["class"] == "0" and c["group"] == "thick")
    p_gen = cell["p_gen_raw"]  # a perfect evaluator: corrected == raw
    assert cell["p_gen"] == pytest.approx(p_gen) and cell["p_train"] == pytest.approx(0.5)
    assert cell["ba"] == pytest.approx(p_gen - 0.5) and cell["ba"] < -0.2
    assert cell["clear_of_zero"] and cell["ci"][1] < 0 and cell["confusion"] == "per_class"
    head = r["max_abs_ba"]
    assert head["class"] == "0" and head["plug_in"] == pytest.approx(abs(cell["ba"]))
    assert head["ci"][0] <= head["value"] <= head["ci"][1]
    assert head["ci"][0] > 0.2


def test_no_amplification_when_the_model_copies_its_data() -> None:
    r = _constructed_ba(0.5)
    assert r["max_abs_ba"]["value"] < 0.15
    assert not r["max_abs_ba"]["clear_of_zero"]


def test_frechet_distance_closed_form() -> None:
    """b = 2a + 1: mean shift mean(a) + 1, covariance 4S, so FD = |mean(a) + 1|^2 + tr(S + 4S - 2 * 2S)."""
    a = np.random.default_rng(4).normal(size=(300, 5))
    expected = ((a.mean(0) + 1) ** 2).sum() + np.trace(np.cov(a, rowvar=False))
    assert frechet_distance(a, 2 * a + 1) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_metricframe_figures_equal_hand_computation() -> None:
    rng = np.random.default_rng(5)
    n = 120
    groups = np.array(["thin", "thick", "tiny"])[np.r_[np.zeros(70, int), np.ones(45, int), np.full(5, 2)]]
    hit = (rng.random(n) < np.where(groups == "thin", 0.9, 0.6)).astype(float)
    confidence = rng.random(n)
    gen = rng.normal(size=(n, 3))
    real = rng.normal(size=(200, 3))
    real_groups = np.array(["thin", "thick"])[np.arange(200) % 2]
    r = per_group_quality(
        groups,
        hit=hit,
        confidence=confidence,
        gen_feats=gen,
        real_feats=real,
        real_groups=real_groups,
        k=3,
        min_group_size=20,
        min_group_size_fid=40,
        n_boot=200,
        level=0.95,
        rng=rng,
    )
    assert r["excluded_small_groups"] == ["tiny"] and r["sizes"]["tiny"] == 5
    assert set(r["by_group"]) == {"thin", "thick"}
    for g in ("thin", "thick"):
        sel = groups == g
        assert r["by_group"][g]["conditional_accuracy"] == pytest.approx(hit[sel].mean())
        assert r["by_group"][g]["confidence"] == pytest.approx(confidence[sel].mean())
        # precision by hand: inside the 3-NN ball of any real point
        d_real = np.linalg.norm(real[:, None] - real[None], axis=-1)
        radii = np.sort(d_real, axis=1)[:, 3]
        inside = (np.linalg.norm(gen[sel][:, None] - real[None], axis=-1) <= radii[None]).any(1)
        assert r["by_group"][g]["precision"] == pytest.approx(inside.mean())
        # recall by hand: real images of the group inside the generated group's balls
        fake = gen[sel]
        fr = np.sort(np.linalg.norm(fake[:, None] - fake[None], axis=-1), axis=1)[:, 3]
        rg = real[real_groups == g]
        rec = (np.linalg.norm(rg[:, None] - fake[None], axis=-1) <= fr[None]).any(1).mean()
        assert r["by_group"][g]["recall"] == pytest.approx(rec)
        assert r["by_group"][g]["fid"] == pytest.approx(frechet_distance(fake, rg))
    kept = groups != "tiny"
    assert r["overall"]["conditional_accuracy"] == pytest.approx(hit[kept].mean())
    acc = [hit[groups == g].mean() for g in ("thin", "thick")]
    gap = r["gap"]["conditional_accuracy"]
    assert gap["plug_in"] == pytest.approx(abs(acc[0] - acc[1])) and gap["method"] == "inversion"
    assert gap["worst_group"] == "thick" and gap["ci"][0] <= gap["value"] <= gap["ci"][1]


def test_fid_per_group_needs_enough_images() -> None:
    rng = np.random.default_rng(6)
    groups = np.array(["a"] * 30 + ["b"] * 30)
    r = per_group_quality(
        groups,
        hit=np.ones(60),
        confidence=np.ones(60),
        gen_feats=rng.normal(size=(60, 2)),
        real_feats=rng.normal(size=(60, 2)),
        real_groups=groups,
        k=3,
        min_group_size=10,
        min_group_size_fid=50,
        n_boot=0,
        level=0.95,
        rng=rng,
    )
    assert math.isnan(r["by_group"]["a"]["fid"]) and not math.isnan(r["overall"]["fid"])
    assert r["gap"]["conditional_accuracy"]["value"] == 0.0
