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
import subprocess
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
        mlflow.create_experiment(
            cfg.tracking.experiment_name, artifact_location=(root / "mlartifacts").as_uri()
        )


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
    images = pipe(
        labels=labels, seeds=seeds, num_inference_steps=steps, guidance_scale=2.0, batch_size=64
    ).images
    out = Path(cfg.paths.samples)
    save_tensors(
        out / "samples.safetensors", {"images": images, "labels": labels, "seeds": torch.tensor(seeds)}
    )
    save_png(class_grid(images, labels, meta.num_classes), out / "grid.png")


def _iv(v: float, method: str = "percentile") -> dict:
    return {"low": v * 0.9, "high": v * 1.1, "method": method}


def quality(acc: float = 0.9, fid: float = 2.0) -> dict:
    """metrics/quality.json in the evaluate stage's layout (results.QualityResult; evaluator space, no
    CAS)."""
    classes = [str(c) for c in range(10)]
    sets = {"": (fid, 0.01, 0.002, 0.8, 0.7, 0.9, 0.6), "_floor": (0.5, 0.001, 0.0005, 0.9, 0.9, 1.0, 0.9)}
    out: dict = {
        "feature_space": "evaluator",
        "n_images": 30,
        "n_generated": 30,
        "n_test": 60,
        "bootstrap": {"reps": 20, "level": 0.95},
        "pr_k": 3,
    }
    for suffix, (f, k, k_std, p, r, d, c) in sets.items():  # test data: keys built here, the model checks
        out |= {
            f"fid_evaluator{suffix}": f,
            f"kid_evaluator{suffix}": k,
            f"kid_evaluator{suffix}_std": k_std,
            f"precision{suffix}": p,
            f"recall{suffix}": r,
            f"fid_evaluator{suffix}_debiased": f * 0.8,
            f"fid_evaluator{suffix}_debiased_ci": _iv(f * 0.8, "half_sample"),
            f"kid_evaluator{suffix}_ci": _iv(k, "half_sample"),
            f"precision{suffix}_ci": _iv(p),
            f"recall{suffix}_ci": _iv(r),
        }
        out |= {f"density{suffix}": d, f"coverage{suffix}": c}
        out |= {f"density{suffix}_ci": _iv(d), f"coverage{suffix}_ci": _iv(c)}
    out |= {
        "vendi_per_class": dict.fromkeys(classes, 2.5),
        "vendi_floor_per_class": dict.fromkeys(classes, 2.8),
    }
    for suffix, a in (("", acc), ("_floor", 0.95)):
        out |= {
            f"conditional_accuracy{suffix}": a,
            f"conditional_accuracy{suffix}_ci": _iv(a),
            f"conditional_accuracy{suffix}_per_class": dict.fromkeys(classes, a),
            f"conditional_accuracy{suffix}_per_class_ci": {c: _iv(a) for c in classes},
            f"conditional_accuracy{suffix}_per_class_n": dict.fromkeys(classes, 3),
        }
    return out


def gates(passed: bool) -> dict:
    """metrics/gates.json as the audit stage writes it (src/diffaudit/audit/gates.py)."""
    acc = {
        "value": 0.9 if passed else 0.3,
        "threshold": 0.8,
        "op": ">=",
        "passed": passed,
        "source": "quality.json",
        "ci": [0.85, 0.95] if passed else [0.2, 0.4],
        "ci_crosses_threshold": False,
    }
    mem = {
        "value": 0.0,
        "threshold": 0.05,
        "op": "<=",
        "passed": True,
        "source": "pixel space, d1/d2 < 0.333",
        "ci": None,
        "ci_crosses_threshold": None,
    }
    return {
        "passed": passed,
        "failed": [] if passed else ["conditional_accuracy"],
        "gates": {"conditional_accuracy": acc, "memorized_fraction": mem},
    }


def _png(path: Path, color: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (32, 32), color).save(path)


