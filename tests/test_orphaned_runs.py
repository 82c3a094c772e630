"""A stage killed with SIGKILL leaves its MLflow run RUNNING; the next stage run of the store marks it
FAILED with a note, and leaves alone a RUNNING run whose process still lives (issue 18)."""

from __future__ import annotations

import subprocess
import sys

from mlflow.tracking import MlflowClient

from diffaudit.tracking.mlflow_tracking import STAGE_TAG, stage_run
from diffaudit.tracking.orphans import NOTE_TAG
from tests.helpers.config import ROOT, pipeline_env, stage_env, tiny_config

STAGE_THEN = """
import os, signal, sys, time
from diffaudit.config.schema import load_params
from diffaudit.tracking.mlflow_tracking import stage_run
with stage_run(load_params(sys.argv[1]), sys.argv[2]):
    print("open", flush=True)
    os.kill(os.getpid(), signal.SIGKILL) if sys.argv[3] == "kill" else time.sleep(120)
"""


def _runs(cfg, stage: str) -> list:
    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{STAGE_TAG}` = '{stage}'")


def test_a_killed_stage_run_is_marked_failed_by_the_next_and_a_live_one_is_not(tmp_path) -> None:
    cfg = tiny_config(tmp_path)
    params = str(tmp_path / "params.yaml")
    env = stage_env(tmp_path / "params.yaml", "orphans")
    live = subprocess.Popen(
        [sys.executable, "-c", STAGE_THEN, params, "evaluate", "sleep"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert live.stdout.readline().strip() == "open"
        killed = subprocess.run(
            [sys.executable, "-c", STAGE_THEN, params, "sample", "kill"], cwd=ROOT, env=env, timeout=300
        )
        assert killed.returncode == -9
        assert [r.info.status for r in _runs(cfg, "sample")] == ["RUNNING"]

        with pipeline_env(tmp_path, "orphans"), stage_run(cfg, "audit"):  # this store, whatever ran before
            pass

        (sample,) = _runs(cfg, "sample")
        assert sample.info.status == "FAILED" and "killed" in sample.data.tags[NOTE_TAG]
        assert sample.info.end_time is not None
        (evaluate,) = _runs(cfg, "evaluate")
        assert evaluate.info.status == "RUNNING" and NOTE_TAG not in evaluate.data.tags  # its process lives
        assert [r.info.status for r in _runs(cfg, "audit")] == ["FINISHED"]
    finally:
        live.kill()
        live.wait(timeout=30)
