"""Bias amplification's three measures (audit/bias.py) on hand-made shares with known answers, their
intervals, and the gate configured on each (docs/fairness.md, "Bias amplification")."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from diffaudit.audit.bias import bias_amplification, wang_russakovsky, zhao
from diffaudit.audit.fairness import Shares, stratified_shares
from diffaudit.audit.fairness_report import headline, pick_abs
from diffaudit.audit.gates import evaluate_gates, measurements
from diffaudit.config.audit_schema import AuditCfg, GatesCfg
from diffaudit.config.compose import compose_config
from diffaudit.errors import ConfigError
from diffaudit.results.fairness import BiasAmplification, BiasAmpMeasure, FairnessReport, Headline
from diffaudit.results.privacy import PrivacyResult
from tests.helpers.config import ROOT

GROUPS = ["g0", "g1"]


def _train(rows: list[list[float]], counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Training labels and attributes with exactly p_train(a|c) = rows[c] and counts[c] images of class c."""
    labels, attrs = [], []
    for c, (p, n) in enumerate(zip(rows, counts, strict=True)):
        per_group = np.rint(np.asarray(p) * n).astype(int)
        assert per_group.sum() == n and np.allclose(per_group / n, p)
        labels += [c] * n
        attrs += [a for a, m in enumerate(per_group) for _ in range(m)]
    return np.array(labels), np.array(attrs)


def _shares(p: list[float], rng: np.random.Generator, n: int = 400, n_boot: int = 400) -> Shares:
    """Generated shares exactly `p` (raw = corrected: a perfect evaluator), with multinomial replicates."""
    p_ = np.asarray(p, dtype=np.float64)
    boot = rng.multinomial(n, p_, size=n_boot) / n
    return Shares(
        n=n, raw=p_, corrected=p_, boot_raw=boot, boot_corrected=boot, null_raw=boot, null_corrected=boot
    )


def _ba(train: list[list[float]], gen: list[list[float]], counts: list[int] | None = None) -> dict:
    rng = np.random.default_rng(0)
    labels, attrs = _train(train, counts or [100] * len(train))
    per_class = {c: _shares(p, rng) for c, p in enumerate(gen)}
    names = [str(c) for c in range(len(train))]
    out = bias_amplification(per_class, labels, attrs, names, GROUPS, correct_errors=True, level=0.95)
    BiasAmplification.model_validate(out)  # what the producer returns is a valid result
    return out


# (train p(a|c), generated p(a|c), Wang & Russakovsky, Zhao et al., worst cell), balanced classes.
KNOWN = {
    "amplified": ([[0.7, 0.3], [0.4, 0.6]], [[0.8, 0.2], [0.3, 0.7]], 0.1, 0.1, 0.1),
    "balanced_train": ([[0.5, 0.5], [0.5, 0.5]], [[0.7, 0.3], [0.5, 0.5]], 0.0, 0.0, 0.2),
    "reversed": ([[0.7, 0.3], [0.3, 0.7]], [[0.3, 0.7], [0.7, 0.3]], -0.4, -0.4, 0.4),
}


@pytest.mark.parametrize("case", sorted(KNOWN))
def test_known_answers(case: str) -> None:
    train, gen, wr, zh, worst = KNOWN[case]
    r = _ba(train, gen)
    assert r["wang_russakovsky"]["value"] == pytest.approx(wr, abs=1e-12)
    assert r["zhao"]["value"] == pytest.approx(zh, abs=1e-12)
    assert r["max_abs_ba"]["plug_in"] == pytest.approx(worst, abs=1e-12)
    lo, hi = r["max_abs_ba"]["ci"]
    assert lo <= r["max_abs_ba"]["value"] <= hi and r["max_abs_ba"]["method"] == "inversion"
    assert r["wang_russakovsky"]["n_cells"] == 4
    # Zhao et al. sum only the cells the training data over-represents: none when it is balanced.
    assert r["zhao"]["n_cells"] == (0 if case == "balanced_train" else 2)


def test_class_weights_decide_the_direction() -> None:
    """Wang & Russakovsky's y_ac compares p_train(a, c) with p_train(a) p_train(c), so p_train(c) matters.

    p_train(g1|c) = .2, .5, .8; the model moves class 1 from [.5, .5] to [.4, .6] and copies the others.
    Balanced (20 images per class): p_train(g1) = .5, so neither group is associated with class 1
    (strict >): both its terms are -D, -(-.1) - (+.1) = 0, and BiasAmp = 0.
    60/20/20 images: p_train(g1) = (12 + 10 + 16) / 100 = .38 < .5, so g1 is associated with class 1
    (y = 1) and g0 is not (.5 < .62, y = 0): terms +.1 and -(-.1) = +.1, BiasAmp = .2 / 6 = 1/30.
    Zhao et al. use b(o, g) = p(g|o) only: 0 either way (class 1 has no over-represented group, and the
    classes that have one are copied)."""
    train = [[0.8, 0.2], [0.5, 0.5], [0.2, 0.8]]
    gen = [[0.8, 0.2], [0.4, 0.6], [0.2, 0.8]]
    balanced, unbalanced = _ba(train, gen, [20, 20, 20]), _ba(train, gen, [60, 20, 20])
    assert balanced["wang_russakovsky"]["value"] == pytest.approx(0.0, abs=1e-12)
    assert unbalanced["wang_russakovsky"]["value"] == pytest.approx(1 / 30, abs=1e-12)
    assert balanced["zhao"]["value"] == pytest.approx(0.0, abs=1e-12)
    assert unbalanced["zhao"]["value"] == pytest.approx(0.0, abs=1e-12)
    assert balanced["zhao"]["n_cells"] == unbalanced["zhao"]["n_cells"] == 2
    assert balanced["max_abs_ba"]["plug_in"] == unbalanced["max_abs_ba"]["plug_in"] == pytest.approx(0.1)


