"""The team server (`make server`), for real: PostgreSQL, `mlflow server --app-name basic-auth` with
proxied artifacts and host validation. Anonymous writes and foreign Host headers are refused, a reviewer
reads but cannot register or promote, two pipelines log at once, a server restart mid-stage fails the stage
in one line and the rerun closes the run it left, a `user:password@` URI passes the reachability probe, and
no credential reaches the store, the artifacts, or any output."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from diffaudit.errors import TrackingError
from diffaudit.tracking.mlflow_tracking import (
    PIPELINE_TAG,
    STAGE_TAG,
    check_reachable,
    stage_run,
)
from diffaudit.tracking.orphans import NOTE_TAG
from pipelines.team_server import ADMIN, Settings, prepare
from pipelines.team_users import add_user
from tests.helpers.config import ROOT, stage_env, tiny_config
from tests.helpers.release import free_port
from tests.helpers.team_server import TeamServer, credentials, postgres_or_skip, team_server


@pytest.fixture(scope="module")
def team() -> Iterator[TeamServer]:
    postgres_or_skip()
    with team_server() as server:
        yield server


@pytest.fixture
def as_pipeline(team: TeamServer, monkeypatch: pytest.MonkeyPatch) -> TeamServer:
    """This process logs to the team server as the pipeline account, from the environment alone."""
    for k, v in team.client_env("pipeline").items():
        monkeypatch.setenv(k, v)
    return team


def _request(url: str, body: dict | None = None, host: str | None = None, login: str | None = None) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Content-Type", "application/json")
    if host:
        req.add_header("Host", host)
    if login:
        req.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def assert_no_secrets(team: TeamServer, *outputs: str) -> None:
    """No credential in the store (both databases, every artifact) nor in any output given."""
    haystack = team.stored_text() + "\n".join(outputs)
    assert "CREATE TABLE public.users" in haystack and "reviewer" in haystack  # the real store was searched
    for log in team.logs:
        haystack += log.read_text(errors="replace")
    for secret in team.secrets():
        assert secret not in haystack, "a credential reached the store, the artifacts or an output"


def test_anonymous_and_wrong_logins_and_foreign_hosts_are_refused(team: TeamServer) -> None:
    api = f"{team.uri}/api/2.0/mlflow"
    assert _request(f"{api}/experiments/create", {"name": "anonymous"}) == 401
    assert _request(f"{api}/experiments/create", {"name": "wrong"}, login="pipeline:not-the-password") == 401
    reviewer = f"reviewer:{team.passwords['reviewer']}"
    assert _request(f"{api}/experiments/search", {"max_results": 1}, login=reviewer) == 200
    # DNS rebinding: a page on another name that resolves here gets nothing
    assert (
        _request(f"{api}/experiments/search", {"max_results": 1}, host="evil.example", login=reviewer) == 403
    )
    with credentials("reviewer", team.passwords["reviewer"]):
        assert MlflowClient(team.uri).get_experiment_by_name("anonymous") is None  # nothing was written
    assert team.settings.host == "127.0.0.1"
    argv = " ".join(team.cmd)  # what `ps` shows: the options, not the store's password
    assert "--app-name basic-auth" in argv and "--serve-artifacts" in argv and "--allowed-hosts" in argv
    assert not any(secret in argv for secret in team.secrets())


def test_missing_postgres_fails_in_ci_and_skips_elsewhere(monkeypatch) -> None:
    from diffaudit.tracking import postgres

    monkeypatch.setattr(postgres, "available", lambda: False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must install"):
        postgres_or_skip()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y postgresql"):
        postgres_or_skip()


def test_ci_installs_postgresql() -> None:
    """In CI these tests must run, not skip: both CI entry points install Debian's postgresql."""
    assert "postgresql" in (ROOT / ".ci" / "run").read_text()
    assert "postgresql" in (ROOT / ".github" / "workflows" / "ci.yml").read_text()


def test_off_loopback_needs_named_hosts(tmp_path: Path) -> None:
    assert Settings(tmp_path, port=5002).hosts() == "127.0.0.1:5002,localhost:5002"
    with pytest.raises(TrackingError, match="SERVER_ALLOWED_HOSTS"):
        prepare(Settings(tmp_path / "home", host="0.0.0.0"))
    assert not (tmp_path / "home").exists()  # refused before any database or secret was made
    assert Settings(tmp_path, host="0.0.0.0", allowed_hosts="mlflow.team:5002").hosts() == "mlflow.team:5002"


