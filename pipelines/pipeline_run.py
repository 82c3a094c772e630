"""Close a pipeline execution: log dvc.lock, params.yaml and the metrics to its parent MLflow run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from diffaudit.config.schema import load_params
from diffaudit.layout import Layout
from diffaudit.tracking.mlflow_tracking import PIPELINE_TAG, STAGE_TAG, setup


def finish(returncode: int) -> None:
    pid = os.environ.get("DIFFAUDIT_PIPELINE_ID")
    if not pid:
        return
    cfg = load_params(os.environ.get("DIFFAUDIT_PARAMS", "params.yaml"))
    experiment_id = setup(cfg)
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = '{pid}' and tags.`{STAGE_TAG}` = 'pipeline'",
        max_results=1,
    )
    if not runs:
        print("[pipeline] every stage was up to date: no MLflow run")
        return
    run_id = runs[0].info.run_id
    client = MlflowClient()
    params = os.environ.get("DIFFAUDIT_PARAMS", "params.yaml")
    for path in [params, "dvc.lock", *sorted(str(p) for p in Layout.of(cfg).metrics_dir.glob("*.json"))]:
        if Path(path).is_file():
            client.log_artifact(run_id, path, "pipeline")
    client.set_tag(run_id, "dvc_repro_exit_code", str(returncode))
    client.set_terminated(run_id, "FINISHED" if returncode == 0 else "FAILED")
    print(f"[pipeline] MLflow parent run {run_id} ({mlflow.get_tracking_uri()})")


if __name__ == "__main__":
    if sys.argv[1:2] != ["finish"]:
        sys.exit("usage: python -m pipelines.pipeline_run finish RETURNCODE")
    finish(int(sys.argv[2]))
