"""MLflow tracking: one parent run per pipeline, nested stage runs with config params and lineage tags,
no secrets logged, a clear and quick error for an unreachable server."""

from __future__ import annotations

import socket
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from diffaudit.errors import TrackingError
from diffaudit.tracking.mlflow_tracking import (
    PIPELINE_TAG,
    STAGE_TAG,
    check_reachable,
    flatten,
    redact_uri,
    stage_run,
)
from tests.helpers.config import tiny_config


def test_tiny_run_has_parent_and_nested_stage_runs(tiny_run) -> None:
    client = MlflowClient(f"sqlite:///{tiny_run.root / 'mlflow.db'}")
    exp = client.get_experiment_by_name(tiny_run.cfg.tracking.experiment_name)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = 'tiny-session'")
    by_stage = {r.data.tags[STAGE_TAG]: r for r in runs}
    assert {"pipeline", "prepare", "evaluator", "train", "sample", "evaluate"} <= set(by_stage)
    parent = by_stage["pipeline"].info.run_id
    for stage in ("prepare", "evaluator", "train", "sample", "evaluate"):
        run = by_stage[stage]
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.info.status == "FINISHED"
        assert run.data.params["train.max_steps"] == str(tiny_run.cfg.train.max_steps)
        assert len(run.data.tags["git_commit"]) >= 7
        assert 50 < run.data.metrics["peak_rss_mib"] < 16_000  # a torch process, measured in MiB not KiB
    assert "input_md5.data" in by_stage["train"].data.tags
    train = by_stage["train"]
    history = client.get_metric_history(train.info.run_id, "train/loss")
    assert len(history) >= 3 and len({m.step for m in history}) == len(history)  # step-wise loss
    artifacts = {a.path for a in client.list_artifacts(train.info.run_id)}
    assert {"model", "config", "checkpoints"} <= artifacts
    assert "fid_evaluator" in by_stage["evaluate"].data.metrics


def test_failed_stage_marks_its_run_failed(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DIFFAUDIT_PIPELINE_ID", "fail-test")
    # the environment overrides the config's store by design; another test's leftover must not redirect this
    # one
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_config(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), stage_run(cfg, "prepare"):
        raise RuntimeError("boom")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`{STAGE_TAG}` = 'prepare'")
    assert run.info.status == "FAILED"


def test_environment_secrets_are_not_logged(tmp_path, monkeypatch) -> None:
    secret = "s3cr3t-planted-value-123"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("DIFFAUDIT_PIPELINE_ID", "secret-test")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = tiny_config(tmp_path)
    with stage_run(cfg, "prepare") as run:
        mlflow.log_metric("x", 1.0)
    data = MlflowClient().get_run(run.info.run_id).data
    logged = list(data.params.items()) + list(data.tags.items())
    assert not any(secret in k or secret in v for k, v in logged)


def test_credentials_in_uris_are_redacted() -> None:
    assert redact_uri("https://alice:pw@mlflow.example/x") == "https://***@mlflow.example/x"
    assert flatten({"a": {"b": [1, 2]}, "c": 3}) == {"a.b": "[1, 2]", "c": "3"}


def test_unreachable_server_fails_within_seconds() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(TrackingError, match=f"127.0.0.1:{port}.*unreachable"):
        check_reachable(f"http://127.0.0.1:{port}", timeout=3)
    assert time.monotonic() - start < 10


def test_log_outputs_writes_metrics_curves_files_and_tags_in_one_call(tmp_path, monkeypatch) -> None:
    from diffaudit.tracking.mlflow_tracking import log_outputs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test, as is the global below
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", uri)
    log_outputs(metrics={"a": 1.0})  # outside a run (another rank): nothing, no error
    (tmp_path / "f.json").write_text("{}")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "p.png").write_bytes(b"png")
    mlflow.set_experiment("curves")
    with mlflow.start_run() as run:
        curve = {i: 0.5 * i for i in range(1500)}  # more than one MLflow batch
        log_outputs(
            metrics={"q": {"fid": 2.0, "name": "skipped: not a number"}},
            prefix="x.",
            curves={"loss": curve},
            files=[tmp_path / "f.json"],
            folders={"figs": tmp_path / "plots"},
            tags={"t": "v"},
        )
    client = MlflowClient()
    done = client.get_run(run.info.run_id)
    assert done.data.metrics == {"x.q.fid": 2.0, "loss": 0.5 * 1499} and done.data.tags["t"] == "v"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == sorted(curve.items())
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"f.json", "figs"}


def test_attribute_names_become_valid_mlflow_keys(tmp_path, monkeypatch) -> None:
    """An ordinary attribute column (`skin tone (1-6)`) reaches metric, curve, param and tag keys through
    the stages (test accuracy per head, the explain stage's emergence curves, split sizes): every one is
    logged to a real store under its sanitized key instead of failing the stage (issue 18)."""
    from diffaudit.tracking.mlflow_tracking import log_outputs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", uri)
    attr = "skin tone (1-6)"
    mlflow.set_experiment("attribute-names")
    with mlflow.start_run() as run:
        log_outputs(
            metrics={attr: 0.9},
            prefix="test_accuracy.",
            curves={f"explain.step.emergence.{attr}": {0: 0.1, 1: 0.2}},
            params={f"data.n_{attr}": 12},
            tags={f"not_applicable.{attr}": "one group"},
        )
    data = MlflowClient().get_run(run.info.run_id).data
    key = "skin tone _1-6_"
    assert data.metrics == {f"test_accuracy.{key}": 0.9, f"explain.step.emergence.{key}": 0.2}
    assert data.params == {f"data.n_{key}": "12"}
    assert data.tags[f"not_applicable.{key}"] == "one group"
