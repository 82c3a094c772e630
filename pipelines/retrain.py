"""`make retrain`: the release loop in one command. Run the pipeline (compose, `dvc repro`), let the
report stage compare the run with the registry's champion and promote or refuse it, optionally
compare with a git revision's metrics (`dvc metrics diff`), and say why, in words and in the exit code:
0 when the run is (or stays) the champion, 1 when it is refused or the pipeline failed.

`--check` skips the run and judges what is on disk (CI runs the pipeline in its own step).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diffaudit.config.compose import compose_config, write_params
from diffaudit.config.release_schema import ReleaseCfg, release_config
from diffaudit.config.schema import Config, load_params
from diffaudit.errors import ConfigError, ResultFileError
from diffaudit.layout import Layout
from diffaudit.release.policy import compare
from diffaudit.release.promote import revoke
from diffaudit.report.html import mark_revoked
from diffaudit.results import (
    GatesResult,
    HeadlineResult,
    ReleaseSummary,
    load_results,
    metric_value,
    read_result,
    write_result,
)
from diffaudit.results.files import not_applicable_metrics
from diffaudit.tracking.mlflow_tracking import setup
from diffaudit.utils.io import write_text


def run_pipeline(params: str, overrides: list[str], dvc_args: list[str]) -> int:
    """compose -> dvc repro -> close the MLflow parent run; the same steps as `make repro`."""
    write_params(compose_config(overrides), params)
    env = dict(os.environ)
    # Stage commands call `python`: this interpreter's environment (the venv) must come first.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env.setdefault("DIFFAUDIT_PIPELINE_ID", f"retrain-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{os.getpid()}")
    os.environ["DIFFAUDIT_PIPELINE_ID"] = env["DIFFAUDIT_PIPELINE_ID"]
    if not Path(".dvc").is_dir():
        subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    print(f"[retrain] dvc repro {' '.join(dvc_args)} (pipeline {env['DIFFAUDIT_PIPELINE_ID']})", flush=True)
    rc = subprocess.run([sys.executable, "-m", "dvc", "repro", *dvc_args], env=env).returncode
    subprocess.run([sys.executable, "-m", "pipelines.pipeline_run", "finish", str(rc)], env=env)
    return rc


def baseline_metrics(rev: str, release: ReleaseCfg, metrics_dir: Path) -> dict[str, float | None] | None:
    """The configured metrics at git revision `rev`, from `dvc metrics diff <rev> --json` over the files
    they name (None when DVC cannot tell, e.g. no cache or remote holds that revision's files). Those
    files are plain outputs, not DVC's metrics (reports/headline.json is): they are named as targets."""
    files = sorted({str(metrics_dir / f"{c.metric.partition('.')[0]}.json") for c in release.compare})
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "metrics", "diff", rev, "--json", "--all", "--targets", *files],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        print(f"[retrain] dvc metrics diff {rev} failed: {proc.stderr.strip()[:300]}", file=sys.stderr)
        return None
    try:
        diff: dict[str, dict[str, dict[str, Any]]] = json.loads(proc.stdout or "{}")
    except ValueError:
        return None
    old: dict[str, float | None] = {}
    for spec in release.compare:
        stem, _, key = spec.metric.partition(".")
        for path, entries in diff.items():
            if Path(path).stem == stem and key in entries:
                value = entries[key].get("old")
                old[spec.metric] = float(value) if isinstance(value, (int, float)) else None
    return old


