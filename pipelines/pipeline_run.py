"""Close a pipeline execution: give its parent MLflow run the verdict (headline metrics, the release
decision as a tag, a one-paragraph description, the audit report) beside dvc.lock, params.yaml and the
metrics files, and print where to look.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from diffaudit.config.release_schema import release_config
from diffaudit.config.schema import Config, load_params
from diffaudit.errors import ResultFileError
from diffaudit.layout import Layout
from diffaudit.results import ReleaseSummary, RunResults, load_results, read_result
from diffaudit.tracking.links import artifact_url, run_url, ui_base
from diffaudit.tracking.mlflow_tracking import PIPELINE_TAG, STAGE_TAG, parent_name, setup, tracking_uri
from diffaudit.tracking.summary import Verdict, verdict

REPORT_ARTIFACT = "audit.html"  # the report, at the top of the parent run's artifacts


def _results(cfg: Config) -> tuple[RunResults, ReleaseSummary | None]:
    layout = Layout.of(cfg)
    results = load_results(layout.metrics_dir)
    release = read_result(layout.release, ReleaseSummary) if layout.release.is_file() else None
    return results, release


def _report_url(client: MlflowClient, base: str, release: ReleaseSummary | None) -> str | None:
    """The report run's audit.html in the MLflow UI (the run that made the release decision)."""
    run_id = release.record.run_id if release is not None and release.record is not None else None
    if not run_id:
        return None
    try:
        exp = client.get_run(run_id).info.experiment_id
    except Exception:  # a record from another store
        return None
    return artifact_url(base, exp, run_id, f"report/{REPORT_ARTIFACT}")


def where_to_look(cfg: Config, v: Verdict, parent_url: str | None) -> list[str]:
    """The last lines of `make repro`: the verdict, the report's path, the dashboard."""
    report = Layout.of(cfg).report_html
    lines = [f"[pipeline] {v.line}"]
    if report.is_file():
        lines.append(f"[pipeline] report: {report} (open it in a browser)")
    ui = f"; this run: {parent_url}" if parent_url else ""
    lines.append(f"[pipeline] dashboard: make ui{ui}")
    return lines


def finish(returncode: int) -> None:
    pid = os.environ.get("DIFFAUDIT_PIPELINE_ID")
    if not pid:
        return
    params = os.environ.get("DIFFAUDIT_PARAMS", "params.yaml")
    cfg = load_params(params)
    experiment_id = setup(cfg)
    client = MlflowClient()
    base = ui_base(tracking_uri(cfg), release_config(cfg).ui_url)
    try:
        results, release = _results(cfg)
    except ResultFileError as err:  # a malformed file: say so, decide nothing
        print(f"[pipeline] {err}", file=sys.stderr)
        results, release, returncode = RunResults(), None, returncode or 1
    v = verdict(results, release, returncode, pid, _report_url(client, base, release))
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = '{pid}' and tags.`{STAGE_TAG}` = 'pipeline'",
        max_results=1,
    )
    if not runs:
        print("[pipeline] every stage was up to date: no new MLflow run")
        for line in where_to_look(cfg, v, None):
            print(line)
        return
    run_id = runs[0].info.run_id
    layout = Layout.of(cfg)
    for path in [params, "dvc.lock", *sorted(str(p) for p in layout.metrics_dir.glob("*.json"))]:
        if Path(path).is_file():
            client.log_artifact(run_id, path, "pipeline")
    if returncode == 0 and layout.report_html.is_file():
        client.log_artifact(run_id, str(layout.report_html))
    now = int(time.time() * 1000)
    if v.metrics:
        client.log_batch(run_id, metrics=[Metric(k, val, now, 0) for k, val in sorted(v.metrics.items())])
    for k, val in (v.tags | {"dvc_repro_exit_code": str(returncode)}).items():
        client.set_tag(run_id, k, val)
    # The runs table shows names, not tags, until a reviewer picks columns: the verdict opens the name.
    client.update_run(run_id, name=f"{v.short} · {parent_name(pid)}")
    client.set_terminated(run_id, "FINISHED" if returncode == 0 else "FAILED")
    for line in where_to_look(cfg, v, run_url(base, experiment_id, run_id)):
        print(line)


if __name__ == "__main__":
    if sys.argv[1:2] != ["finish"]:
        sys.exit("usage: python -m pipelines.pipeline_run finish RETURNCODE")
    finish(int(sys.argv[2]))
