"""World size: the sample stage on one process and on two gloo processes (`trainer=ddp_cpu`), compared
byte for byte, with the wall time of each.

The benchmark trains the smoke experiment's tiny model in a temporary folder (prepare, evaluator and
train as stages), then runs the sample stage twice on it, as `dvc repro` would: once with `trainer=cpu`
and once with `trainer=ddp_cpu`, at `NUM_PER_CLASS` images per class in batches of `BATCH`. The wall time
is the whole stage process (start-up and the second rank's launch included), so on a 2-core machine it
shows the cost of the launch, not a speedup: two ranks there share the cores one process already uses.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, Figure
from diffaudit.config.compose import compose_config, write_params

NUM_PER_CLASS = 100  # 1000 images: 20 batches of 50
BATCH = 50


def _params(root: Path, extra: list[str]) -> Path:
    paths = [f"paths.{k}={root / k}" for k in ("data", "models", "samples", "metrics", "plots", "reports")]
    raw = compose_config(
        ["experiment=smoke", *paths, f"tracking.uri=sqlite:///{root / 'mlflow.db'}", *extra], ROOT / "conf"
    )
    write_params(raw, root / "params.yaml")
    return root / "params.yaml"


def _stage(name: str, params: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DIFFAUDIT_"))}
    env |= {
        "DIFFAUDIT_PARAMS": str(params),
        "DIFFAUDIT_PROGRESS": "0",
        "DIFFAUDIT_PIPELINE_ID": "bench-world",
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", f"pipelines.{name}"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if proc.returncode:
        raise RuntimeError(f"stage {name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def run(quick: bool = False) -> dict[str, Any]:
    per_class, batch = (6, 16) if quick else (NUM_PER_CLASS, BATCH)
    sampler = [f"sampler.num_per_class={per_class}", f"sampler.batch_size={batch}"]
    with tempfile.TemporaryDirectory(prefix="bench-world-") as tmp:
        root = Path(tmp)
        params = _params(root, sampler)
        for stage in ("prepare", "evaluator", "train"):
            _stage(stage, params)
        out: dict[str, Any] = {"images": per_class * 10, "batch_size": batch}
        for world, trainer in ((1, "cpu"), (2, "ddp_cpu")):
            params = _params(root, [*sampler, f"trainer={trainer}"])
            seconds = _stage("sample", params)
            digest = hashlib.md5((root / "samples" / "samples.safetensors").read_bytes()).hexdigest()
            out[f"world_{world}"] = {"seconds": seconds, "md5": digest}
    out["identical"] = out["world_1"]["md5"] == out["world_2"]["md5"]
    return out


def figures(r: dict[str, Any]) -> list[Figure]:
    one, two = r["world_1"], r["world_2"]
    return [
        Figure(
            "samples identical for world size 1 and 2",
            "yes" if r["identical"] else "no",
            "",
            "yes",
            r["identical"],
            f"{r['images']} images, batch {r['batch_size']}, md5 {one['md5'][:12]}",
        ),
        Figure("sample stage wall, world size 1", one["seconds"], "s"),
        Figure(
            "sample stage wall, world size 2", two["seconds"], "s", note="2 gloo processes on this machine"
        ),
    ]
