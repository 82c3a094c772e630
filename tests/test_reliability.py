"""Scale and survive: DDP on CPU, kill-and-resume, NaN loss, bitwise determinism, atomic outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from diffaudit.data.store import load_meta, load_split
from diffaudit.errors import NonFiniteLossError
from diffaudit.tracking.mlflow_tracking import STAGE_TAG
from diffaudit.training.diffusion_training import train_diffusion
from diffaudit.utils.io import atomic_path, load_tensor_metadata, write_json
from tests.helpers.config import ROOT, stage_env, tiny_config


def _params_like(tiny_run, tmp_path: Path, **paths: str) -> Path:
    """The tiny run's params.yaml with some paths redirected (and its own MLflow store)."""
    raw = yaml.safe_load((tiny_run.root / "params.yaml").read_text())
    raw["paths"].update(paths)
    raw["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "params.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(raw))
    return out


def _env(params: Path, **extra: str) -> dict[str, str]:
    return stage_env(params, "rel", **extra)


def test_same_seed_gives_bitwise_identical_samples(tiny_run, tmp_path) -> None:
    outs = []
    for name in ("a", "b"):
        params = _params_like(tiny_run, tmp_path / name, samples=str(tmp_path / name / "samples"))
        subprocess.run(
            [sys.executable, "-m", "pipelines.sample"],
            cwd=ROOT,
            env=_env(params),
            check=True,
            capture_output=True,
            timeout=900,
        )
        outs.append((tmp_path / name / "samples" / "samples.safetensors").read_bytes())
    assert outs[0] == outs[1]


def test_saved_tensors_are_byte_identical_across_processes(tmp_path) -> None:
    # safetensors writes its metadata dict in a per-process hash order; several keys expose it.
    code = (
        "import sys, torch; from diffaudit.utils.io import save_tensors; "
        "save_tensors(sys.argv[1], {'x': torch.arange(4)}, {k: k * 2 for k in 'abcdefgh'})"
    )
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for p in paths:
        subprocess.run([sys.executable, "-c", code, str(p)], cwd=ROOT, check=True, timeout=120)
    assert paths[0].read_bytes() == paths[1].read_bytes() == paths[2].read_bytes()
    assert load_tensor_metadata(paths[0]) == {k: k * 2 for k in "abcdefgh"}


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(tiny_run, tmp_path) -> None:
    import shutil

    # Training on past the tiny run's 30 steps is an explicit resume (train.resume_from) from a copy.
    good = tmp_path / "good.ckpt"
    shutil.copy(tiny_run.root / "models" / "checkpoints" / "last.ckpt", good)
    before = good.read_bytes()
    ckpt_dir = tmp_path / "checkpoints"
    data = tiny_run.root / "data" / "prepared"
    train = load_split(data, "train")
    train.images = torch.full_like(train.images, float("nan"))
    more = tiny_run.cfg.train.model_copy(update={"max_steps": 45, "resume_from": str(good)})
    cfg = tiny_run.cfg.model_copy(update={"train": more})
    with pytest.raises(NonFiniteLossError, match="loss is nan at global step 30"):
        train_diffusion(cfg, train, load_split(data, "val"), load_meta(data), ckpt_dir, progress=False)
    assert good.read_bytes() == before  # the last good checkpoint is kept
    assert not list(ckpt_dir.glob("*.ckpt"))  # and no checkpoint of the NaN state was written