def test_probe_accepts_credentials_in_the_uri(team: TeamServer, tmp_path: Path, monkeypatch) -> None:
    """Issue 18: `http://user:password@host` was always 'unreachable' (urllib took the login for the host
    name). Now it passes, and a stage logs through it; a dead port still fails, without the password."""
    password = team.passwords["pipeline"]
    uri = f"http://pipeline:{password}@127.0.0.1:{team.settings.port}"
    check_reachable(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DIFFAUDIT_PIPELINE_ID", "probe-uri")
    cfg = tiny_config(tmp_path)
    with stage_run(cfg, "prepare") as run:
        mlflow.log_metric("x", 1.0)
    with credentials("reviewer", team.passwords["reviewer"]):
        assert MlflowClient(team.uri).get_run(run.info.run_id).info.status == "FINISHED"
    with pytest.raises(TrackingError, match="unreachable") as err:
        check_reachable(f"http://pipeline:{password}@127.0.0.1:{free_port()}", timeout=3)
    assert password not in str(err.value)
    assert_no_secrets(team)


def test_reviewer_reads_but_cannot_register_or_promote(
    as_pipeline: TeamServer, tmp_path: Path, monkeypatch
) -> None:
    team = as_pipeline
    monkeypatch.setenv("DIFFAUDIT_PIPELINE_ID", "reviewer-check")
    cfg = tiny_config(tmp_path)
    (tmp_path / "model.txt").write_text("weights")
    with stage_run(cfg, "report") as run:
        mlflow.log_artifact(str(tmp_path / "model.txt"), "model")
    name = "team-reviewer-check"
    writer = MlflowClient(team.uri)
    writer.create_registered_model(name)
    v1 = writer.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
    writer.set_registered_model_alias(name, "champion", v1.version)

    with credentials("reviewer", team.passwords["reviewer"]):
        reviewer = MlflowClient(team.uri)
        assert reviewer.get_run(run.info.run_id).data.tags[STAGE_TAG] == "report"  # reads runs
        assert [a.path for a in reviewer.list_artifacts(run.info.run_id, "model")] == ["model/model.txt"]
        assert reviewer.get_registered_model(name).aliases == {"champion": v1.version}
        for refused in (
            lambda: reviewer.set_registered_model_alias(name, "champion", v1.version),  # promote
            lambda: reviewer.set_registered_model_alias(name, "challenger", v1.version),
            lambda: reviewer.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id),
            lambda: reviewer.log_param(run.info.run_id, "tampered", "1"),
        ):
            with pytest.raises(MlflowException) as err:
                refused()
            assert err.value.error_code == "PERMISSION_DENIED"
    model = writer.get_registered_model(name)
    assert model.aliases == {"champion": v1.version}
    assert len(writer.search_model_versions(f"name = '{name}'")) == 1


