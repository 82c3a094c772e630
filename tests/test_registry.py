"""The release rule in the model registry: every run is `candidate`; `champion` moves only when every
gate passes and nothing regressed beyond tolerance against the current champion."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from diffaudit.config.release_schema import CompareMetric, ReleaseCfg, release_config
from diffaudit.release.policy import compare, decide
from diffaudit.release.promote import register_and_decide, revoke
from diffaudit.results import GatesResult
from diffaudit.tracking.registry import CANDIDATE, CHAMPION, alias_version, version_metrics
from tests.helpers.release import ReleaseRun

SPEC = [
    CompareMetric(metric="quality.acc", mode="max", tolerance=0.02),
    CompareMetric(metric="quality.fid", mode="min", tolerance=0.1, relative=True),
]
PASS = GatesResult.model_validate(
    {
        "passed": True,
        "failed": [],
        "gates": {
            "a": {"value": 1.0, "threshold": 0.0, "op": ">=", "passed": True, "source": "quality.json"}
        },
    }
)
FAIL = GatesResult.model_validate(
    {
        "passed": False,
        "failed": ["a"],
        "gates": {
            "a": {"value": 0.0, "threshold": 1.0, "op": ">=", "passed": False, "source": "quality.json"}
        },
    }
)
NONE = None  # no metrics/gates.json: the audit has not run


@pytest.fixture(scope="module")
def run(release_run: ReleaseRun) -> ReleaseRun:
    return release_run


@pytest.mark.parametrize(
    ("cand", "ok"),
    [
        ({"quality.acc": 0.89, "quality.fid": 10.9}, [True, True]),  # inside both tolerances
        ({"quality.acc": 0.87, "quality.fid": 10.0}, [False, True]),  # 0.03 below: beyond 0.02
        ({"quality.acc": 0.95, "quality.fid": 11.2}, [True, False]),  # 12 % worse: beyond 10 %
        ({"quality.acc": None, "quality.fid": 9.0}, [False, True]),  # a missing value cannot pass
    ],
)
def test_compare_tolerances(cand: dict, ok: list[bool]) -> None:
    assert [c.ok for c in compare(cand, {"quality.acc": 0.9, "quality.fid": 10.0}, SPEC)] == ok


def test_compare_without_a_reference_value_passes_with_a_note() -> None:
    (c,) = compare({"quality.acc": 0.5}, {}, SPEC[:1])
    assert c.ok and "has no value" in c.note


def test_compare_across_feature_spaces_does_not_judge() -> None:
    # FID 30 against 10 would regress, but in another evaluator's feature space it means nothing.
    cand, ref = {"quality.acc": 0.5, "quality.fid": 30.0}, {"quality.acc": 0.9, "quality.fid": 10.0}
    assert not all(c.ok for c in compare(cand, ref, SPEC))
    out = compare(cand, ref, SPEC, same_space=False)
    assert all(c.ok and "another evaluator" in c.note for c in out), out
    # A candidate without a value still fails: nothing shows it is no worse.
    assert not compare({}, ref, SPEC[:1], same_space=False)[0].ok


def test_decide_needs_passing_gates_and_no_regression() -> None:
    rel = ReleaseCfg()
    good = compare({"quality.acc": 0.9, "quality.fid": 10.0}, {"quality.acc": 0.9, "quality.fid": 10.0}, SPEC)
    bad = compare({"quality.acc": 0.5, "quality.fid": 10.0}, {"quality.acc": 0.9, "quality.fid": 10.0}, SPEC)
    assert decide(PASS, [], None, rel).promote
    assert "no champion yet" in decide(PASS, [], None, rel).reasons[0]
    assert decide(PASS, good, "3", rel).promote
    refused = decide(PASS, bad, "3", rel)
    assert not refused.promote and "quality.acc regressed" in refused.reasons[0]
    failed = decide(FAIL, good, "3", rel)
    assert not failed.promote and failed.reasons[0] == (
        "gate a failed: value 0, threshold 1 (must be >= 1; quality.json)"
    )
    assert "gates not run" in decide(NONE, [], None, rel).reasons[0]
    assert not decide(NONE, [], None, rel).promote  # never release unaudited
    assert decide(NONE, [], None, ReleaseCfg(require_gates=False)).promote


def test_release_config_defaults_without_the_group() -> None:
    rel = release_config(SimpleNamespace())
    assert rel.require_gates and {c.metric for c in rel.compare} == {
        "quality.conditional_accuracy",
        "quality.fid_evaluator",
    }


def test_report_stage_registered_the_run_as_champion(run: ReleaseRun) -> None:
    import mlflow

    mlflow.set_tracking_uri(run.tracking_uri)
    name = run.cfg.tracking.registered_model_name
    release = json.loads((run.root / "reports" / "release.json").read_text())
    cand, champ = alias_version(name, CANDIDATE), alias_version(name, CHAMPION)
    assert cand is not None and champ is not None and cand.version == champ.version
    assert release["promoted"] and release["record"]["candidate_version"] == str(cand.version)
    assert version_metrics(champ)["quality.conditional_accuracy"] == pytest.approx(0.9)
    assert champ.tags["diffaudit.decision"] == "champion"


def test_champion_moves_only_under_the_release_rule(run: ReleaseRun, tmp_path: Path) -> None:
    """Successive candidates against a private registry: failed gate, first pass, regression, small
    change within tolerance, missing gates; then a revoked promotion."""
    import mlflow

    from diffaudit.tracking.registry import log_model

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'reg.db'}")
    exp = mlflow.create_experiment("reg", artifact_location=(tmp_path / "art").as_uri())
    cfg = run.cfg.model_copy(
        update={"tracking": run.cfg.tracking.model_copy(update={"registered_model_name": "m"})}
    )
    rel = ReleaseCfg()
    with mlflow.start_run(experiment_id=exp) as active:
        info = log_model(cfg, run.root / "models" / "diffusion", [str(c) for c in range(10)], rel)

    def step(
        gates: GatesResult | None, acc: float, fid: float, space: str | None = None
    ) -> tuple[bool, str | None, str | None]:
        rec = register_and_decide(
            cfg,
            rel,
            info,
            {"quality.conditional_accuracy": acc, "quality.fid_evaluator": fid},
            gates,
            active.info.run_id,
            "pid",
            feature_space=space,
        )
        champ = alias_version("m", CHAMPION)
        assert str(alias_version("m", CANDIDATE).version) == rec.candidate_version  # every run is candidate
        return rec.promoted, rec.candidate_version, str(champ.version) if champ else None

    assert step(FAIL, 0.9, 2.0) == (False, "1", None)
    assert step(PASS, 0.9, 2.0) == (True, "2", "2")
    assert step(PASS, 0.9, 3.0) == (False, "3", "2")  # FID 50 % worse: beyond 10 %
    assert step(PASS, 0.89, 2.1) == (True, "4", "4")  # within both tolerances
    assert step(NONE, 0.99, 1.0) == (False, "5", "4")  # better, but unaudited
    assert step(PASS, 0.95, 1.5) == (True, "6", "6")
    revoke("m", "6", "4", "regressed against main")
    assert str(alias_version("m", CHAMPION).version) == "4"
    assert mlflow.MlflowClient().get_model_version("m", "6").tags["diffaudit.decision"] == "refused"
    # Feature spaces: v4 names none, so it is compared; a champion measured by another evaluator is not
    # (FID doubled, but in another space); the same evaluator again is compared, and regresses.
    assert step(PASS, 0.95, 1.5, space="evaluator:a") == (True, "7", "7")
    assert step(PASS, 0.95, 3.0, space="evaluator:b") == (True, "8", "8")
    assert step(PASS, 0.95, 6.0, space="evaluator:b") == (False, "9", "8")


def _private_copy(run: ReleaseRun, dest: Path) -> ReleaseRun:
    """Files, store and reports of the shared run, so a test may change its registry."""
    import shutil

    from tests.helpers.release import copy_run

    new = copy_run(run, dest)
    shutil.copy(run.root / "mlflow.db", dest / "mlflow.db")
    shutil.copytree(run.root / "reports", dest / "reports")
    return new


def test_retrain_check_reports_the_decision(run: ReleaseRun, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines import retrain

    assert retrain.main(["--check", "--params", str(run.params)]) == 0
    out = capsys.readouterr().out
    assert "PROMOTED to champion" in out and "no champion yet" in out


def test_retrain_revokes_a_promotion_that_regressed_against_the_baseline(
    run: ReleaseRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    from pipelines import retrain

    mine = _private_copy(run, tmp_path / "copy")
    better_main = {"quality.conditional_accuracy": 0.99, "quality.fid_evaluator": 1.0}
    monkeypatch.setattr(retrain, "baseline_metrics", lambda rev, release, metrics_dir: better_main)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert retrain.main(["--check", "--params", str(mine.params), "--baseline-rev", "main"]) == 1
    out = capsys.readouterr().out
    assert "quality.conditional_accuracy regressed" in out and "REVOKED" in out
    mlflow.set_tracking_uri(mine.tracking_uri)
    assert alias_version(mine.cfg.tracking.registered_model_name, CHAMPION) is None
    release = json.loads((mine.root / "reports" / "release.json").read_text())
    assert not release["promoted"] and release["revoked"]
    assert json.loads((mine.root / "reports" / "headline.json").read_text())["promoted"] is False
    assert "REVOKED" in (mine.root / "reports" / "audit.html").read_text()
    assert "Release revoked" in (mine.root / "reports" / "MODEL_CARD.md").read_text()


def test_retrain_accepts_a_run_within_tolerance_of_the_baseline(
    run: ReleaseRun, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines import retrain

    monkeypatch.setattr(
        retrain,
        "baseline_metrics",
        lambda rev, release, metrics_dir: {
            "quality.conditional_accuracy": 0.91,
            "quality.fid_evaluator": 1.9,
        },
    )
    assert retrain.main(["--check", "--params", str(run.params), "--baseline-rev", "main"]) == 0
    assert "within tolerance" in capsys.readouterr().out


KILL_AT_FIRST_WRITE = """
import os, signal
import pipelines.report as report
from pipelines._stage import run

