"""Code-running pickles, three ways in (red team, issue 18: held up; kept tested). Each file's payload
would create a marker file when unpickled: it must be refused in one typed error and never run."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from diffaudit.data.torchvision_formats import load_cifar10
from diffaudit.errors import CheckpointMismatchError, DataError, ModelFolderError
from diffaudit.models.imported import inspect_model_folder
from diffaudit.training.diffusion_training import explicit_resume
from tests.helpers import diffusers_models as dm


class _Payload:
    """Unpickling this runs `touch marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_payload(path: Path, marker: Path, wrap=lambda p: p) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(wrap(_Payload(marker))))
    pickle.loads(path.read_bytes())  # the payload works: unpickling it does create the marker
    assert marker.exists()
    marker.unlink()


def test_a_cifar_batch_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    batches = tmp_path / "cifar-10-batches-py"
    for name in ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"):
        _write_payload(batches / name, marker, lambda p: {b"data": p, b"labels": []})
    with pytest.raises(DataError, match="refusing"):
        load_cifar10(tmp_path, split="test")
    assert not marker.exists()


def test_a_checkpoint_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker, ckpt = tmp_path / "ran", tmp_path / "last.ckpt"
    _write_payload(ckpt, marker, lambda p: {"state_dict": p})
    with pytest.raises(CheckpointMismatchError, match="last.ckpt"):
        explicit_resume(ckpt, "any-hash")  # train.resume_from: torch.load(weights_only=True)
    assert not marker.exists()


def test_model_weights_that_run_code_are_refused_unopened(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    folder = dm.unconditional_pipeline(tmp_path / "model", steps=1)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    _write_payload(folder / "unet" / "diffusion_pytorch_model.bin", marker)
    with pytest.raises(ModelFolderError, match="pickle"):
        inspect_model_folder(folder)
    assert not marker.exists()
