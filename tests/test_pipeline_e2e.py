"""The real DVC pipeline, end to end, in a temporary git repository on the smoke config:
outputs, metrics, MLflow runs, and DVC's cache (a sampler change reruns only what reads it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from benchmarks.end_to_end import copy_repo
from diffaudit.results.headline import MAX_KEYS, HeadlineResult
from tests.helpers.dvc_views import (
    CHROMIUM,
    COLUMNS,
    dvc,
    dvc_in_terminal,
    install_template,
    render_offline,
    widest,
)

pytestmark = pytest.mark.slow
ARTIFACTS = Path(
    os.environ.get("DIFFAUDIT_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts")
)


def _sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 1500) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A copy of the project's tracked (and unignored) files as a fresh git repo, smoke config as default
    (the benchmark's own copy, so both run the same repository)."""
    repo = tmp_path_factory.mktemp("e2e") / "repo"
    return repo, copy_repo(repo)


def test_dvc_repro_runs_every_stage_and_tracks_it(repo) -> None:
    path, env = repo
    out = _sh(["dvc", "repro"], path, env | {"DIFFAUDIT_PIPELINE_ID": "e2e-1"}).stdout
    every = (
        "prepare",
        "evaluator",
        "train",
        "sample",
        "evaluate",
        "sampler_study",
        "explain",
        "audit",
        "report",
    )
    for stage in every:
        assert f"Running stage '{stage}'" in out
    quality = json.loads((path / "metrics" / "quality.json").read_text())
    for key in ("fid_evaluator", "fid_evaluator_floor", "kid_evaluator", "conditional_accuracy"):
        assert isinstance(quality[key], float)
    assert (path / "samples" / "grid.png").is_file()
    assert (path / "models" / "diffusion" / "unet" / "config.json").is_file()
    lock = yaml.safe_load((path / "dvc.lock").read_text())
    assert set(every) <= set(lock["stages"])
    gates = json.loads((path / "metrics" / "gates.json").read_text())
    assert set(gates["gates"]) >= {"conditional_accuracy", "fairness_discrepancy", "memorized_fraction"}
    # the pipeline ends with the report and the registry aliases
    assert "<html" in (path / "reports" / "audit.html").read_text()[:500].lower()
    assert "## Model details" in (path / "reports" / "MODEL_CARD.md").read_text()
    release = json.loads((path / "reports" / "release.json").read_text())
    shown = json.loads(_sh(["dvc", "metrics", "show", "--json"], path, env).stdout)
    assert "reports/headline.json" in json.dumps(shown) and "metrics/quality.json" not in json.dumps(shown)

    client = MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("diffaudit")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`diffaudit.pipeline_id` = 'e2e-1'")
    stages = {r.data.tags["diffaudit.stage"]: r for r in runs}
    assert {"pipeline", *every} <= set(stages)
    record = release["record"]
    candidate = client.get_model_version_by_alias(record["model_name"], "candidate")
    assert str(candidate.version) == record["candidate_version"] and candidate.run_id in {
        r.info.run_id for r in runs
    }
    if release["promoted"]:  # first run, no champion to beat: only the gates decide
        assert release["gates_passed"]
        assert (
            str(client.get_model_version_by_alias(record["model_name"], "champion").version)
            == record["candidate_version"]
        )
    head = _sh(["git", "rev-parse", "HEAD"], path, env).stdout.strip()
    assert stages["train"].data.tags["git_commit"].startswith(head)
    assert stages["evaluate"].data.metrics["fid_evaluator"] == pytest.approx(quality["fid_evaluator"])


def test_a_second_make_repro_runs_no_stage(repo) -> None:
    """Issue 18: the first run wrote bytecode caches into the source folders the stages depend on, so
    `dvc status` was never clean and the next `make repro` reran prepare, train and explain."""
    path, env = repo
    status = _sh(["dvc", "status"], path, env).stdout
    assert "up to date" in status, status
    venv = Path(sys.executable).parent.parent
    out = _sh(["make", "--no-print-directory", f"VENV={venv}", "repro"], path, env).stdout
    assert "Running stage" not in out, out[-3000:]


