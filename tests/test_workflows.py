"""The GitHub workflows pass the workflow linter (check-jsonschema's bundled GitHub-workflow schema,
offline) and keep the steps the release loop relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def _runs(data: dict[str, Any]) -> str:
    return "\n".join(s.get("run", "") for job in data["jobs"].values() for s in job["steps"])


def _uses(data: dict[str, Any]) -> list[str]:
    return [s["uses"] for job in data["jobs"].values() for s in job["steps"] if "uses" in s]


def test_workflows_pass_the_linter() -> None:
    exe = Path(sys.executable).with_name("check-jsonschema")
    exe_path = str(exe) if exe.is_file() else shutil.which("check-jsonschema")
    if exe_path is None:
        pytest.fail("check-jsonschema is not installed (it is in the dev extras and requirements.lock)")
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    assert {Path(f).name for f in files} >= {"ci.yml", "retrain.yml"}
    proc = subprocess.run(
        [exe_path, "--builtin-schema", "vendor.github-workflows", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_the_tests_on_push_and_pull_request() -> None:
    ci = _load("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    runs = _runs(ci)
    assert "make test" in runs and "apt-get install" in runs and "chromium" in runs
    assert any(u.startswith("actions/upload-artifact") for u in _uses(ci))


def test_retrain_is_scheduled_and_gated() -> None:
    wf = _load("retrain.yml")
    assert wf["on"]["schedule"][0]["cron"] and "workflow_dispatch" in wf["on"]
    env = wf["jobs"]["retrain"]["env"]
    assert env["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
    runs = _runs(wf)
    for needed in (
        "make install",
        "dvc remote list",
        "dvc pull",
        "make repro",
        "dvc metrics diff origin/main",
        "pipelines.retrain --check --baseline-rev origin/main",
    ):
        assert needed in runs, needed
    assert "${{ inputs" not in runs  # inputs reach scripts through env, not text substitution
    upload = [
        s for s in wf["jobs"]["retrain"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact")
    ]
    assert upload and upload[0]["if"] == "always()" and "reports/" in upload[0]["with"]["path"]