def test_replicates_in_one_call_equal_one_at_a_time() -> None:
    rng = np.random.default_rng(1)
    p_train = np.array([[0.7, 0.3], [0.4, 0.6]])
    boots = rng.dirichlet([2.0, 2.0], size=(50, 2))
    positive, over = p_train > 0.55, p_train > 0.5
    for fn, mask in ((wang_russakovsky, positive), (zhao, over)):
        whole = fn(p_train, boots, mask)
        assert whole.shape == (50,)
        np.testing.assert_allclose(whole, [fn(p_train, b, mask) for b in boots])


def _constructed(seed: int, p_thick: tuple[float, float], n: int = 120) -> dict:
    """Shares through a noisy per-class correction (a judge that misses thick digits), so the corrected
    replicates are clipped and skewed: the intervals must still hold their estimates."""
    rng = np.random.default_rng(seed)
    train_labels = np.repeat([0, 1], [300, 100])
    train_attr = (rng.random(400) < np.where(train_labels == 0, 0.2, 0.6)).astype(int)
    gen_labels = np.repeat([0, 1], n)
    gen_true = (rng.random(2 * n) < np.repeat(p_thick, n)).astype(int)
    miss = rng.random(2 * n) < 0.3
    gen_pred = np.where((gen_true == 1) & miss, 0, gen_true)
    test_labels = np.repeat([0, 1], 60)
    test_true = rng.integers(0, 2, 120)
    test_pred = np.where((test_true == 1) & (rng.random(120) < 0.3), 0, test_true)
    _, per_class = stratified_shares(
        gen_pred, gen_labels, test_true, test_pred, test_labels, np.array([0.5, 0.5]), 10, 300, rng, prior=2.0
    )
    return {
        est: bias_amplification(
            per_class, train_labels, train_attr, ["0", "1"], GROUPS, correct_errors=est, level=0.95
        )
        for est in (True, False)
    }


@pytest.mark.parametrize("seed", range(6))
def test_every_interval_holds_its_estimate_and_names_its_method(seed: int) -> None:
    for r in _constructed(seed, (0.02, 0.9) if seed % 2 else (0.3, 0.5)).values():
        for key in ("wang_russakovsky", "zhao"):
            m = r[key]
            assert m["ci"][0] <= m["value"] <= m["ci"][1], (key, m)
            assert m["method"] in ("percentile", "percentile_widened")
        BiasAmplification.model_validate(r)


def test_amplification_is_caught_with_an_interval_clear_of_zero() -> None:
    """Training: thick is rare in class 0 (.2) and common in class 1 (.6); a model at .02 / .9 amplifies."""
    r = _constructed(3, (0.02, 0.9))[False]  # raw: the judge's misses shrink it but keep the sign
    assert r["wang_russakovsky"]["ci"][0] > 0 and r["zhao"]["ci"][0] > 0
    assert r["wang_russakovsky"]["method"] == r["zhao"]["method"] == "percentile"


def test_an_interval_that_misses_its_estimate_is_widened_and_says_so() -> None:
    """Replicates all above the estimate (a skewed bootstrap): the percentile interval would exclude it."""
    train = [[0.7, 0.3], [0.4, 0.6]]
    labels, attrs = _train(train, [100, 100])
    p = np.array([0.8, 0.2])
    shifted = np.tile([0.9, 0.1], (200, 1))
    sh = Shares(100, p, p, boot_raw=shifted, boot_corrected=shifted, null_raw=shifted, null_corrected=shifted)
    r = bias_amplification({0: sh}, labels, attrs, ["0", "1"], GROUPS, correct_errors=True, level=0.95)
    wr = r["wang_russakovsky"]
    assert wr["value"] == pytest.approx(0.1) and wr["ci"] == [pytest.approx(0.1), pytest.approx(0.2)]
    assert wr["method"] == "percentile_widened" and wr["ci"][0] <= wr["value"]


