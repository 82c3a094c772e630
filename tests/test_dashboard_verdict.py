"""The verdict on the dashboard (`make ui`): the experiment says it is model training (so MLflow 3 opens
it on its runs, not on the GenAI traces page); the pipeline's parent run carries the headline metrics,
the release decision as a tag, a description stating the verdict and the report; the registered version
describes its decision with a link to the report; stage runs log no settings as metrics. The browser
test drives Debian's Chromium (Playwright) against a live `mlflow server` on the release run's store and
keeps screenshots in $DIFFAUDIT_TEST_ARTIFACTS (default test-artifacts/)."""

from __future__ import annotations

import os
import sys
import urllib.parse
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from diffaudit.tracking.mlflow_tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    PIPELINE_TAG,
    STAGE_TAG,
    is_setting,
)
from tests.helpers.release import PIPELINE_ID, ReleaseRun, free_port, server

CHROMIUM = os.environ.get("DIFFAUDIT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(
    os.environ.get("DIFFAUDIT_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts")
)


@pytest.fixture(scope="module")
def run(release_run: ReleaseRun) -> ReleaseRun:
    return release_run


def _runs(run: ReleaseRun) -> tuple[MlflowClient, str, dict]:
    client = MlflowClient(run.tracking_uri)
    exp = client.get_experiment_by_name(run.cfg.tracking.experiment_name)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{PIPELINE_ID}'")
    return client, exp.experiment_id, {r.data.tags[STAGE_TAG]: r for r in runs}


def test_experiment_says_it_is_model_training(run: ReleaseRun) -> None:
    client = MlflowClient(run.tracking_uri)
    exp = client.get_experiment_by_name(run.cfg.tracking.experiment_name)
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert exp.tags["mlflow.note.content"].startswith("Choose Model training (top left)")


def test_parent_run_carries_the_verdict(run: ReleaseRun) -> None:
    client, _, stages = _runs(run)
    parent = stages["pipeline"]
    m, tags = parent.data.metrics, parent.data.tags
    # tests/helpers/release.py: FID 2.0 against a floor of 0.5 (evaluator space), accuracy 0.9, two gates
    assert m["fid_evaluator_over_floor"] == pytest.approx(4.0)
    assert m["conditional_accuracy"] == pytest.approx(0.9)
    assert m["gate.conditional_accuracy.value"] == pytest.approx(0.9)
    assert m["gate.conditional_accuracy.passed"] == 1.0 and m["gate.memorized_fraction.passed"] == 1.0
    assert m["gates_passed"] == 1.0 and m["promoted"] == 1.0
    assert not any(is_setting(k) for k in m)
    assert tags["release.decision"] == "champion"
    note = tags["mlflow.note.content"]
    name = run.cfg.tracking.registered_model_name
    assert note.startswith(f"**RELEASED: {name} v")
    assert "All 2 applicable audit gates pass" in note and "4.00x its real-vs-real floor" in note
    report_run = stages["report"].info.run_id
    assert f"/runs/{report_run}/artifacts/report/audit.html" in note
    assert "audit.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_model_version_describes_its_decision(run: ReleaseRun) -> None:
    client, _, stages = _runs(run)
    name = run.cfg.tracking.registered_model_name
    mv = client.get_model_version_by_alias(name, "champion")
    assert mv.description.startswith("**Champion**")
    assert "all 2 applicable gates pass" in mv.description
    assert f"/runs/{stages['report'].info.run_id}/artifacts/report/audit.html" in mv.description


def test_stage_runs_log_no_settings_as_metrics(run: ReleaseRun) -> None:
    _, _, stages = _runs(run)
    for stage, r in stages.items():
        settings = sorted(k for k in r.data.metrics if is_setting(k))
        assert not settings, f"{stage} logs settings as metrics: {settings}"
    assert int(stages["prepare"].data.params["data.n_train"]) > 0


def test_a_failed_pipeline_reports_no_stale_verdict(run: ReleaseRun) -> None:
    from diffaudit.results import ReleaseSummary, load_results, read_result
    from diffaudit.tracking.summary import FAILED, verdict

    results = load_results(run.root / "metrics")
    release = read_result(run.root / "reports" / "release.json", ReleaseSummary)
    v = verdict(results, release, 1, "another-id")
    assert v.decision == FAILED and v.metrics == {}
    assert v.line.startswith("FAILED: no release decision (dvc repro exited 1")
    ok = verdict(results, release, 0, PIPELINE_ID, "http://ui/x")
    assert ok.line.startswith(f"RELEASED: {run.cfg.tracking.registered_model_name} v")


def _chromium_or_skip() -> str:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} missing: CI must install Debian's chromium (.ci/run does)")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")