def _discrepancies(fd: float, ci: list[float]) -> dict:
    stat = {"value": fd, "ci": ci, "method": "inversion", "plug_in": fd * 1.1, "null_q95": 0.2}
    stat["exceeds_null"] = False
    return {"fd_l2": stat, "tv": stat | {"value": fd / 2}, "kl": stat | {"value": fd / 4}}


def fairness() -> dict:
    """metrics/fairness.json in the audit stage's layout (results.FairnessResult), one attribute, no
    mitigation."""
    rep = {
        "groups": ["thin", "thick"],
        "n": 30,
        "p_ref": [0.5, 0.5],
        "correction": "pooled",
        "p_gen_raw": [0.6, 0.4],
        "p_gen_corrected": [0.55, 0.45],
        "p_gen_raw_ci": [[0.45, 0.75], [0.25, 0.55]],
        "p_gen_corrected_ci": [[0.4, 0.7], [0.3, 0.6]],
        "p_gen_ci_method": "percentile",
        "raw": _discrepancies(0.141, [0.02, 0.3]),
        "corrected": _discrepancies(0.071, [0.0, 0.25]),
        "other_reference": {
            "reference": "train",
            "p_ref": [0.5, 0.5],
            "p_gen_corrected": [0.55, 0.45],
            "raw": _discrepancies(0.141, [0.02, 0.3]),
            "corrected": _discrepancies(0.071, [0.0, 0.25]),
        },
        "confusion_test": [[30, 0], [2, 28]],
        "confusion_condition": 1.1,
    }
    cell = {
        "class": "0",
        "group": "thin",
        "n_gen": 3,
        "p_train": 0.5,
        "p_gen_raw": 0.6,
        "p_gen": 0.6,
        "ba": 0.1,
        "ci": [-0.1, 0.3],
        "method": "percentile",
        "clear_of_zero": False,
        "confusion": "pooled",
    }
    metrics = {
        "conditional_accuracy": 0.9,
        "confidence": 0.8,
        "precision": 0.7,
        "recall": 0.6,
        "fid": float("nan"),
    }
    per_group = {
        "sizes": {"thin": 16, "thick": 14},
        "excluded_small_groups": [],
        "real_sizes": {"thin": 30, "thick": 30},
        "by_group": {"thin": metrics, "thick": metrics | {"conditional_accuracy": 0.85}},
        "overall": metrics,
        "gap": {  # the set metrics are not resampled: no interval, as the audit writes them
            m: {
                "value": 0.05,
                "ci": [0.0, 0.2],
                "method": "inversion",
                "plug_in": 0.06,
                "worst_group": "thick",
            }
            if m not in ("recall", "fid")
            else {"value": 0.06, "ci": None, "method": None, "plug_in": 0.06, "worst_group": "thick"}
            for m in metrics
        },
    }
    too_small = {
        "sizes": {"0": 3},
        "excluded_small_groups": ["0"],
        "real_sizes": {},
        "by_group": {},
        "overall": {},
        "gap": {},
    }
    return {
        "n_generated": 30,
        "reference": "uniform",
        "corrected": True,
        "ci_level": 0.95,
        "bootstrap": 20,
        "evaluator_test_accuracy": {"class": 0.9, "thickness": 0.95},
        "representation": {"thickness": rep},
        "bias_amplification": {
            "thickness": {
                "corrected": True,
                "cells": [cell],
                "n_cells_clear_of_zero": 0,
                "wang_russakovsky": {"value": 0.02, "ci": [-0.05, 0.1], "method": "percentile", "n_cells": 1},
                "zhao": {"value": 0.0, "ci": [0.0, 0.0], "method": "percentile", "n_cells": 0},
                "max_abs_ba": {
                    "value": 0.1,
                    "ci": [0.0, 0.3],
                    "method": "inversion",
                    "plug_in": 0.12,
                    "class": "0",
                    "group": "thin",
                    "cell_ci": [-0.1, 0.3],
                    "clear_of_zero": False,
                },
            }
        },
        "per_group": {"thickness": per_group, "class": too_small},
        "attribute_measure": {"thickness": {"measured_by": "evaluator"}},
        "headline": {
            "estimate": "corrected",
            "statistic": "estimate",
            "fairness_discrepancy": {
                "value": 0.071,
                "where": "thickness",
                "estimate": 0.071,
                "ci": [0.0, 0.25],
            },
            "bias_amplification": {
                "value": 0.1,
                "where": "thickness",
                "estimate": 0.1,
                "ci": [0.0, 0.3],
                "measure": "worst_cell",
            },
            "worst_group_gap": {"value": float("nan"), "where": None},
        },
        "seconds": 1.5,
    }


