"""The dashboard (`make ui`): a real `mlflow server` on loopback over the project's kind of store
(sqlite) shows, through its REST API, the pipeline run, its stage runs with their metrics and
artifacts, and the registered model with its aliases."""

from __future__ import annotations

import json
import os
import sys
import urllib.parse

import pytest

from tests.helpers.release import PIPELINE_ID, ReleaseRun, free_port, get_json, post_json, server


@pytest.fixture(scope="module")
def run(release_run: ReleaseRun) -> ReleaseRun:
    return release_run


@pytest.mark.slow
def test_dashboard_shows_the_pipeline_stages_and_model(run: ReleaseRun, tmp_path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = f"{base}/api/2.0/mlflow"
    # What `make ui` runs, on this run's store.
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        run.tracking_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    with server(cmd, f"{base}/health", tmp_path / "ui.log", env=env):
        name = run.cfg.tracking.experiment_name
        exp = get_json(f"{api}/experiments/get-by-name?experiment_name={urllib.parse.quote(name)}")[
            "experiment"
        ]

        def search(filter_string: str) -> list[dict]:
            status, out = post_json(
                f"{api}/runs/search",
                {"experiment_ids": [exp["experiment_id"]], "filter": filter_string, "max_results": 100},
            )
            assert status == 200, out
            return out.get("runs", [])

        (pipeline,) = search(
            f"tags.`diffaudit.stage` = 'pipeline' and tags.`diffaudit.pipeline_id` = '{PIPELINE_ID}'"
        )
        parent_id = pipeline["info"]["run_id"]
        assert pipeline["info"]["status"] == "FINISHED"
        stages = {r["info"]["run_name"]: r for r in search(f"tags.`mlflow.parentRunId` = '{parent_id}'")}
        assert {"prepare", "report"} <= set(stages)

        def metrics(r: dict) -> dict[str, float]:
            return {m["key"]: m["value"] for m in r["data"].get("metrics", [])}

        def params(r: dict) -> dict[str, str]:
            return {p["key"]: p["value"] for p in r["data"].get("params", [])}

        def artifacts(run_id: str, path: str = "") -> set[str]:
            q = urllib.parse.urlencode({"run_id": run_id, "path": path})
            return {f["path"] for f in get_json(f"{api}/artifacts/list?{q}").get("files", [])}

        assert int(params(stages["prepare"])["data.n_train"]) > 0  # a size: a param, not a metric chart
        assert metrics(stages["report"])["release.promoted"] == 1.0
        assert (
            params(stages["report"])["tracking.registered_model_name"]
            == run.cfg.tracking.registered_model_name
        )
        report_id = stages["report"]["info"]["run_id"]
        assert {"report/audit.html", "report/MODEL_CARD.md", "report/release.json"} <= artifacts(
            report_id, "report"
        )
        assert "config" in artifacts(report_id)
        assert {"data.json", "real_grid.png"} <= artifacts(stages["prepare"]["info"]["run_id"])
        assert "pipeline/gates.json" in artifacts(
            parent_id, "pipeline"
        )  # metrics logged when the pipeline closed
        tags = {t["key"]: t["value"] for t in stages["report"]["data"]["tags"]}
        assert tags["git_commit"] and tags["release.decision"] == "champion"

        model = get_json(f"{api}/registered-models/get?name={run.cfg.tracking.registered_model_name}")
        aliases = {a["alias"]: a["version"] for a in model["registered_model"].get("aliases", [])}
        assert aliases.keys() == {"candidate", "champion"}
        q = urllib.parse.urlencode({"name": run.cfg.tracking.registered_model_name, "alias": "champion"})
        version = get_json(f"{api}/registered-models/alias?{q}")["model_version"]
        assert version["run_id"] == report_id
        vtags = {t["key"]: t["value"] for t in version.get("tags", [])}
        assert json.loads(vtags["diffaudit.metric.quality.conditional_accuracy"]) == pytest.approx(0.9)
