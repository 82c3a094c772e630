"""Sampling and scoring across processes (issue 14): the same outputs for any world size, written by rank
0 alone, and a rank that dies fails the whole stage within a bounded time."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from diffaudit.distributed.world import World
from diffaudit.errors import DataError
from diffaudit.tracking.mlflow_tracking import STAGE_TAG
from diffaudit.utils.io import load_tensor_metadata, load_tensors, save_tensors
from diffaudit.utils.tensor_rows import TensorRows, write_concatenated
from tests.helpers.config import ROOT, stage_env
from tests.helpers.processes import descendants, running


def test_parts_join_into_one_safetensors_file_read_lazily(tmp_path) -> None:
    full = {"images": torch.randn(11, 1, 4, 4), "labels": torch.arange(11), "seeds": torch.arange(11) * 7}
    parts = []
    for i in range(0, 11, 4):
        parts.append(tmp_path / f"part-{i}.safetensors")
        save_tensors(parts[-1], {k: v[i : i + 4] for k, v in full.items()})
    write_concatenated(tmp_path / "all.safetensors", parts, metadata={"sampler": "ddim"})
    back = load_tensors(tmp_path / "all.safetensors")  # safetensors' own loader reads it whole
    assert all(torch.equal(back[k], v) for k, v in full.items())
    assert load_tensor_metadata(tmp_path / "all.safetensors") == {"sampler": "ddim"}
    rows = TensorRows(tmp_path / "all.safetensors", "images")
    assert len(rows) == 11 and rows.shape == full["images"].shape
    assert torch.equal(rows[3:9], full["images"][3:9])
    assert torch.equal(rows[torch.tensor([10, 0, 5])], full["images"][[10, 0, 5]])
    # The same rows cut into other parts give the same bytes: the file depends on the rows alone.
    write_concatenated(
        tmp_path / "again.safetensors", [tmp_path / "all.safetensors"], metadata={"sampler": "ddim"}
    )
    assert (tmp_path / "again.safetensors").read_bytes() == (tmp_path / "all.safetensors").read_bytes()


def test_parts_that_disagree_are_refused_naming_the_part(tmp_path) -> None:
    save_tensors(tmp_path / "a.safetensors", {"images": torch.zeros(2, 1, 4, 4)})
    save_tensors(tmp_path / "b.safetensors", {"images": torch.zeros(2, 1, 5, 5)})
    with pytest.raises(DataError, match=r"b\.safetensors.*'images'"):
        write_concatenated(
            tmp_path / "all.safetensors", [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
        )
    assert not (tmp_path / "all.safetensors").exists()


def test_batches_are_spread_over_ranks_and_cover_every_one_once() -> None:
    shares = [list(World(rank=r, size=3).mine(10)) for r in range(3)]
    assert sorted(sum(shares, [])) == list(range(10))
    x = torch.arange(10.0)[:, None]
    assert torch.equal(World().map_batches(lambda b: b * 2, x, batch_size=3), x * 2)


# A two-point sampler study (DDIM at 2 and 4 steps; guidance 1 and 2 at 4 steps) on the tiny run's model.
STUDY = {
    "num_per_class": 6,
    "guidance_scale": None,
    "nfe": {"ddim": [2, 4]},
    "guidance": {"sampler": "ddim", "nfe": 4, "scales": [1.0, 2.0]},
    "target_fid_over_floor": 3.0,
    "target_conditional_accuracy": 0.9,
}


def _params(tiny_run, root: Path, trainer: str, **sampler) -> Path:
    """The tiny run's params (its data and models) with this run's outputs, store, trainer and a tiny
    sampler study."""
    raw = yaml.safe_load((tiny_run.root / "params.yaml").read_text())
    raw["eval"]["study"] = STUDY
    for k in ("samples", "metrics", "plots", "reports"):
        raw["paths"][k] = str(root / k)
    raw["tracking"]["uri"] = f"sqlite:///{root / 'mlflow.db'}"
    raw["trainer"] = yaml.safe_load((ROOT / "conf" / "trainer" / f"{trainer}.yaml").read_text())
    raw["sampler"].update(sampler)
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return root / "params.yaml"


def _flat(d, prefix=""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _flat(v, f"{prefix}.{k}")
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _flat(v, f"{prefix}[{i}]")
    else:
        yield prefix, d


@pytest.mark.slow
def test_sample_and_evaluate_on_two_gloo_processes_equal_one_process(tiny_run, tmp_path) -> None:
    """Done-when of issue 14: the sample and evaluate stages on 2 gloo processes give the one-process
    samples byte for byte and the same metrics (to 1e-6), with one MLflow run per stage (rank 0's); so
    does the sampler study (its timings aside)."""
    out = {}
    for trainer in ("cpu", "ddp_cpu"):
        root = tmp_path / trainer
        params = _params(tiny_run, root, trainer, batch_size=16)  # 4 batches for 60 images: both ranks draw
        for stage in ("sample", "evaluate", "sampler_study"):
            proc = subprocess.run(
                [sys.executable, "-m", f"pipelines.{stage}"],
                cwd=ROOT,
                env=stage_env(params, f"dist-{trainer}"),
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
        client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        exp = client.get_experiment_by_name(yaml.safe_load(params.read_text())["tracking"]["experiment_name"])
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{STAGE_TAG}` = 'sample'")
        assert len(runs) == 1 and runs[0].data.metrics["world_size"] == (1 if trainer == "cpu" else 2)
        assert not (root / ".samples.parts").exists()
        study = json.loads((root / "metrics" / "sampler_study.json").read_text())
        out[trainer] = (
            (root / "samples" / "samples.safetensors").read_bytes(),
            dict(_flat(json.loads((root / "metrics" / "quality.json").read_text())))
            | {f"study{k}": v for k, v in _flat(study) if "seconds" not in k},
        )
    (one_bytes, one), (two_bytes, two) = out["cpu"], out["ddp_cpu"]
    assert one_bytes == two_bytes
    assert one.keys() == two.keys()
    differ = {
        k: (one[k], two[k])
        for k in one
        if one[k] != two[k] and not (isinstance(one[k], float) and abs(one[k] - two[k]) <= 1e-6)
    }
    assert differ == {}


@pytest.mark.slow
def test_a_rank_that_dies_fails_the_stage_on_every_rank(tiny_run, tmp_path) -> None:
    """SIGKILL of rank 1 mid-draw: rank 0 fails too, within a bounded time, and writes no samples."""
    params = _params(tiny_run, tmp_path, "ddp_cpu", num_per_class=40, batch_size=4)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.sample"],
        cwd=ROOT,
        env=stage_env(params, "dist-kill"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    child = None
    while time.monotonic() < deadline and proc.poll() is None and child is None:
        parts = list((tmp_path / ".samples.parts").glob("part-*.safetensors"))
        kids = [p for p, cmd in running(descendants(proc.pid)).items() if "pipelines.sample" in cmd]
        child = kids[0] if parts and kids else None
        time.sleep(0.2)
    assert child is not None and proc.poll() is None, "the draw ended before rank 1 could be killed"
    import os

    os.kill(child, signal.SIGKILL)
    killed = time.monotonic()
    proc.wait(timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - killed < 60
    assert not (tmp_path / "samples" / "samples.safetensors").exists()
    assert running(descendants(proc.pid)) == {}