def judge(cfg: Config, pid: str | None, baseline_rev: str | None) -> tuple[bool, list[str]]:
    """(released, lines to print) from reports/release.json and, when asked, the baseline revision."""
    release = release_config(cfg)
    path = Layout.of(cfg).release
    if not path.is_file():
        return False, [f"no {path}: the report stage has not run"]
    summary = read_result(path, ReleaseSummary)
    record = summary.record
    lines: list[str] = []
    if pid and record is not None and record.pipeline_id not in (None, pid):
        lines.append(f"nothing changed since pipeline {record.pipeline_id}: its decision stands")
    if not summary.registered or record is None:
        lines.append("the model was not registered (release.register_model is false or MLflow was off)")
    released = summary.promoted
    name, version = (record.model_name, record.candidate_version) if record else (None, None)
    champion = record.champion_version if record else None
    head = (
        f"{name} v{version} PROMOTED to champion"
        if released
        else f"{name} v{version} REFUSED: stays candidate; champion is "
        f"{'v' + champion if champion else 'unset'}"
    )
    lines.append(head)
    lines += [f"  - {r}" for r in (record.reasons if record else [])]
    if baseline_rev:
        old = baseline_metrics(baseline_rev, release, Layout.of(cfg).metrics_dir)
        if old is None:
            lines.append(f"  - baseline {baseline_rev}: metrics unavailable, not compared")
        else:
            run = load_results(Layout.of(cfg).metrics_dir)
            new = {s.metric: metric_value(run, s.metric) for s in release.compare}
            na = not_applicable_metrics(run, [s.metric for s in release.compare])
            comparisons = compare(new, old, release.compare, against=baseline_rev, not_applicable=na)
            for c in comparisons:
                lines.append(f"  - {c.note}")
            failed = [c.note for c in comparisons if not c.ok]
            if failed:
                if released and record is not None:
                    _revoke(cfg, summary, failed)
                    lines.append(
                        f"REVOKED: the champion alias is back on "
                        f"{record.previous_champion_version or 'nothing'}"
                    )
                released = False
                lines.append(f"REFUSED: regression against {baseline_rev} beyond tolerance")
    return released, lines


def _revoke(cfg: Config, summary: ReleaseSummary, reasons: list[str]) -> None:
    """Keep registry, release.json, report and card consistent when a later check refuses a promoted run."""
    record = summary.record
    assert record is not None and record.candidate_version is not None, "only a registered run is revoked"
    setup(cfg)
    revoke(record.model_name, record.candidate_version, record.previous_champion_version, "; ".join(reasons))
    record.promoted, record.champion_version = False, record.previous_champion_version
    record.reasons = record.reasons + reasons
    summary.promoted, summary.revoked = False, reasons
    layout = Layout.of(cfg)
    write_result(layout.release, summary)
    if layout.headline.is_file():  # DVC's metrics say the same
        headline = read_result(layout.headline, HeadlineResult)
        headline.promoted = False
        write_result(layout.headline, headline)
    html, card = layout.report_html, layout.model_card
    if html.is_file():
        write_text(html, mark_revoked(html.read_text(), reasons))
    if card.is_file():
        text = card.read_text()
        note = "\n> **Release revoked:** " + "; ".join(reasons) + "\n"
        head, _, rest = text.partition("\n")
        write_text(card, head + "\n" + note + rest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as for `make params`")
    ap.add_argument("--check", action="store_true", help="judge the outputs on disk without running")
    ap.add_argument("--baseline-rev", help="also compare with this git revision's metrics (dvc metrics diff)")
    ap.add_argument("--dvc-args", default="", help="extra `dvc repro` arguments, e.g. '--force'")
    ap.add_argument("--params", default=os.environ.get("DIFFAUDIT_PARAMS", "params.yaml"))
    args = ap.parse_args(argv)
    pid = None
    try:
        if not args.check:
            rc = run_pipeline(args.params, args.overrides, args.dvc_args.split())
            pid = os.environ.get("DIFFAUDIT_PIPELINE_ID")
            if rc != 0:
                cfg = load_params(args.params)
                gates = Layout.of(cfg).gates
                why = (
                    " (a release gate failed and audit.fail_on_gate stopped it: see " + str(gates) + ")"
                    if gates.is_file() and not read_result(gates, GatesResult).passed
                    else ""
                )
                print(f"[retrain] REFUSED: the pipeline failed (dvc repro exit {rc}){why}", file=sys.stderr)
                return 1
        cfg = load_params(args.params)
        released, lines = judge(cfg, pid, args.baseline_rev)
    except (ConfigError, ResultFileError) as err:
        print(f"[retrain] error: {err}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"[retrain] {line}")
    return 0 if released else 1


if __name__ == "__main__":
    sys.exit(main())
