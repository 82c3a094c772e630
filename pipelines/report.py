"""Stage report (last): register the model (alias `candidate`; `champion` when the release rule allows),
then write reports/audit.html, reports/MODEL_CARD.md, reports/release.json and reports/headline.json
(the one DVC metrics file), all logged to MLflow.

The registry comes first so the report can state the decision it documents.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow.entities import Run

from diffaudit.config.release_schema import ReleaseCfg, release_config
from diffaudit.config.schema import Config
from diffaudit.layout import Layout
from diffaudit.models.export import exported_unet_config, model_fingerprint
from diffaudit.release.promote import publish, register_and_decide
from diffaudit.report.content import Lineage, RunContent, load_content
from diffaudit.report.html import render_html
from diffaudit.report.model_card import render_model_card, render_model_card_appendix
from diffaudit.results import HeadlineResult, ReleaseRecord, ReleaseSummary, metric_value, write_result
from diffaudit.results.files import not_applicable_metrics
from diffaudit.tracking.links import model_version_url, run_url, ui_base
from diffaudit.tracking.mlflow_tracking import log_outputs, pipeline_id, redact_uri, stage_run, tracking_uri
from diffaudit.tracking.registry import log_model
from diffaudit.utils.io import write_text
from diffaudit.utils.lineage import git_commit, git_note, path_md5
from pipelines._stage import run


def _md5(path: Path) -> str | None:
    return path_md5(path) if path.exists() else None


def model_tags(content: RunContent) -> dict[str, str]:
    """MLflow tags naming what was audited: the conditioning, and an imported model's path and hash (the
    train run carries the same as model.imported_*)."""
    tags = {"diffaudit.model.conditioning": content.conditioning}
    if (s := content.model_source) is not None:
        tags |= {"diffaudit.model.imported_md5": s.md5, "diffaudit.model.imported_path": s.path}
    return tags


def lineage(
    cfg: Config, content: RunContent, release: ReleaseCfg, active: Run | None, record: ReleaseRecord | None
) -> Lineage:
    base = ui_base(tracking_uri(cfg), release.ui_url)  # tracking/links.py: one rule for every link
    layout = Layout.of(cfg)
    data = content.results.data
    lin = Lineage(
        git_commit=git_commit(),
        git_note=git_note(),
        data_md5=data.data_md5 if data else None,
        model_md5=_md5(layout.diffusion),
        samples_md5=_md5(layout.samples_dir),  # the DVC output (dvc.lock's hash), not one file in it
        tracking_uri=redact_uri(tracking_uri(cfg)),
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    if active is not None:
        exp, rid = active.info.experiment_id, active.info.run_id
        lin.experiment_id, lin.run_id = exp, rid
        lin.run_url = run_url(base, exp, rid)
        parent = active.data.tags.get("mlflow.parentRunId")
        if parent:
            lin.pipeline_run_id, lin.pipeline_url = parent, run_url(base, exp, parent)
    if record is not None and record.candidate_version:
        lin.model_url = model_version_url(base, record.model_name, record.candidate_version)
    return lin


def main(cfg: Config) -> None:
    release = release_config(cfg)
    layout = Layout.of(cfg)
    model_dir = layout.diffusion
    inputs = {"model": model_dir, "samples": layout.samples_dir, "metrics": layout.metrics_dir}
    with stage_run(cfg, "report", inputs) as active:
        content = load_content(cfg, os.environ.get("DIFFAUDIT_PARAMS", "params.yaml"))
        candidate = {c.metric: metric_value(content.results, c.metric) for c in release.compare}
        na = not_applicable_metrics(content.results, [c.metric for c in release.compare])
        record: ReleaseRecord | None = None
        if active is not None and release.register_model:
            if not exported_unet_config(model_dir).is_file():
                raise FileNotFoundError(f"{model_dir} holds no exported model: run the train stage first")
            info = log_model(cfg, model_dir, content.class_names, release)
            # The evaluator judges conditional accuracy and, by default, spans FID's feature space: a champion
            # measured by another one (new data retrains it) has incomparable numbers.
            evaluator = layout.evaluator
            space = (
                f"{cfg.eval.feature}+evaluator:{model_fingerprint(evaluator)}" if evaluator.is_dir() else None
            )
            record = register_and_decide(
                cfg,
                release,
                info,
                candidate,
                content.gates,
                active.info.run_id,
                pipeline_id(cfg),
                feature_space=space,
                not_applicable=na,
                model_tags=model_tags(content),
                publish_now=False,  # the aliases move last, once the report is written and logged
            )
        # Re-read the run so the parent tag set at start is visible.
        active_run = mlflow.get_run(active.info.run_id) if active is not None else None
        lin = lineage(cfg, content, release, active_run, record)
        write_text(layout.report_html, render_html(content, lin, record, release.max_images_per_section))
        write_text(layout.model_card, render_model_card(content, lin, record))
        write_text(layout.model_card_appendix, render_model_card_appendix(content))
        gates_passed = content.gates is not None and content.gates.passed
        summary = ReleaseSummary(
            promoted=record.promoted if record else False,
            registered=record is not None,
            gates_ran=content.gates is not None,
            gates_passed=gates_passed,
            candidate_metrics=candidate,
            **({"record": record} if record else {}),
        )
        write_result(layout.release, summary)
        write_result(layout.headline, HeadlineResult.of(content.results, summary))  # DVC's metrics file
        tags = (
            {
                "release.decision": "champion" if record.promoted else "refused",
                "release.model_version": record.candidate_version or "",
            }
            if record
            else {}
        ) | model_tags(content)
        log_outputs(
            metrics={"promoted": float(summary.promoted), "gates_passed": float(gates_passed)}
            | {k: v for k, v in candidate.items() if v is not None},
            prefix="release.",
            files=[
                layout.report_html,
                layout.model_card,
                layout.model_card_appendix,
                layout.release,
                layout.headline,
            ],
            artifact_path="report",
            tags=tags,
        )
        if record is not None:
            publish(record)
        written = f"wrote {layout.report_html} and {layout.model_card}"
        if record is None:
            print(f"[report] {written} (model not registered)")
        else:
            verdict = "PROMOTED to champion" if record.promoted else "REFUSED (stays candidate)"
            print(f"[report] {record.model_name} v{record.candidate_version}: {verdict}")
            for reason in record.reasons:
                print(f"[report]   - {reason}")
            print(f"[report] {written}")


if __name__ == "__main__":
    run("report", main)
