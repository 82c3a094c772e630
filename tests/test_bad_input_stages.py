"""Bad input through the real stage entry points: exit 1, one line naming the fault, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
from PIL import Image

from tests.helpers.config import ROOT, stage_env, tiny_config


def _run_stage(stage: str, params: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"pipelines.{stage}"],
        cwd=ROOT,
        env=stage_env(params, "bad-input"),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _image_folder(root: Path, per_class: int = 12) -> Path:
    root.mkdir(parents=True)
    rows = []
    for label in ("cat", "dog"):
        for i in range(per_class):
            name = f"{label}{i}.png"
            Image.new("L", (16, 16), 10 * i + (5 if label == "dog" else 0)).save(
                root / name
            )  # distinct images
            rows.append({"filename": name, "label": label, "sex": "fm"[i % 2]})
    pd.DataFrame(rows).to_csv(root / "attributes.csv", index=False)
    return root


def test_prepare_stage_rejects_a_corrupt_image_and_writes_nothing(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "images")
    (folder / "dog3.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    tiny_config(out, ["data=image_folder", f"data.root={folder}", "data.image_size=16", "data.channels=1"])
    proc = _run_stage("prepare", out / "params.yaml")
    assert proc.returncode == 1, proc.stderr
    assert "[prepare] error" in proc.stderr and "dog3.png" in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "data" / "prepared").exists()


def test_train_stage_refuses_a_checkpoint_of_another_config(tiny_run, tmp_path: Path) -> None:
    foreign = tiny_run.root / "models" / "checkpoints" / "last.ckpt"
    out = tmp_path / "run"
    # same data, another UNet width: the checkpoint's config hash cannot match
    tiny_config(
        out,
        [
            f"paths.data={tiny_run.root / 'data'}",
            "model.block_out_channels=[8,16]",
            "model.norm_num_groups=4",
            f"train.resume_from={foreign}",
        ],
    )
    proc = _run_stage("train", out / "params.yaml")
    assert proc.returncode == 1, proc.stderr
    assert "[train] error" in proc.stderr and "different model" in proc.stderr and str(foreign) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "models" / "diffusion").exists()