def test_the_result_model_rejects_an_interval_without_its_estimate() -> None:
    ok = {"value": 0.1, "ci": [0.0, 0.2], "method": "percentile", "n_cells": 4}
    BiasAmpMeasure.model_validate(ok)
    BiasAmpMeasure.model_validate(ok | {"ci": [float("nan")] * 2})  # no replicates: nothing to check
    with pytest.raises(pydantic.ValidationError, match="does not contain its estimate"):
        BiasAmpMeasure.model_validate(ok | {"ci": [0.15, 0.3]})
    with pytest.raises(pydantic.ValidationError):
        BiasAmpMeasure.model_validate(ok | {"method": "bca"})
    with pytest.raises(pydantic.ValidationError):
        BiasAmpMeasure.model_validate({k: v for k, v in ok.items() if k != "method"})


def test_signed_measures_are_read_by_their_absolute_value() -> None:
    neg = {"value": -0.4, "ci": [-0.5, -0.3]}
    assert pick_abs(neg, "estimate") == pytest.approx(0.4)
    assert pick_abs(neg, "ci_low") == pytest.approx(0.3) and pick_abs(neg, "ci_high") == pytest.approx(0.5)
    across = {"value": 0.05, "ci": [-0.1, 0.2]}
    assert pick_abs(across, "ci_low") == 0.0 and pick_abs(across, "ci_high") == pytest.approx(0.2)
    assert np.isnan(pick_abs({"value": 0.1, "ci": [float("nan")] * 2}, "ci_high"))


def _gate(case: str, measure: str, threshold: float, statistic: str = "estimate") -> tuple:
    """The bias amplification gate's verdict on a one-attribute report of KNOWN[case]."""
    train, gen, *_ = KNOWN[case]
    gates = GatesCfg(max_abs_bias_amplification=threshold, bias_amplification_measure=measure)
    cfg = AuditCfg(gates=gates, gate_statistic=statistic)
    report = {"representation": {}, "per_group": {}, "bias_amplification": {"thickness": _ba(train, gen)}}
    head = Headline.model_validate(headline(report, cfg))
    fairness = FairnessReport.model_construct(headline=head)
    privacy = PrivacyResult.model_construct(ratio=1 / 3, memorization={}, near_copies={}, membership=None)
    verdicts = evaluate_gates(gates, measurements(fairness, privacy, None))
    return head.bias_amplification, next(v for v in verdicts if v.gate == "bias_amplification")


@pytest.mark.parametrize(
    ("case", "measure", "value", "passed"),
    [
        ("balanced_train", "worst_cell", 0.2, False),  # one class pushed off balance: the worst cell fails
        ("balanced_train", "wang_russakovsky", 0.0, True),  # ... the papers see no amplification
        ("balanced_train", "zhao", 0.0, True),
        ("reversed", "worst_cell", 0.4, False),
        ("reversed", "wang_russakovsky", 0.4, False),  # -0.4: a reversed association fails as well
        ("reversed", "zhao", 0.4, False),
        ("amplified", "wang_russakovsky", 0.1, True),
    ],
)
def test_the_gate_reads_the_configured_measure(case: str, measure: str, value: float, passed: bool) -> None:
    fig, verdict = _gate(case, measure, threshold=0.15)
    assert fig.measure == measure and fig.where == "thickness"
    # The worst cell is gated on its median-unbiased estimate, near the plug-in here; the papers' measures
    # are linear, their estimate is the plug-in.
    tol = 0.02 if measure == "worst_cell" else 1e-12
    assert verdict.gate == "bias_amplification" and verdict.value == pytest.approx(value, abs=tol)
    assert verdict.passed is passed
    label = {"worst_cell": "worst cell |BA|", "wang_russakovsky": "Wang & Russakovsky", "zhao": "Zhao"}
    assert label[measure] in verdict.source and "thickness" in verdict.source
    if measure != "worst_cell":  # the headline keeps the signed statistic beside the gated |x|
        assert fig.estimate == pytest.approx(-value if case == "reversed" else value, abs=1e-12)
        assert fig.signed_ci is not None and fig.signed_ci[0] <= fig.estimate <= fig.signed_ci[1]
        assert fig.ci is not None and fig.ci[0] <= fig.value <= fig.ci[1]  # the interval of |x|


def test_the_gate_reads_an_interval_end_of_the_absolute_value() -> None:
    fig, verdict = _gate("reversed", "zhao", threshold=0.15, statistic="ci_low")
    assert fig.signed_ci is not None and fig.signed_ci[1] < 0  # clearly negative: |x| >= |ci_high|
    assert verdict.value == pytest.approx(abs(fig.signed_ci[1])) == pytest.approx(fig.ci[0])
    assert not verdict.passed


def test_the_default_gate_is_the_worst_cell() -> None:
    assert GatesCfg().bias_amplification_measure == "worst_cell"
    raw = compose_config([], ROOT / "conf")
    assert raw["audit"]["gates"]["bias_amplification_measure"] == "worst_cell"


def test_a_bad_measure_is_rejected() -> None:
    with pytest.raises(pydantic.ValidationError, match="bias_amplification_measure"):
        GatesCfg(bias_amplification_measure="mean")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bias_amplification_measure"):
        compose_config(["audit.gates.bias_amplification_measure=max"], ROOT / "conf")