def privacy() -> dict:
    mem = {
        "fraction": 0.0,
        "n_flagged": 0,
        "n": 30,
        "ratio_min": 0.8,
        "ratio_median": 0.9,
        "ratio_quantiles": {"0.01": 0.8, "0.05": 0.82, "0.25": 0.86},
        "real_test_floor": {"fraction": 0.0, "n": 60, "ratio_min": 0.5},
        "closest_pairs": [{"generated": 0, "train": 3, "ratio": 0.8}],
    }
    near = {
        "percentile": 1.0,
        "rank": 0,
        "threshold": 0.0,
        "fraction": {"value": 0.0, "ci": [0.0, 0.1135], "method": "wilson", "n_flagged": 0, "n": 30},
        "dcr_min": 2.1,
        "dcr_median": 3.0,
        "heldout": {
            "n": 60,
            "dcr_min": 1.9,
            "dcr_median": 2.9,
            "scheme": "leave-one-out",
            "false_alarm": {"value": 0.0, "ci": [0.0, 0.0602], "method": "wilson", "n_flagged": 0, "n": 60},
        },
        "closest_pairs": [{"generated": 0, "train": 3, "dcr": 2.1, "ratio": 0.8, "flagged": False}],
    }
    return {
        "ratio": 1 / 3,
        "n_generated": 30,
        "n_train": 420,
        "memorization": {"pixel": mem},
        "near_copies": {"pixel": near},
    }


def explain() -> dict:
    """metrics/explain.json in the explain stage's layout (results.ExplainMetrics)."""
    stats = {"mean": 1.25, "median": 1.0, "std": 0.5, "mean_fraction": 0.3125, "never_settled": 0.0}
    return {
        "sampler": {"name": "ddpm", "steps": 2, "guidance_scale": 1.0},
        "model": {"conditioning": "class_cfg", "labels": "condition"},
        "num_images": 20,
        "commitment": {
            "per_head": {"class": stats | {"per_class": {"0": stats}}},
            "attribute_vs_class": {
                "thickness": {
                    "share_attribute_first": 0.5,
                    "share_same_step": 0.25,
                    "share_class_first": 0.25,
                    "mean_step_difference": -0.5,
                }
            },
        },
        "emergence": {"area_under_curve": {"class": 0.4, "thickness": 0.7}, "final_matches_condition": 0.35},
        "guidance": {"note": "the sampler recorded no unconditional pass: no guidance maps"},
        "attribution": {
            "steps": [1],
            "timesteps": [500],
            "ig_convergence_delta": {
                "max_abs": 0.0123,
                "mean_abs": 0.01,
                "max_relative": 0.2,
                "mean_relative": 0.1,
            },
            "logit_gap_mean": 1.5,
        },
        "loss_by_timestep": {
            "t0000_0499": {"loss": 0.2, "x0_mse": 0.05},
            "t0500_0999": {"loss": 0.5, "x0_mse": 0.4},
        },
        "spectrum": {
            "settle_step": {"low": 0, "mid": 1, "high": 1},
            "coarse_to_fine": True,
            "first_step_power_ratio": {"low": 0.9, "mid": 0.5, "high": 0.2},
            "high_frequency_share": {"first": 0.3, "middle": 0.2, "last": 0.1},
        },
        "seconds": {
            "sampling": 0.1,
            "emergence": 0.1,
            "filmstrips": 0.1,
            "attribution": 0.1,
            "loss_by_timestep": 0.1,
            "spectrum": 0.1,
            "total": 0.6,
        },
    }


