"""reports/headline.json, the one file DVC shows as metrics: at most 30 flat keys, each a number, a
boolean or a short string, built from the typed result files; the feature space named in the keys that
have one, floors beside their values, null where a number does not apply or was not measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from diffaudit.errors import ResultFileError
from diffaudit.results import (
    ExplainMetrics,
    FairnessResult,
    GatesResult,
    PrivacyResult,
    QualityResult,
    ReleaseSummary,
    RunResults,
    SamplerStudyResult,
    parse_result,
    read_result,
    write_result,
)
from diffaudit.results.applicability import UNCONDITIONAL
from diffaudit.results.headline import MAX_KEYS, HeadlineResult
from tests.helpers import release
from tests.helpers.config import ROOT


def _results(**quality: object) -> RunResults:
    return RunResults(
        quality=QualityResult.model_validate(release.quality() | quality),
        sampler_study=SamplerStudyResult.model_validate(release.sampler_study()),
        explain=ExplainMetrics.model_validate(release.explain()),
        fairness=FairnessResult.model_validate(release.fairness()),
        privacy=PrivacyResult.model_validate(release.privacy()),
        gates=GatesResult.model_validate(release.gates(passed=False)),
    )


def _summary(promoted: bool = False) -> ReleaseSummary:
    return ReleaseSummary(
        promoted=promoted, registered=False, gates_ran=True, gates_passed=False, candidate_metrics={}
    )


def test_the_headline_of_a_run(tmp_path: Path) -> None:
    head = HeadlineResult.of(_results(), _summary())
    data = head.dump()
    assert len(data) <= MAX_KEYS
    assert all(isinstance(v, (int, float, bool, str)) or v is None for v in data.values())
    # `dvc metrics show` prints one row, a column per key: short keys keep it within 200 columns
    assert 21 + sum(4 + max(len(k), 8) for k in data) <= 200
    # the feature space in the keys, each value beside its floor
    assert (data["fid_evaluator"], data["fid_evaluator_floor"]) == (2.0, 0.5)
    assert not any("inception" in k for k in data)
    assert (data["cond_acc"], data["cond_acc_floor"]) == (0.9, 0.95)
    # fairness: the gated headline figures; the worst-group gap was not measured (NaN): null
    assert (data["fair_disc"], data["bias_amp"], data["group_gap"]) == (0.071, 0.1, None)
    assert (data["memorized"], data["near_copy"]) == (0.0, 0.0)
    assert data["mia_auc"] is None  # membership inference off
    assert (data["gates_failed"], data["promoted"]) == (1, False)
    # written and read back strictly, as flat JSON
    write_result(tmp_path / HeadlineResult.FILE, head)
    assert read_result(tmp_path / HeadlineResult.FILE, HeadlineResult) == head
    assert json.loads((tmp_path / HeadlineResult.FILE).read_text()) == data


def test_an_unconditional_model_has_no_conditional_accuracy() -> None:
    na = {"conditional_accuracy": UNCONDITIONAL, "cas": UNCONDITIONAL}
    results = _results(conditional_accuracy=None, conditional_accuracy_ci=None, not_applicable=na)
    head = HeadlineResult.of(results, _summary())
    assert head.cond_acc is None and head.cond_acc_floor is None


def test_the_inception_space_names_its_keys() -> None:
    q = release.quality()
    inception = {k.replace("_evaluator", "_inception"): v for k, v in q.items()}
    results = _results()
    results.quality = QualityResult.model_validate(inception | {"feature_space": "inception"})
    data = HeadlineResult.of(results, _summary(promoted=True)).dump()
    assert (data["fid_inception"], data["fid_inception_floor"]) == (2.0, 0.5)
    assert not any("evaluator" in k for k in data) and data["promoted"] is True


def test_missing_stages_give_nulls_not_errors() -> None:
    data = HeadlineResult.of(RunResults(), _summary()).dump()
    assert data["promoted"] is False
    assert all(v is None for k, v in data.items() if k != "promoted")


def test_keys_of_one_feature_space() -> None:
    good = HeadlineResult.of(_results(), _summary()).dump()
    with pytest.raises(ResultFileError, match="field fid_inception: a key of the inception feature"):
        parse_result(good | {"fid_inception": 1.0}, HeadlineResult, "headline.json")
    with pytest.raises(ResultFileError, match="field fid_evaluator_floor: Field required"):
        parse_result({k: v for k, v in good.items() if k != "fid_evaluator_floor"}, HeadlineResult, "h")


def test_dvc_declares_only_the_headline_as_metrics() -> None:
    """Every other result file is an output DVC tracks and hashes (outs), not a metric."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    metrics = [
        (name, m if isinstance(m, str) else next(iter(m)))
        for name, stage in stages.items()
        for m in stage.get("metrics", [])
    ]
    assert metrics == [("report", "${paths.reports}/" + HeadlineResult.FILE)]
    outs = {o if isinstance(o, str) else next(iter(o)) for s in stages.values() for o in s.get("outs", [])}
    for file in ("data", "evaluator", "quality", "sampler_study", "explain", "fairness", "privacy", "gates"):
        assert f"${{paths.metrics}}/{file}.json" in outs
    assert "${paths.reports}/release.json" in outs
