"""Release gates, the mitigation sampler, the audit config, and the audit stage on the tiny run."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from diffaudit.audit.gates import evaluate_gates, measurements, report
from diffaudit.audit.mitigation import balanced_selection, target_counts
from diffaudit.config.audit_schema import AuditCfg, GatesCfg
from diffaudit.config.compose import compose_config
from diffaudit.config.schema import Config
from diffaudit.errors import ConfigError
from diffaudit.results import (
    FairnessResult,
    GateEntry,
    GatesResult,
    PrivacyResult,
    QualityResult,
    read_result,
)
from diffaudit.results.fairness import BAHeadlineFigure, FairnessReport, Headline, HeadlineFigure
from diffaudit.results.intervals import Interval
from diffaudit.results.privacy import Share, SpaceMemorization, SpaceNearCopies
from tests.helpers.config import ROOT, TinyRun


def test_gates_compare_each_value_with_its_threshold() -> None:
    cfg = GatesCfg(
        min_conditional_accuracy=0.8,
        max_fid_over_floor=None,
        max_fairness_discrepancy=0.1,
        max_abs_bias_amplification=0.2,
        max_worst_group_gap=0.1,
        max_memorized_fraction=0.05,
    )
    measured = {
        "conditional_accuracy": (0.79, "q"),
        "fid_over_floor": (99.0, "q"),
        "fairness_discrepancy": (0.1, "thickness"),
        "bias_amplification": (0.35, "thickness"),
        "worst_group_gap": (float("nan"), "thickness"),
    }
    verdicts = {v.gate: v for v in evaluate_gates(cfg, measured)}
    assert "fid_over_floor" not in verdicts  # threshold null: not evaluated
    assert "near_copy_fraction" not in verdicts  # null by default
    near = evaluate_gates(
        GatesCfg(max_near_copy_fraction=0.01), measured | {"near_copy_fraction": (0.02, "pixel")}
    )
    assert [v.passed for v in near if v.gate == "near_copy_fraction"] == [False]
    assert not verdicts["conditional_accuracy"].passed  # >= 0.8
    assert verdicts["fairness_discrepancy"].passed  # <= is inclusive
    assert not verdicts["bias_amplification"].passed
    assert not verdicts["worst_group_gap"].passed  # NaN: not measured fails
    assert not verdicts["memorized_fraction"].passed and verdicts["memorized_fraction"].value is None
    msg = verdicts["bias_amplification"].message()
    assert "bias_amplification" in msg and "0.35" in msg and "0.2" in msg and "FAILED" in msg
    r = report(list(verdicts.values()))
    assert isinstance(r, GatesResult)
    assert not r.passed and set(r.failed) == {
        "conditional_accuracy",
        "bias_amplification",
        "worst_group_gap",
        "memorized_fraction",
    }
    assert r.gates["fairness_discrepancy"] == GateEntry(
        value=0.1, threshold=0.1, op="<=", passed=True, source="thickness"
    )
    assert list(r.failed_gates()) == r.failed
    assert "with_mitigation" not in r.dump()  # absent, not null, until the audit stage adds it


def test_measurements_read_the_reports() -> None:
    # Only the parts measurements() reads (model_construct: the rest of each file does not matter here).
    fig = {
        gate: HeadlineFigure(value=v, where="thickness")
        for gate, v in (("fairness_discrepancy", 0.3), ("worst_group_gap", 0.02))
    }
    fig["bias_amplification"] = BAHeadlineFigure(value=0.1, where="thickness", measure="worst_cell")
    fairness = FairnessReport.model_construct(
        headline=Headline(estimate="corrected", statistic="estimate", **fig)
    )
    privacy = PrivacyResult.model_construct(
        ratio=1 / 3,
        memorization={
            "pixel": SpaceMemorization.model_construct(fraction=0.01),
            "feature": SpaceMemorization.model_construct(fraction=0.04),
        },
        near_copies={
            space: SpaceNearCopies.model_construct(
                percentile=1.0, threshold=t, fraction=Share.model_construct(value=v, ci=[v, v])
            )
            for space, t, v in (("pixel", 1.5, 0.02), ("feature", 0.7, 0.01))
        },
        membership=None,
    )
    quality = QualityResult.model_construct(
        feature_space="evaluator",
        fid_evaluator=3.0,
        fid_evaluator_floor=1.0,
        conditional_accuracy=0.9,
        conditional_accuracy_ci=None,
    )
    m = measurements(fairness, privacy, quality)
    assert m["fairness_discrepancy"][:2] == (0.3, "thickness, corrected, estimate")
    assert m["bias_amplification"][:2] == (0.1, "thickness, worst cell |BA|, corrected, estimate")
    assert m["memorized_fraction"][0] == 0.04 and "feature" in m["memorized_fraction"][1]
    assert m["near_copy_fraction"] == (0.02, "pixel space, DCR < 1.5 (1 % of held-out DCRs)", [0.02, 0.02])
    assert m["fid_over_floor"] == (pytest.approx(2.0), "fid_evaluator - fid_evaluator_floor, quality.json")
    assert m["conditional_accuracy"][0] == 0.9
    inception = QualityResult.model_construct(
        feature_space="inception",
        fid_inception=5.0,
        fid_inception_floor=4.0,
        conditional_accuracy=0.9,
        conditional_accuracy_ci=Interval(low=0.85, high=0.95, method="percentile"),
    )
    assert measurements(fairness, privacy, inception)["fid_over_floor"] == (
        pytest.approx(1.0),
        "fid_inception - fid_inception_floor, quality.json",
    )
    assert measurements(fairness, privacy, inception)["conditional_accuracy"][2] == [0.85, 0.95]
    assert "fid_over_floor" not in measurements(fairness, privacy, None)  # no quality file: not measured


def test_target_counts_sum_to_n() -> None:
    assert target_counts(7, np.array([0.5, 0.5])).tolist() == [4, 3]
    assert target_counts(10, np.array([0.2, 0.3, 0.5])).tolist() == [2, 3, 5]


def _fake_draw(p_thick: dict[int, float], seed: int = 0):
    """A 'generator' whose images are their class id and whose attribute is thick with p_thick[class]."""
    rng = np.random.default_rng(seed)
    calls: list[int] = []

    def draw(labels: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        calls.append(len(labels))
        attr = np.array([rng.random() < p_thick[int(c)] for c in labels], dtype=np.int64)
        return labels.float().reshape(-1, 1, 1, 1), attr

    return draw, calls


def test_balanced_selection_reaches_the_target() -> None:
    p = {0: 0.1, 1: 0.5}
    draw, calls = _fake_draw(p)
    labels = torch.repeat_interleave(torch.arange(2), 40)
    images, attr = draw(labels)
    calls.clear()
    out_img, out_lab, out_attr, info = balanced_selection(
        images, labels, attr, np.array([0.5, 0.5]), draw, oversample=10.0, max_rounds=6
    )
    assert (torch.bincount(out_lab) == 40).all(), "same count per class as before"
    for c in (0, 1):
        assert np.bincount(out_attr[out_lab.numpy() == c], minlength=2).tolist() == [20, 20]
        assert (out_img[out_lab == c] == c).all()
    assert info["per_class"][0]["extra_draws"] > info["per_class"][1]["extra_draws"]
    assert info["extra_draws"] == sum(calls) and not info["classes_short"]


def test_balanced_selection_reports_a_shortfall_within_budget() -> None:
    draw, _ = _fake_draw({0: 0.0})
    labels = torch.zeros(20, dtype=torch.long)
    images, attr = draw(labels)
    _, out_lab, out_attr, info = balanced_selection(
        images, labels, attr, np.array([0.5, 0.5]), draw, oversample=2.0, max_rounds=3
    )
    assert len(out_lab) == 20 and out_attr.sum() == 0
    assert info["classes_short"] == [0] and info["per_class"][0]["shortfall"] == 10
    assert info["per_class"][0]["extra_draws"] == 20  # the budget: 2x the class's count in all


def test_audit_config_defaults_and_strictness() -> None:
    raw = compose_config([], ROOT / "conf")
    cfg = AuditCfg.model_validate(raw["audit"])
    assert cfg.reference == "uniform" and cfg.gates.max_fairness_discrepancy == 0.1
    assert math.isclose(cfg.memorization_ratio, 1 / 3)
    with pytest.raises(ConfigError, match="audit.gates.max_fd"):
        compose_config(["+audit.gates.max_fd=0.1"], ROOT / "conf")
    with pytest.raises(ConfigError, match="audit.reference"):
        compose_config(["audit.reference=test"], ROOT / "conf")


def test_biased_experiment_composes() -> None:
    raw = compose_config(["experiment=biased_digits"], ROOT / "conf")
    assert raw["data"]["bias"] == {
        "attribute": "thickness",
        "group": 1,
        "keep_fraction": 0.1,
        "classes": [0, 1, 2, 3, 4],
    }
    assert raw["audit"] == compose_config([], ROOT / "conf")["audit"], "same audit as the default"


def _audit_cfg(run: TinyRun, out: Path, **audit: object) -> Config:
    """The tiny run's config with audit settings changed and metrics/plots redirected to `out`, with its own
    MLflow store (the tiny run's is shared: another pipeline in it would change what later tests read)."""
    (out / "metrics").mkdir(parents=True, exist_ok=True)
    shutil.copy(run.root / "metrics" / "quality.json", out / "metrics" / "quality.json")
    cfg = run.cfg
    paths = cfg.paths.model_copy(update={"metrics": str(out / "metrics"), "plots": str(out / "plots")})
    store = cfg.tracking.model_copy(update={"uri": f"sqlite:///{out / 'mlflow.db'}"})
    return cfg.model_copy(
        update={"paths": paths, "tracking": store, "audit": cfg.audit.model_copy(update=audit)}
    )


def test_audit_stage_writes_verdicts_and_fails_on_gate(tiny_run: TinyRun, tmp_path: Path) -> None:
    from diffaudit.errors import GateFailedError
    from pipelines import audit

    # The tiny model cannot draw digits: conditional accuracy fails its gate.
    cfg = _audit_cfg(tiny_run, tmp_path, fail_on_gate=True, bootstrap=100)
    with pytest.raises(
        GateFailedError, match=r"gate conditional_accuracy FAILED: value [0-9.]+ \(must be >= 0\.8"
    ):
        audit.main(cfg)
    gates = read_result(tmp_path / "metrics" / "gates.json", GatesResult)
    assert not gates.passed and "conditional_accuracy" in gates.failed
    assert set(gates.gates) >= {
        "conditional_accuracy",
        "fairness_discrepancy",
        "bias_amplification",
        "worst_group_gap",
        "memorized_fraction",
    }
    assert set(gates.with_mitigation or {}) == {
        "fairness_discrepancy",
        "bias_amplification",
        "worst_group_gap",
    }
    fairness = read_result(tmp_path / "metrics" / "fairness.json", FairnessResult)
    assert set(fairness.representation) == {"class", "thickness"}
    assert fairness.mitigation is not None and fairness.mitigation.attribute == "thickness"
    assert fairness.mitigation.selection.per_class  # class ids as the file's string keys
    privacy = read_result(tmp_path / "metrics" / "privacy.json", PrivacyResult)
    assert set(privacy.memorization) == set(privacy.near_copies) == {"pixel", "feature"}
    assert (tmp_path / "plots" / "audit" / "memorization_gallery.png").is_file()
    assert (tmp_path / "plots" / "bias_amplification.csv").read_text().startswith("set,attribute,class")


def test_audit_stage_passes_when_gates_are_lenient(tiny_run: TinyRun, tmp_path: Path) -> None:
    from pipelines import audit

    lenient = GatesCfg(
        min_conditional_accuracy=0.0,
        max_fairness_discrepancy=2.0,
        max_abs_bias_amplification=1.0,
        max_worst_group_gap=1.0,
        max_memorized_fraction=1.0,
    )
    cfg = _audit_cfg(
        tiny_run,
        tmp_path,
        fail_on_gate=True,
        bootstrap=50,
        gates=lenient,
        mitigation=tiny_run.cfg.audit.mitigation.model_copy(update={"enabled": False}),
    )
    audit.main(cfg)  # does not raise
    gates = read_result(tmp_path / "metrics" / "gates.json", GatesResult)
    assert gates.passed and gates.failed == [] and "with_mitigation" not in gates.dump()
    fairness = read_result(tmp_path / "metrics" / "fairness.json", FairnessResult)
    assert fairness.mitigation is None and "mitigation" not in fairness.dump()


def test_a_gate_whose_interval_crosses_its_threshold_says_so() -> None:
    """The verdict stays the estimate's (audit.gate_statistic); the interval's crossing is reported."""
    cfg = GatesCfg(max_fairness_discrepancy=0.1, min_conditional_accuracy=0.8)
    measured = {
        "fairness_discrepancy": (0.08, "thickness", [0.03, 0.14]),  # passes; interval crosses 0.1
        "conditional_accuracy": (0.95, "quality.json", [0.9, 0.99]),  # clear of 0.8
    }
    verdicts = {v.gate: v for v in evaluate_gates(cfg, measured)}
    fd, acc = verdicts["fairness_discrepancy"], verdicts["conditional_accuracy"]
    assert fd.passed and fd.crosses and not acc.crosses
    assert "passes on the estimate; its interval crosses the threshold" in fd.message()
    result = report(list(verdicts.values()))
    entry = result.gates["fairness_discrepancy"]
    assert entry.ci == [0.03, 0.14] and entry.ci_crosses_threshold
    assert "passes on the estimate; its interval crosses the threshold" in entry.describe(
        "fairness_discrepancy"
    )
    assert result.gates["conditional_accuracy"].crossing_note == ""
    failing = {v.gate: v for v in evaluate_gates(cfg, {"fairness_discrepancy": (0.12, "x", [0.05, 0.2])})}
    fd = failing["fairness_discrepancy"]
    assert not fd.passed and "fails on the estimate" in fd.message()
    with pytest.raises(ValueError, match="ci_crosses_threshold"):  # the file cannot disagree with itself
        type(entry).model_validate(entry.dump() | {"ci_crosses_threshold": False})
    # A gate whose number has no interval is not assessable: null, not "clear of the threshold".
    bare = report(evaluate_gates(cfg, {"fairness_discrepancy": (0.05, "x")})).gates["fairness_discrepancy"]
    assert bare.ci is None and bare.ci_crosses_threshold is None and bare.crossing_note == ""