def test_atomic_path_leaves_nothing_on_failure(tmp_path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("killed mid-write")
    assert target.read_text().strip().endswith("}") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.slow
def test_killed_training_resumes_from_last_checkpoint(tmp_path) -> None:
    cfg = tiny_config(tmp_path, ["train.max_steps=80", "train.checkpoint_every_n_steps=10"])
    env = _env(tmp_path / "params.yaml")
    for stage in ("prepare",):
        subprocess.run(
            [sys.executable, "-m", f"pipelines.{stage}"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            timeout=900,
        )
    ckpts = tmp_path / "models" / "checkpoints"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.train"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 900
    while not (ckpts / "last.ckpt").exists():  # first written at step 10
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.0)  # let the checkpoint write finish, then kill mid-training
    assert proc.poll() is None, "training ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    step = killed_at["global_step"]
    assert 10 <= step < cfg.train.max_steps
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.train"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stdout
    final = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == cfg.train.max_steps
    assert final["ema"]["optimization_step"] == cfg.train.max_steps  # EMA continued, not restarted
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.`diffaudit.stage` = 'train'",
        order_by=["attributes.start_time DESC"],
    )
    resumed = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert min(m.step for m in resumed) >= step  # the second run logged only the steps after the kill
    assert (tmp_path / "models" / "diffusion" / "unet" / "config.json").is_file()


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path) -> None:
    cfg = tiny_config(tmp_path, ["trainer=ddp_cpu", "train.max_steps=10", "train.checkpoint_every_n_steps=5"])
    env = _env(tmp_path / "params.yaml")
    subprocess.run(
        [sys.executable, "-m", "pipelines.prepare"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=900,
    )
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.train"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`diffaudit.stage` = 'train'")
    assert len(runs) == 1  # only rank 0 wrote to MLflow
    metrics = runs[0].data.metrics
    assert metrics["world_size"] == 2 and metrics["ddp_ranks_agree"] == 1.0
    assert metrics["global_step"] == 10
    assert (tmp_path / "models" / "diffusion" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_dvc_repro_without_the_venv_on_path_runs_the_projects_interpreter(tmp_path) -> None:
    """Red team, issue 18: `dvc repro` with the venv off PATH ran the system python, after DVC had deleted
    the stage's outputs. The stage commands go through pipelines/python.sh, which picks the checkout's
    .venv."""
    from benchmarks.end_to_end import copy_repo

    repo = tmp_path / "repo"
    env = copy_repo(repo)
    (repo / ".venv").symlink_to(Path(sys.prefix))
    bare = {k: v for k, v in env.items() if k != "PATH"} | {"PATH": "/usr/bin:/bin"}
    dvc = Path(sys.executable).parent / "dvc"
    proc = subprocess.run(
        [str(dvc), "repro", "prepare"], cwd=repo, env=bare, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (repo / "data" / "prepared" / "train.safetensors").is_file()


@pytest.mark.parametrize("stage", ["sample", "evaluate"])
def test_sigkill_mid_stage_leaves_no_partial_output(tiny_run, tmp_path, stage: str) -> None:
    """Red team, issue 18 (held up; kept tested): SIGKILL while the stage works leaves none of its
    outputs, not even a partial one (every output is written to a temporary path and renamed)."""
    outs = {"samples": str(tmp_path / "samples"), "metrics": str(tmp_path / "metrics")}
    params = _params_like(tiny_run, tmp_path, plots=str(tmp_path / "plots"), **outs)
    if stage == "sample":  # enough images that the kill lands while it samples
        raw = yaml.safe_load(params.read_text())
        raw["sampler"]["num_per_class"] = 200
        params.write_text(yaml.safe_dump(raw))
    else:  # evaluate reads the tiny run's samples
        params = _params_like(tiny_run, tmp_path, plots=str(tmp_path / "plots"), metrics=outs["metrics"])
    proc = subprocess.Popen(
        [sys.executable, "-m", f"pipelines.{stage}"], cwd=ROOT, env=_env(params), stderr=subprocess.DEVNULL
    )
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:  # until its stage run is open: work starts
        exp = (tmp_path / "mlflow.db").exists() and client.get_experiment_by_name("diffaudit")
        if exp and client.search_runs([exp.experiment_id], filter_string=f"tags.`{STAGE_TAG}` = '{stage}'"):
            break
        time.sleep(0.1)
    time.sleep(0.5)
    assert proc.poll() is None, f"{stage} ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    written = sorted(
        p.relative_to(tmp_path).as_posix()
        for sub in ("samples", "metrics", "plots")
        for p in (tmp_path / sub).rglob("*")
        if p.is_file() and not any(part.startswith(".") and part.endswith(".tmp") for part in p.parts)
    )
    assert written == [], written  # only atomic_path's hidden temporary folders may remain
