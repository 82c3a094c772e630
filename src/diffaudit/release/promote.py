"""The release rule applied in the MLflow registry: every run's model becomes a registered version with
the alias `candidate`; `champion` moves to it only when release.policy.decide says so. The decision
and its reasons are kept with the version (tags) so anyone can see later why a model was, or was not,
released.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from diffaudit.config.release_schema import ReleaseCfg
from diffaudit.config.schema import Config
from diffaudit.release.policy import compare, decide
from diffaudit.results.gates import GatesResult
from diffaudit.results.release import ReleaseRecord
from diffaudit.tracking.links import artifact_url, ui_base
from diffaudit.tracking.mlflow_tracking import PIPELINE_TAG, STAGE_TAG, tracking_uri
from diffaudit.tracking.registry import (
    CANDIDATE,
    CHAMPION,
    FEATURE_SPACE_TAG,
    METRIC_TAG,
    alias_version,
    version_metrics,
)
from diffaudit.tracking.summary import DECISION_TAG, NOTE_TAG, REVOKED

# A version's release state: pending from registration until its aliases moved (a process killed in between
# leaves it pending, and the aliases untouched), then published.
RELEASE_STATE_TAG = "diffaudit.release_state"
PENDING, PUBLISHED = "pending: registered, aliases not yet moved", "published"


def register_and_decide(
    cfg: Config,
    release: ReleaseCfg,
    model_info: Any,
    candidate_metrics: dict[str, float | None],
    gates: GatesResult | None,
    run_id: str | None,
    pipeline_id: str | None,
    feature_space: str | None = None,
    not_applicable: dict[str, str] | None = None,
    model_tags: dict[str, str] | None = None,
    publish_now: bool = True,
) -> ReleaseRecord:
    """Register the logged model, alias it `candidate`, and move `champion` when the rule allows (`gates`
    None: the audit has not run). `feature_space` names the evaluator that measured the candidate (its
    md5); the champion's metrics are compared only when it was measured by the same one (or says nothing
    about it).

    `publish_now=False` registers the version (tagged `diffaudit.release_state` = pending) but moves no
    alias: the caller writes its report first and then calls `publish`, so a process killed in between
    leaves the aliases, and what `make serve` loads, as they were."""
    client = MlflowClient()
    name = cfg.tracking.registered_model_name
    champion = alias_version(name, CHAMPION, client)
    champion_metrics = version_metrics(champion) if champion else {}
    champion_space = (champion.tags or {}).get(FEATURE_SPACE_TAG) if champion else None
    same = not (feature_space and champion_space and feature_space != champion_space)
    comparisons = (
        compare(
            candidate_metrics,
            champion_metrics,
            release.compare,
            same_space=same,
            not_applicable=not_applicable,
        )
        if champion
        else []
    )
    champion_version = str(champion.version) if champion else None
    decision = decide(gates, comparisons, champion_version, release)
    tags = {f"{METRIC_TAG}{k}": repr(v) for k, v in candidate_metrics.items() if v is not None}
    tags |= {
        "diffaudit.gates_passed": str(gates.passed if gates is not None else "not run"),
        "diffaudit.decision": "champion" if decision.promote else "refused",
        "diffaudit.reasons": "; ".join(decision.reasons)[:4900],
    }
    tags |= model_tags or {}  # an imported model's origin (pipelines/report.py `model_tags`)
    if pipeline_id:
        tags["diffaudit.pipeline_id"] = pipeline_id
    if feature_space:
        tags[FEATURE_SPACE_TAG] = feature_space
    tags[RELEASE_STATE_TAG] = PENDING
    mv = mlflow.register_model(model_info.model_uri, name, tags=tags)
    report = report_url(cfg, release, run_id)
    client.update_model_version(
        name, mv.version, description=version_description(decision.promote, decision.reasons, report)
    )
    record = ReleaseRecord(
        model_name=name,
        candidate_version=str(mv.version),
        champion_version=str(mv.version) if decision.promote else champion_version,
        previous_champion_version=champion_version,
        promoted=decision.promote,
        reasons=decision.reasons,
        comparisons=decision.comparisons,
        gates_ran=gates is not None,
        gates_passed=gates is not None and gates.passed,
        model_uri=f"models:/{name}/{mv.version}",
        run_id=run_id,
        pipeline_id=pipeline_id,
    )
    if publish_now:
        publish(record)
    return record


def publish(record: ReleaseRecord) -> None:
    """Move the aliases a registered version's decision calls for (`candidate`, and `champion` when it
    was promoted), last, and mark the version published."""
    client = MlflowClient()
    name, version = record.model_name, record.candidate_version
    client.set_registered_model_alias(name, CANDIDATE, version)
    if record.promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, RELEASE_STATE_TAG, PUBLISHED)


def mark_revoked_runs(client: MlflowClient, report_run: str | None, pid: str | None, reason: str) -> None:
    """The dashboard agrees with the registry: the report run and its pipeline's parent run say revoked."""
    if not report_run:
        return
    run = client.get_run(report_run)
    client.set_tag(report_run, DECISION_TAG, REVOKED)
    found = (
        client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.`{PIPELINE_TAG}` = '{pid}' and tags.`{STAGE_TAG}` = 'pipeline'",
            max_results=1,
        )
        if pid
        else []
    )
    for parent in found:
        note = parent.data.tags.get(NOTE_TAG, "")
        client.set_tag(parent.info.run_id, DECISION_TAG, REVOKED)
        client.set_tag(
            parent.info.run_id, NOTE_TAG, f"**REVOKED** by a later check: {reason}.\n\n{note}"[:4900]
        )
        client.log_metric(parent.info.run_id, "promoted", 0.0, step=1)
        name = parent.info.run_name or ""
        base = name.partition(" · ")[2] or name  # drop the verdict the pipeline's end put first
        client.update_run(parent.info.run_id, name=f"REVOKED · {base}")


