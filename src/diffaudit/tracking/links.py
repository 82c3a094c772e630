"""Links into the MLflow UI, from `release.ui_url` or the tracking URI (never a fixed address): the same
rule as the report's links (pipelines/report.py `ui_base`).

MLflow 3.17's UI opens every experiment as GenAI (its traces overview) unless the browser's
"GenAI | Model training" switch says otherwise (a click on it is remembered by the browser); a link
with `?workflowType=machine_learning` opens as Model training. Every link here carries it, so it opens
on the training runs.
"""

from __future__ import annotations

from urllib.parse import quote

from diffaudit.tracking.mlflow_tracking import redact_uri

# What `make ui` serves by default (UI_HOST/UI_PORT), for a local store that has no server of its own.
MAKE_UI = "http://127.0.0.1:5000"
MODEL_TRAINING = "?workflowType=machine_learning"


def ui_base(tracking_uri: str, ui_url: str | None = None) -> str:
    """Where a reviewer opens MLflow: the configured URL, the tracking server itself, or `make ui`."""
    if ui_url:
        return ui_url.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return redact_uri(tracking_uri).replace("//***@", "//").rstrip("/")
    return MAKE_UI


def experiment_url(base: str, experiment_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}{MODEL_TRAINING}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{MODEL_TRAINING}"


def artifact_url(base: str, experiment_id: str, run_id: str, path: str) -> str:
    """The MLflow UI page of one artifact of a run (it opens the artifact in the run's artifact browser)."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{quote(path)}{MODEL_TRAINING}"


def model_version_url(base: str, name: str, version: str) -> str:
    return f"{base}/#/models/{quote(name)}/versions/{version}{MODEL_TRAINING}"
