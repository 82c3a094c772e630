"""`make audit MODEL=<folder>` end to end (issue 13) in a fresh copy of the repository, on the smoke config:
models written by plain diffusers inside the test (unconditional DDPMPipeline, class-conditional unet/ +
scheduler/, latent LDMPipeline), and diffaudit's own export of a trained run audited again."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from benchmarks.end_to_end import copy_repo
from diffaudit.models.imported import folder_md5
from diffaudit.results.applicability import UNCONDITIONAL, UNCONDITIONAL_GUIDANCE
from tests.helpers import diffusers_models as dm

pytestmark = pytest.mark.slow

STAGES = ("sample", "evaluate", "sampler_study", "explain", "audit", "report")
VENV = Path(sys.executable).parent.parent


def _make(cmd: list[str], cwd: Path, env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["make", "--no-print-directory", f"VENV={VENV}", *cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    if ok:
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    root = tmp_path_factory.mktemp("audit")
    repo = root / "repo"
    return repo, copy_repo(repo), root


def _audited(repo: Path, env: dict[str, str], model: Path) -> str:
    out = _make(["audit", f"MODEL={model}"], repo, env).stdout
    for stage in ("prepare", "evaluator", "train", *STAGES):
        assert f"'{stage}'" in out, f"stage {stage} neither ran nor was cached:\n{out[-3000:]}"
    return out


def _names_the_model(repo: Path, model: Path) -> None:
    md5 = folder_md5(model)
    source = _json(repo / "models" / "diffusion" / "source.json")
    assert source["md5"] == md5 and source["path"] == str(model.resolve())
    lock = (repo / "dvc.lock").read_text()
    assert md5 in lock  # the same hash dvc.lock records for model.path
    html = (repo / "reports" / "audit.html").read_text()
    card = (repo / "reports" / "MODEL_CARD.md").read_text()
    for page in (html, card):
        assert md5 in page and str(model.resolve()) in page
    gates = _json(repo / "metrics" / "gates.json")
    assert gates["gates"], "no gate was judged"


def test_unconditional_pipeline_folder(repo) -> None:
    path, env, root = repo
    model = dm.unconditional_pipeline(root / "uncond")
    first = _audited(path, env, model)
    assert "Running stage 'train'" in first
    _names_the_model(path, model)
    q = _json(path / "metrics" / "quality.json")
    assert q["labels"] == "evaluator"
    assert q["conditional_accuracy"] is None and q["not_applicable"]["conditional_accuracy"] == UNCONDITIONAL
    assert "cas" not in q and "cas" in q["not_applicable"]
    assert isinstance(q["fid_evaluator"], float) and isinstance(q["fid_evaluator_floor"], float)
    gates = _json(path / "metrics" / "gates.json")
    ca = gates["gates"]["conditional_accuracy"]
    assert ca["passed"] is None and ca["not_applicable"] == UNCONDITIONAL
    assert "conditional_accuracy" in gates["not_applicable"] and "conditional_accuracy" not in gates["failed"]
    # Whom it represents: the predicted-class distribution against training, raw and corrected, with CIs.
    f = _json(path / "metrics" / "fairness.json")
    rep = f["representation"]["class"]
    for est in ("raw", "corrected"):
        fd = rep[est]["fd_l2"]
        assert isinstance(fd["value"], float) and fd["ci"][0] <= fd["value"] <= fd["ci"][1]
    assert f["bias_amplification"], "no bias amplification over predicted classes"
    e = _json(path / "metrics" / "explain.json")
    assert e["model"] == {"conditioning": "none", "labels": "evaluator"}
    assert e["emergence"]["final_matches_condition"] is None
    assert e["guidance"]["note"] == UNCONDITIONAL_GUIDANCE and e["sampler"]["guidance_scale"] == 1.0
    assert isinstance(e["attribution"]["ig_convergence_delta"]["max_abs"], float)
    study = _json(path / "metrics" / "sampler_study.json")
    assert study["target"]["conditional_accuracy_min"] is None
    assert list(study["guidance_sweep"]["points"]) == ["1.0"]
    html = (path / "reports" / "audit.html").read_text()
    assert "not applicable" in html and "unconditional" in html
    # Registered like a trained model; served with seeds alone.
    release = _json(path / "reports" / "release.json")
    version = release["record"]["candidate_version"]
    client = MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    mv = client.get_model_version(release["record"]["model_name"], version)
    assert mv.tags["diffaudit.model.imported_md5"] == folder_md5(model)
    assert mv.tags["diffaudit.model.conditioning"] == "none"
    exp = client.get_experiment_by_name("diffaudit")
    train = client.search_runs([exp.experiment_id], filter_string="tags.`diffaudit.stage` = 'train'")[0]
    assert train.data.tags["model.imported_path"] == str(model.resolve())
    mlflow_env = {"MLFLOW_TRACKING_URI": f"sqlite:///{path / 'mlflow.db'}"}
    code = (
        "import mlflow.pyfunc, pandas as pd, sys;"
        f"m = mlflow.pyfunc.load_model('models:/{mv.name}/{mv.version}');"
        "out = m.predict(pd.DataFrame({'seed': [1, 2, 3]}), params={'steps': 2});"
        "print(out.shape, out.dtype)"
    )
    served = subprocess.run(
        [sys.executable, "-c", code],
        cwd=path,
        env=env | mlflow_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert served.returncode == 0, served.stderr[-3000:]
    assert "(3, 16, 16, 1) uint8" in served.stdout
    # A second audit of the same folder reruns nothing.
    again = _make(["audit", f"MODEL={model}"], path, env).stdout
    assert "Running stage" not in again, again[-3000:]


def test_class_conditional_unet_scheduler(repo) -> None:
    path, env, root = repo
    model = dm.conditional_unet_scheduler(root / "cond")
    _audited(path, env, model)
    _names_the_model(path, model)
    q = _json(path / "metrics" / "quality.json")
    assert isinstance(q["conditional_accuracy"], float) and "conditional_accuracy" not in q["not_applicable"]
    e = _json(path / "metrics" / "explain.json")
    assert e["model"]["conditioning"] == "class"
    assert "null class" in e["guidance"]["note"]  # conditional, but no null class: no guidance maps
    gates = _json(path / "metrics" / "gates.json")
    assert gates["gates"]["conditional_accuracy"]["passed"] in (True, False)


def test_latent_pipeline_folder(repo) -> None:
    path, env, root = repo
    model = dm.latent_pipeline(root / "latent")
    _audited(path, env, model)
    _names_the_model(path, model)
    source = _json(path / "models" / "diffusion" / "source.json")
    assert source["latent"] and source["vae_class"] == "VQModel"
    q = _json(path / "metrics" / "quality.json")
    assert isinstance(q["fid_evaluator"], float)
    p = _json(path / "metrics" / "privacy.json")
    assert p["membership"] is None or "headline" in p["membership"]
    assert "Latent model" in (path / "reports" / "MODEL_CARD.md").read_text()


def test_own_export_audits_to_the_same_metrics(repo) -> None:
    """diffaudit's export of a trained run, audited as a model from elsewhere: the same weights and seeds
    give the same samples, so every metric is equal (bitwise: the samples' hash is the same, and DVC reuses
    evaluate's cached result; the sampler study and explain recompute and agree exactly)."""
    path, env, root = repo
    shutil.rmtree(path / "models" / "diffusion", ignore_errors=True)
    _make(["repro"], path, env)
    before = {n: _json(path / "metrics" / f"{n}.json") for n in ("quality", "sampler_study", "explain")}
    samples_md5 = folder_md5(path / "samples")
    export = root / "export"
    shutil.copytree(path / "models" / "diffusion", export)
    _audited(path, env, export)
    assert folder_md5(path / "samples") == samples_md5
    after = {n: _json(path / "metrics" / f"{n}.json") for n in before}
    assert after["quality"] == before["quality"]
    for n in ("sampler_study", "explain"):
        assert _strip_seconds(after[n]) == _strip_seconds(before[n]), n


def _strip_seconds(d: object) -> object:
    if isinstance(d, dict):
        return {k: _strip_seconds(v) for k, v in d.items() if k != "seconds"}
    if isinstance(d, list):
        return [_strip_seconds(v) for v in d]
    return d
