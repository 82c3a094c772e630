"""A small run for the release-loop tests, built in seconds (no training): the real prepare stage, an
untrained UNet exported in diffusers format, a few samples, audit files in the layouts the audit
stages write, then the real report stage (model logged, registered and, with passing gates, made
champion). The `release_run` fixture (tests/conftest.py) builds it once per test process for the
report, registry, serve and dashboard tests; servers and JSON requests for those that start one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffaudit.config.schema import Config
from tests.helpers.config import ROOT, pipeline_env, tiny_config

PIPELINE_ID = "release-test"


@dataclass
class ReleaseRun:
    root: Path
    cfg: Config

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"


def create_experiment(cfg: Config, root: Path) -> None:
    """Artifacts beside the store, not in the working directory's ./mlruns (MLflow's sqlite default)."""
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking.uri)
    if mlflow.get_experiment_by_name(cfg.tracking.experiment_name) is None:
        mlflow.create_experiment(cfg.tracking.experiment_name, artifact_location=(root / "mlartifacts").as_uri())


def write_untrained_model(cfg: Config) -> None:
    from diffaudit.data.store import load_meta
    from diffaudit.diffusion.schedulers import build_noise_scheduler
    from diffaudit.models.unet import build_unet

    meta = load_meta(Path(cfg.paths.data) / "prepared")
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg.model, meta.image_size, meta.channels, meta.num_classes)
    out = Path(cfg.paths.models) / "diffusion"
    unet.save_pretrained(out / "unet", safe_serialization=True)
    build_noise_scheduler(cfg.diffusion).save_pretrained(out / "scheduler")


def write_samples(cfg: Config, per_class: int = 3, steps: int = 2) -> None:
    from diffaudit.data.store import load_meta
    from diffaudit.diffusion.pipeline import ClassConditionalPipeline
    from diffaudit.diffusion.sampling import balanced_labels, sample_seeds
    from diffaudit.utils.images import class_grid, save_png
    from diffaudit.utils.io import save_tensors

    meta = load_meta(Path(cfg.paths.data) / "prepared")
    pipe = ClassConditionalPipeline.from_exported(Path(cfg.paths.models) / "diffusion", cfg.sampler.name)
    labels = balanced_labels(meta.num_classes, per_class)
    seeds = sample_seeds(cfg.seed, len(labels))
    images = pipe(labels=labels, seeds=seeds, num_inference_steps=steps, guidance_scale=2.0, batch_size=64).images
    out = Path(cfg.paths.samples)
    save_tensors(out / "samples.safetensors", {"images": images, "labels": labels, "seeds": torch.tensor(seeds)})
    save_png(class_grid(images, labels, meta.num_classes), out / "grid.png")


def quality(acc: float = 0.9, fid: float = 2.0) -> dict:
    return {"feature_space": "evaluator", "n_images": 30, "fid_evaluator": fid, "fid_evaluator_floor": 0.5,
            "kid_evaluator": 0.01, "kid_evaluator_std": 0.002, "kid_evaluator_floor": 0.001,
            "conditional_accuracy": acc, "conditional_accuracy_per_class": {str(c): acc for c in range(10)},
            "n_generated": 30}


def gates(passed: bool) -> dict:
    """metrics/gates.json as the audit stage writes it (src/diffaudit/audit/gates.py)."""
    acc = {"value": 0.9 if passed else 0.3, "threshold": 0.8, "op": ">=", "passed": passed, "source": "quality.json"}
    mem = {"value": 0.0, "threshold": 0.05, "op": "<=", "passed": True, "source": "pixel space, d1/d2 < 0.333"}
    return {"passed": passed, "failed": [] if passed else ["conditional_accuracy"],
            "gates": {"conditional_accuracy": acc, "memorized_fraction": mem}}


def _png(path: Path, color: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (32, 32), color).save(path)


def write_audit_files(root: Path, passed: bool = True) -> None:
    """Fairness, privacy, explainability, sampler-study files and figures in their stages' layouts."""
    m, plots = root / "metrics", root / "plots"
    fairness = {
        "n_generated": 30, "reference": "uniform", "corrected": True, "ci_level": 0.95,
        "representation": {"thickness": {
            "groups": ["thin", "thick"], "n": 30, "p_ref": [0.5, 0.5], "p_gen_raw": [0.6, 0.4],
            "p_gen_corrected": [0.55, 0.45], "p_gen_raw_ci": [[0.45, 0.75], [0.25, 0.55]],
            "p_gen_corrected_ci": [[0.4, 0.7], [0.3, 0.6]],
            "raw": {"fd_l2": {"value": 0.141, "ci": [0.02, 0.3]}},
            "corrected": {"fd_l2": {"value": 0.071, "ci": [0.0, 0.25]}}}},
        "bias_amplification": {"thickness": {"cells": [
            {"class": "0", "group": "thin", "p_train": 0.5, "p_gen": 0.6, "ba": 0.1, "ci": [-0.1, 0.3]}],
            "max_abs_ba": {"value": 0.1, "ci": [0.0, 0.3]}}},
        "per_group": {"thickness": {"by_group": {"thin": {"conditional_accuracy": 0.9},
                                                 "thick": {"conditional_accuracy": 0.85}},
                                    "gap": {"conditional_accuracy": {"value": 0.05, "ci": [0.0, 0.2]}}}},
        "headline": {"estimate": "corrected", "statistic": "estimate",
                     "fairness_discrepancy": {"value": 0.071, "where": "thickness", "ci": [0.0, 0.25]}},
    }
    privacy = {"ratio": 1 / 3, "n_generated": 30, "n_train": 420, "memorization": {
        "pixel": {"fraction": 0.0, "n_flagged": 0, "n": 30, "ratio_min": 0.8,
                  "closest_pairs": [{"generated": 0, "train": 3, "ratio": 0.8}]}}}
    explain = {"commitment_step": {"mean": 0.55, "lo": 0.4, "hi": 0.7},
               "integrated_gradients": {"convergence_delta": 0.01}, "filmstrip": "plots/explain/filmstrip_0.png"}
    study = {"floor": 0.5, "points": [{"sampler": "ddim", "nfe": 10, "fid_over_floor": 1.2, "seconds": 0.4},
                                      {"sampler": "dpm_solver", "nfe": 10, "fid_over_floor": 0.9, "seconds": 0.4}]}
    for name, data in (("fairness", fairness), ("privacy", privacy), ("explain", explain),
                       ("sampler_study", study), ("gates", gates(passed))):
        (m / f"{name}.json").write_text(json.dumps(data))
    _png(plots / "explain" / "filmstrip_0.png", 80)
    frames = [Image.new("L", (16, 16), c) for c in (0, 128, 255)]
    frames[0].save(plots / "explain" / "emergence.gif", save_all=True, append_images=frames[1:], duration=100)
    _png(plots / "sampler_study" / "fid_vs_nfe.png", 140)
    _png(plots / "audit" / "memorization_gallery.png", 200)
    _png(plots / "audit" / "mitigated_grid.png", 30)


