"""Bad input through the real stage entry points: exit 1, one line naming the fault, nothing written."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
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


@pytest.mark.parametrize("megapixels", [100, 400])  # PIL warns over 89.5 M pixels and raises over 179 M
def test_prepare_stage_refuses_a_decompression_bomb_unread(tmp_path: Path, megapixels: int) -> None:
    """Red team, issue 18: a small PNG declaring gigapixels came out as a traceback (or, under PIL's
    error limit, was decoded). Refused before decoding, in one line naming the file."""
    folder = _image_folder(tmp_path / "images")
    side = int((megapixels * 1e6) ** 0.5)
    Image.new("1", (side, side), 0).save(folder / "dog3.png")  # a 1-bit blank: a few KB on disk
    out = tmp_path / "run"
    tiny_config(out, ["data=image_folder", f"data.root={folder}", "data.image_size=16", "data.channels=1"])
    proc = _run_stage("prepare", out / "params.yaml")
    assert proc.returncode == 1, proc.stderr
    assert "[prepare] error" in proc.stderr and "dog3.png" in proc.stderr and "decompression" in proc.stderr
    assert "Traceback" not in proc.stderr and not (out / "data" / "prepared").exists()


@contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real small filesystem (tmpfs) at `path`, to fill. Mounting needs root with CAP_SYS_ADMIN (this
    machine and its CI have it); elsewhere the test skips, saying why."""
    path.mkdir(parents=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    proc = subprocess.run(mount, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    """Red team, issue 18: the prepare stage on a full device died with safetensors' traceback."""
    out = tmp_path / "run"
    with _tmpfs(tmp_path / "small", "300k") as small:
        tiny_config(out, [f"paths.data={small / 'data'}"])
        proc = _run_stage("prepare", out / "params.yaml")
        left = sorted(p.relative_to(small).as_posix() for p in small.rglob("*"))
    assert proc.returncode == 1, proc.stderr
    assert "[prepare] error: no space left on the device writing" in proc.stderr, proc.stderr
    assert str(small / "data" / "prepared") in proc.stderr and "Traceback" not in proc.stderr
    assert left == ["data"], left  # no prepared folder, no temporary file


@pytest.mark.parametrize("corruption", ["truncated weights", "garbage weights", "config not JSON"])
def test_sample_stage_on_a_corrupt_exported_model_is_one_line(tmp_path: Path, corruption: str) -> None:
    """Red team, issue 18: a corrupt exported model; one line naming the file, no samples written."""
    from pipelines import prepare
    from tests.helpers.config import pipeline_env
    from tests.helpers.release import write_untrained_model

    cfg = tiny_config(tmp_path)
    with pipeline_env(tmp_path, "corrupt-model"):
        prepare.main(cfg)
    write_untrained_model(cfg)
    unet = tmp_path / "models" / "diffusion" / "unet"
    weights, config = unet / "diffusion_pytorch_model.safetensors", unet / "config.json"
    if corruption == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif corruption == "garbage weights":
        weights.write_bytes(b"not a safetensors file")
    else:
        config.write_text("{not json")
    bad = config if corruption == "config not JSON" else weights
    proc = _run_stage("sample", tmp_path / "params.yaml")
    assert proc.returncode == 1, proc.stderr
    assert "[sample] error" in proc.stderr and str(bad) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "samples").exists() or not any((tmp_path / "samples").iterdir())