def report_url(cfg: Config, release: ReleaseCfg, run_id: str | None) -> str | None:
    """The report run's audit.html in the MLflow UI (release.ui_url, else the tracking server, else
    `make ui`): the stage logs it there as report/audit.html."""
    if not run_id:
        return None
    experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    return artifact_url(
        ui_base(tracking_uri(cfg), release.ui_url), experiment_id, run_id, "report/audit.html"
    )


def version_description(promoted: bool, reasons: list[str], report: str | None) -> str:
    """A model version's description (markdown): the decision, its reasons, the report."""
    head = (
        "**Champion**: released by the release rule."
        if promoted
        else "**Refused**: stays candidate, not released."
    )
    why = "".join(f"\n- {r}" for r in reasons)
    link = f"\n\nAudit report: [audit.html]({report})" if report else ""
    return f"{head}{why}{link}"[:4900]


def revoke(name: str, version: str, previous_champion: str | None, reason: str) -> None:
    """Undo a promotion decided before a later check failed (e.g. a regression against the main
    branch): the champion alias goes back to the previous champion, or away when there was none."""
    client = MlflowClient()
    current = alias_version(name, CHAMPION, client)
    if current is not None and str(current.version) == str(version):
        if previous_champion:
            client.set_registered_model_alias(name, CHAMPION, previous_champion)
        else:
            client.delete_registered_model_alias(name, CHAMPION)
    client.set_model_version_tag(name, version, "diffaudit.decision", "refused")
    client.set_model_version_tag(name, version, "diffaudit.reasons", reason[:4900])
    mv = client.get_model_version(name, version)
    client.update_model_version(
        name,
        version,
        description=f"**Revoked**: promoted, then refused.\n- {reason}\n\n{mv.description or ''}"[:4900],
    )
    mark_revoked_runs(client, mv.run_id, (mv.tags or {}).get("diffaudit.pipeline_id"), reason)