def killed(*args, **kwargs):  # the first file the report stage writes comes after registration
    os.kill(os.getpid(), signal.SIGKILL)

report.write_text = killed
run("report", report.main)
"""


def test_a_report_stage_killed_after_registration_moves_no_alias(run: ReleaseRun, tmp_path: Path) -> None:
    """Red team, issue 18: killed right after registering, the stage used to leave `candidate` on a version
    with no report. The aliases now move last: the version stays, marked pending, and every alias (what
    `make serve` loads) stays where it was. A rerun publishes its own version."""
    import subprocess
    import sys

    import mlflow

    from diffaudit.release.promote import PENDING, PUBLISHED, RELEASE_STATE_TAG
    from tests.helpers.config import ROOT, stage_env

    new = _private_copy(run, tmp_path / "copy")
    mlflow.set_tracking_uri(new.tracking_uri)
    name = new.cfg.tracking.registered_model_name
    before = {a: alias_version(name, a).version for a in (CANDIDATE, CHAMPION)}
    env = stage_env(new.params, "killed-report")
    killed = subprocess.run([sys.executable, "-c", KILL_AT_FIRST_WRITE], cwd=ROOT, env=env, timeout=600)
    assert killed.returncode == -9
    client = mlflow.MlflowClient()
    latest = max(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    assert int(latest.version) > int(before[CANDIDATE]) and latest.tags[RELEASE_STATE_TAG] == PENDING
    assert {a: alias_version(name, a).version for a in (CANDIDATE, CHAMPION)} == before

    done = subprocess.run(
        [sys.executable, "-m", "pipelines.report"], cwd=ROOT, env=env, timeout=600, capture_output=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cand = alias_version(name, CANDIDATE)
    assert int(cand.version) == int(latest.version) + 1 and cand.tags[RELEASE_STATE_TAG] == PUBLISHED