@pytest.mark.slow
def test_two_pipelines_log_at_once(team: TeamServer, tmp_path: Path) -> None:
    """Two real prepare stages, separate pipelines, as subprocesses on the server at the same time;
    the login comes from the environment only (each config still names its own sqlite store)."""
    procs = {}
    for pid in ("team-a", "team-b"):
        cfg = tiny_config(tmp_path / pid)
        env = stage_env(tmp_path / pid / "params.yaml", pid, **team.client_env("pipeline"))
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
        procs[pid] = subprocess.Popen(
            [sys.executable, "-m", "pipelines.prepare"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    outputs = {pid: p.communicate(timeout=300)[0] for pid, p in procs.items()}
    for pid, p in procs.items():
        assert p.returncode == 0, outputs[pid]
        assert not (tmp_path / pid / "mlflow.db").exists()  # the environment's server won over the config

    with credentials("reviewer", team.passwords["reviewer"]):
        client = MlflowClient(team.uri)
        exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
        assert exp.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
        for pid in procs:
            runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{pid}'")
            by_stage = {r.data.tags[STAGE_TAG]: r for r in runs}
            assert set(by_stage) == {"pipeline", "prepare"}, pid
            prepare = by_stage["prepare"]
            assert prepare.info.status == "FINISHED"
            assert prepare.data.tags["mlflow.parentRunId"] == by_stage["pipeline"].info.run_id
            assert prepare.data.params["data.n_train"] == "420"
            artifacts = {a.path for a in client.list_artifacts(prepare.info.run_id)}
            assert {"config", "data.json", "real_grid.png"} <= artifacts, artifacts
    stored = list((team.home / "artifacts").rglob("data.json"))
    assert len(stored) >= 2  # on the server's artifact root, not in either pipeline's folder
    outputs_text = [Path(p).read_text(errors="replace") for p in (tmp_path).rglob("*.json")]
    assert_no_secrets(team, *outputs.values(), *outputs_text)


@pytest.mark.slow
def test_server_restart_mid_stage_fails_in_one_line_and_the_rerun_closes_the_run(
    as_pipeline: TeamServer, tmp_path: Path, monkeypatch
) -> None:
    team = as_pipeline
    monkeypatch.setenv("DIFFAUDIT_PIPELINE_ID", "restart-mid-stage")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # fail in seconds, not minutes
    cfg = tiny_config(tmp_path)
    with pytest.raises(TrackingError) as err, stage_run(cfg, "train") as run:
        mlflow.log_metric("train/loss", 1.0, step=0)
        team.stop()  # the server goes away mid-stage, and is back only after the stage gave up
        mlflow.log_metric("train/loss", 0.5, step=1)
    team.start()
    message = str(err.value)
    assert "\n" not in message and "failed during stage train" in message
    assert run.info.run_id in message and "RUNNING" in message
    assert team.passwords["pipeline"] not in message
    assert MlflowClient().get_run(run.info.run_id).info.status == "RUNNING"  # what the message warned of

    with stage_run(cfg, "train") as rerun:  # the rerun, on the restarted server
        mlflow.log_metric("train/loss", 0.5, step=1)
    client = MlflowClient()
    left = client.get_run(run.info.run_id)
    assert left.info.status == "FAILED"
    assert rerun.info.run_id in left.data.tags[NOTE_TAG]
    assert client.get_run(rerun.info.run_id).info.status == "FINISHED"
    assert_no_secrets(team, message)


def test_a_second_writer_gets_the_existing_experiment_and_model(as_pipeline: TeamServer) -> None:
    """A writer account added after the experiment and model exist (made by another writer) may log to the
    one and promote in the other: `team_users --role writer` grants EDIT and MANAGE on them."""
    team = as_pipeline
    owner = MlflowClient(team.uri)
    exp_id = owner.create_experiment("team-second-writer")
    run = owner.create_run(exp_id)
    name = "team-second-writer-model"
    owner.create_registered_model(name)
    version = owner.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id).version
    password = "pw-ci2-" + "x" * 12
    with credentials(ADMIN, team.passwords[ADMIN]):
        granted = add_user(team.uri, "ci2", password, "writer", "team-second-writer", name)
    assert granted == ["EDIT on experiment team-second-writer", f"MANAGE on model {name}"]
    with credentials("ci2", password):
        second = MlflowClient(team.uri)
        second.log_metric(second.create_run(exp_id).info.run_id, "x", 1.0)
        second.set_registered_model_alias(name, "champion", version)
    assert owner.get_registered_model(name).aliases == {"champion": version}


@pytest.mark.slow
def test_release_loop_on_the_server_registers_promotes_and_keeps_credentials_out(
    as_pipeline: TeamServer, tmp_path: Path, monkeypatch, capfd
) -> None:
    """The release loop (tests/helpers/release.py: real prepare and report stages, an untrained model)
    on the server as the pipeline account: the model is registered and made champion there, and no
    credential is in the report, the model card, release.json, the printed output or the store."""
    from diffaudit.results import QualityResult, write_result
    from pipelines import pipeline_run, prepare, report
    from tests.helpers.release import quality, write_audit_files, write_samples, write_untrained_model

    team = as_pipeline
    extra = ["sampler.steps=2", "sampler.num_per_class=3", "tracking.experiment_name=team-release"]
    cfg = tiny_config(tmp_path, [*extra, "tracking.registered_model_name=team-release-model"])
    monkeypatch.setenv("DIFFAUDIT_PIPELINE_ID", "team-release")
    monkeypatch.setenv("DIFFAUDIT_PROGRESS", "0")
    monkeypatch.setenv("DIFFAUDIT_PARAMS", str(tmp_path / "params.yaml"))
    prepare.main(cfg)
    write_untrained_model(cfg)
    write_samples(cfg)
    write_result(tmp_path / "metrics" / QualityResult.FILE, QualityResult.model_validate(quality()))
    write_audit_files(tmp_path, True)
    report.main(cfg)
    pipeline_run.finish(0)

    with credentials("reviewer", team.passwords["reviewer"]):
        model = MlflowClient(team.uri).get_registered_model("team-release-model")
    assert "champion" in model.aliases
    assert not (tmp_path / "mlflow.db").exists()  # the environment's server, not the config's sqlite
    reports = [p for p in (tmp_path / "reports").rglob("*") if p.is_file()]
    assert {"MODEL_CARD.md", "release.json"} <= {p.name for p in reports}
    printed = capfd.readouterr()
    texts = [p.read_bytes().decode("utf-8", "replace") for p in reports]
    assert_no_secrets(team, printed.out, printed.err, *texts)