@pytest.mark.slow
def test_dashboard_opens_on_the_runs_and_shows_the_verdict(run: ReleaseRun, tmp_path) -> None:
    """Through the links diffaudit prints and writes (the end of `make repro`, the descriptions): the
    experiment on its runs table, the parent run named with its verdict, its description and metrics."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect, sync_playwright

    from diffaudit.tracking.links import experiment_url, run_url

    executable = _chromium_or_skip()
    _, experiment_id, stages = _runs(run)
    parent = stages["pipeline"]
    name = run.cfg.tracking.registered_model_name
    assert parent.info.run_name == f"RELEASED v1 · pipeline-{PIPELINE_ID}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", run.tracking_uri]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # what `make ui` runs
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with server(cmd, f"{base}/health", tmp_path / "ui.log", env=env), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--headless", "--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(experiment_url(base, experiment_id), wait_until="domcontentloaded")
            # The runs table, not the traces overview: the parent run is listed by its name, verdict in it.
            expect(page.get_by_text(parent.info.run_name).first).to_be_visible(timeout=90_000)
            fragment = urllib.parse.urlparse(page.url).fragment
            assert fragment.startswith(f"/experiments/{experiment_id}/runs"), page.url
            assert page.get_by_text("No data available for the selected time range").count() == 0
            page.screenshot(path=str(ARTIFACTS / "dashboard_runs.png"))
            # The experiment's plain address (what `make ui` -> Experiments gives) opens as GenAI until the
            # switch says Model training, as the experiment's description tells; then the browser keeps it.
            page.goto(f"{base}/#/experiments/{experiment_id}", wait_until="domcontentloaded")
            # A popover the UI opens on a first visit can cover the switch: Escape closes it, then retry.
            switch = page.get_by_text("Model training", exact=True).first
            for _ in range(3):
                try:
                    switch.click(timeout=30_000)
                    break
                except PlaywrightError:
                    page.keyboard.press("Escape")
            else:
                pytest.fail("the Model training switch stayed covered")
            expect(page.get_by_text(parent.info.run_name).first).to_be_visible(timeout=90_000)
            page.goto(f"{base}/#/experiments/{experiment_id}", wait_until="domcontentloaded")
            page.reload(wait_until="domcontentloaded")
            expect(page.get_by_text(parent.info.run_name).first).to_be_visible(timeout=90_000)

            page.goto(run_url(base, experiment_id, parent.info.run_id), wait_until="domcontentloaded")
            expect(page.get_by_text(f"RELEASED: {name} v1 is the champion.").first).to_be_visible(
                timeout=90_000
            )
            expect(page.get_by_text("fid_evaluator_over_floor").first).to_be_visible()
            expect(page.get_by_text("release.decision").first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "dashboard_parent_run.png"), full_page=True)
        finally:
            browser.close()


def test_a_revoked_release_is_revoked_on_the_dashboard_too(tmp_path) -> None:
    """`make retrain --baseline-rev` revokes a promotion after the pipeline closed: the version, the report
    run and the parent run all say so."""
    from diffaudit.release.promote import revoke
    from tests.helpers.release import build_release_run

    own = build_release_run(tmp_path)
    name = own.cfg.tracking.registered_model_name
    revoke(name, "1", None, "fid regressed against main")
    client, _, stages = _runs(own)
    parent = stages["pipeline"]
    assert parent.data.tags["release.decision"] == "revoked"
    assert parent.info.run_name == f"REVOKED · pipeline-{PIPELINE_ID}"
    assert parent.data.tags["mlflow.note.content"].startswith("**REVOKED** by a later check: fid regressed")
    assert parent.data.metrics["promoted"] == 0.0
    assert stages["report"].data.tags["release.decision"] == "revoked"
    assert client.get_model_version(name, "1").description.startswith("**Revoked**")


def test_an_unconditional_model_has_no_conditional_accuracy_headline() -> None:
    """Conditional accuracy does not apply to an unconditional model (results/applicability.py): the parent
    run logs no number for it and its description says why."""
    from diffaudit.results import QualityResult, RunResults
    from diffaudit.results.applicability import UNCONDITIONAL
    from diffaudit.tracking.summary import headline_metrics, quality_sentence
    from tests.helpers.release import quality

    data = quality() | {
        "conditional_accuracy": None,
        "conditional_accuracy_ci": None,
        "labels": "evaluator",
        "not_applicable": {"conditional_accuracy": UNCONDITIONAL, "cas": UNCONDITIONAL},
    }
    results = RunResults(quality=QualityResult.model_validate(data))
    metrics = headline_metrics(results)
    assert "conditional_accuracy" not in metrics and metrics["fid_evaluator_over_floor"] == pytest.approx(4.0)
    assert f"conditional accuracy {UNCONDITIONAL}" in quality_sentence(results)