def sampler_study() -> dict:
    """metrics/sampler_study.json in the sampler_study stage's layout (results.SamplerStudyResult)."""

    def point(nfe: int, w: float, fid: float) -> dict:
        return {
            "fid_evaluator": fid,
            "kid_evaluator": 0.01,
            "kid_evaluator_std": 0.001,
            "precision": 0.8,
            "recall": 0.7,
            "conditional_accuracy": 0.9,
            "fid_over_floor": fid / 0.5,
            "nfe": nfe,
            "unet_evals": nfe * (1 if w == 1.0 else 2),
            "guidance_scale": w,
            "seconds": 0.4,
            "reaches_target": fid / 0.5 <= 3.0,
        }

    return {
        "feature_space": "evaluator",
        "n_images": 20,
        "num_per_class": 2,
        "guidance_scale": 1.0,
        "floor": {
            "fid_evaluator": 0.5,
            "kid_evaluator": 0.001,
            "precision": 0.9,
            "recall": 0.9,
            "n_images": 20,
        },
        "target": {"fid_over_floor_max": 3.0, "conditional_accuracy_min": 0.9},
        "nfe_sweep": {"ddim": {"10": point(10, 1.0, 0.6)}, "dpm_solver": {"10": point(10, 1.0, 0.45)}},
        "guidance_sweep": {
            "sampler": "ddim",
            "nfe": 10,
            "points": {"1.0": point(10, 1.0, 0.6), "2.0": point(10, 2.0, 0.7)},
        },
        "fewest_nfe_to_target": {"ddim": 10, "dpm_solver": 10},
        "best": {"sampler": "ddim", "nfe": 10, "seconds": 0.4},
        "seconds": 2.0,
    }


def write_audit_files(root: Path, passed: bool = True) -> None:
    """Fairness, privacy, explainability, sampler-study files (written through their models, so they are
    valid files of those layouts) and figures."""
    from diffaudit.results import (
        ExplainMetrics,
        FairnessResult,
        GatesResult,
        PrivacyResult,
        SamplerStudyResult,
        write_result,
    )

    m, plots = root / "metrics", root / "plots"
    for model, data in (
        (FairnessResult, fairness()),
        (PrivacyResult, privacy()),
        (ExplainMetrics, explain()),
        (SamplerStudyResult, sampler_study()),
        (GatesResult, gates(passed)),
    ):
        write_result(m / model.FILE, model.model_validate(data))
    _png(plots / "explain" / "filmstrip_0.png", 80)
    frames = [Image.new("L", (16, 16), c) for c in (0, 128, 255)]
    frames[0].save(plots / "explain" / "emergence.gif", save_all=True, append_images=frames[1:], duration=100)
    _png(plots / "sampler_study" / "quality_vs_nfe.png", 140)
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
        from diffaudit.results import QualityResult, write_result

        write_result(root / "metrics" / QualityResult.FILE, QualityResult.model_validate(quality()))
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
def server(
    cmd: list[str], ready_url: str, log: Path, timeout: float = 240.0, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """Run a server in its own process group until `ready_url` answers 200; stop the whole group after."""
    import signal
    import time
    import urllib.request

    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT, env=env
        )
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
        yield proc
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


def post_json(
    url: str, body: dict, timeout: float = 120.0, headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"} | (headers or {}),
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        raw = err.read() or b"{}"
        try:
            return err.code, json.loads(raw)
        except json.JSONDecodeError:  # MLflow's 504 is plain text
            return err.code, {"message": raw.decode(errors="replace")}


def get_json(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())