def build_release_run(root: Path, passed: bool = True) -> ReleaseRun:
    """prepare (real) -> untrained model -> samples -> metrics -> report (real) -> pipeline finish."""
    from pipelines import pipeline_run, prepare, report

    cfg = tiny_config(root, ["sampler.steps=2", "sampler.num_per_class=3"])
    with pipeline_env(root, PIPELINE_ID):
        create_experiment(cfg, root)
        prepare.main(cfg)
        write_untrained_model(cfg)
        write_samples(cfg)
        (root / "metrics" / "quality.json").write_text(json.dumps(quality()))
        write_audit_files(root, passed)
        report.main(cfg)
        pipeline_run.finish(0)
    return ReleaseRun(root, cfg)


def copy_run(run: ReleaseRun, dest: Path) -> ReleaseRun:
    """A private copy (files only, paths rewritten) for tests that change outputs."""
    for sub in ("data", "models", "samples", "metrics", "plots"):
        shutil.copytree(run.root / sub, dest / sub)
    cfg = tiny_config(dest, ["sampler.steps=2", "sampler.num_per_class=3"])
    return ReleaseRun(dest, cfg)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(cmd: list[str], ready_url: str, log: Path, timeout: float = 240.0,
           env: dict[str, str] | None = None) -> Iterator[None]:
    """Run a server in its own process group until `ready_url` answers 200; stop the whole group after."""
    import signal
    import subprocess
    import time
    import urllib.request

    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(ready_url, timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {timeout}s:\n{log.read_text()[-3000:]}")
            time.sleep(1.0)
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue


def post_json(url: str, body: dict) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def get_json(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())