def test_dvc_views_fit_200_columns_and_every_plot_draws_offline(repo) -> None:
    """What a reviewer runs after `make repro`: `dvc metrics show` and the headline experiments table
    (`make exp`) fit 200 columns, and every plot of `dvc plots show` draws in Chromium with every network
    request refused (the page inlines vega: .dvc/config plots.html_template)."""
    path, env = repo
    shown = dvc(["metrics", "show"], path, env)
    assert widest(shown) <= COLUMNS, shown
    files = json.loads(dvc(["metrics", "show", "--json"], path, env))
    headline = next(iter(files.values()))["data"]
    assert list(headline) == ["reports/headline.json"]
    assert 0 < len(headline["reports/headline.json"]["data"]) <= MAX_KEYS
    keys = "|".join(HeadlineResult.model_fields)  # the Makefile's `exp` target
    table = dvc(
        ["exp", "show", "--no-pager", "--drop", ".*", "--keep", f"^(Experiment|Created|{keys})$"], path, env
    )
    assert widest(table) <= COLUMNS and "fid_evaluator_floor" in table and "…" not in table, table
    # Plain `dvc exp show` in a 200-column terminal: its pager opens on the first 200 columns, which hold
    # the experiment, its date and every headline metric with its value (params and deps scroll right).
    screen = [line[:COLUMNS] for line in dvc_in_terminal(["exp", "show"], path, env).splitlines()]
    header = next(line for line in screen if "Experiment" in line)
    workspace = next(line for line in screen if line.strip().startswith("workspace"))
    keys = list(headline["reports/headline.json"]["data"])
    assert header.split()[2 : 2 + len(keys)] == keys, header
    assert "…" not in header + workspace and len(workspace.split()) >= 2 + len(keys), screen

    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing: CI must install Debian's chromium (.ci/run does)")
        pytest.skip(f"{CHROMIUM} not installed")
    install_template(path)
    plots = json.loads(dvc(["plots", "show", "--json"], path, env))["data"]
    dvc(["plots", "show"], path, env)
    drew = render_offline(path / "dvc_plots" / "index.html", ARTIFACTS / "dvc_plots.png")
    assert drew["refused"] == [] and drew["errors"] == [], drew
    assert len(drew["plots"]) == len(plots) >= 9, drew
    assert len(drew["drawn"]) == len(drew["vega_divs"]) == len(plots) - len(drew["images"]), drew
    assert all(ink > 500 for ink in drew["drawn"]) and all(drew["images"]), drew
    # the run as the baseline of the next test's `dvc metrics diff` (headline.json is in DVC's cache)
    _sh(["git", "add", "-A"], path, env)
    _sh(["git", "commit", "-qm", "run 1"], path, env)


def test_changing_the_sampler_reruns_only_sample_and_downstream(repo) -> None:
    path, env = repo
    _sh([sys.executable, "-m", "pipelines.compose", "sampler.steps=3"], path, env)
    out = _sh(["dvc", "repro"], path, env | {"DIFFAUDIT_PIPELINE_ID": "e2e-2"}).stdout
    for stage in ("prepare", "evaluator", "train"):
        assert f"Running stage '{stage}'" not in out
    assert "Running stage 'sample'" in out and "Running stage 'evaluate'" in out
    assert yaml.safe_load((path / "params.yaml").read_text())["sampler"]["steps"] == 3


def test_dvc_metrics_diff_is_a_short_table(repo) -> None:
    path, env = repo
    diff = dvc(["metrics", "diff", "--all"], path, env)  # HEAD (run 1) against the sampler change
    rows = diff.splitlines()[1:]
    assert 0 < len(rows) <= MAX_KEYS and widest(diff) <= COLUMNS, diff
    assert all(r.startswith("reports/headline.json") for r in rows), diff
    changed = json.loads(dvc(["metrics", "diff", "--json"], path, env))["reports/headline.json"]
    assert "fid_evaluator" in changed and changed["fid_evaluator"]["old"] != changed["fid_evaluator"]["new"]


def test_dvc_exp_run_with_hydra_override(repo) -> None:
    path, env = repo
    _sh(["git", "checkout", "-q", "--", "params.yaml"], path, env)
    out = _sh(["dvc", "exp", "run", "-S", "sampler.steps=5"], path, env).stdout
    assert "Running stage 'sample'" in out and "Running stage 'train'" not in out
    assert yaml.safe_load((path / "params.yaml").read_text())["sampler"]["steps"] == 5
