"""Stage start-up: what each stage's entry module imports, and how long a fresh process takes to do it.

Every DVC stage is its own `python -m pipelines.<stage>` process, so each pays its imports anew. Per stage:
the wall time of a fresh interpreter importing the stage's module (best of `rounds`, interleaved over the
stages), and, from one `python -X importtime` run, the import time spent in each top-level package's own
modules (self time; importtime's own overhead inflates it, so read it as shares). Also the floor that any
stage sampling a diffusers model pays: a process importing just torch, diffusers' UNet and MLflow.

The figures `import_seconds_max` and `startup_share` themselves come from the real stage runs of the last
`make repro` (`end_to_end`, metric `startup_seconds`); this module says where that time goes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import yaml

from benchmarks.common import ROOT, Figure

# What a stage that loads a diffusers model and logs to MLflow cannot avoid importing.
FLOOR_IMPORTS = "import torch, mlflow; from diffusers import UNet2DModel, DDPMScheduler"
_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def stage_modules() -> dict[str, str]:
    """dvc.yaml's stages -> the module each runs (`... -m pipelines.x`)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, s in stages.items():
        m = re.search(r" -m (pipelines\.\S+)", s["cmd"])
        if m:
            out[name] = m.group(1)
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _wall(code: str, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def self_time_by_package(importtime_stderr: str) -> dict[str, float]:
    """Seconds of import self time per top-level package, largest first, from `-X importtime` output."""
    per: Counter[str] = Counter()
    for line in importtime_stderr.splitlines():
        m = _LINE.match(line)
        if m:
            per[m.group(4).split(".")[0]] += int(m.group(1)) / 1e6
    return dict(per.most_common())


def run(quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    env = _env()
    modules = stage_modules()
    if quick:
        modules = dict(list(modules.items())[-1:])  # the last stage only: the smoke test of this code
    rounds = rounds or (1 if quick else 2)
    walls: dict[str, list[float]] = {k: [] for k in [*modules, "floor"]}
    for _ in range(rounds):  # interleaved, so a change in background load hits every stage alike
        for stage, module in modules.items():
            walls[stage].append(_wall(f"import {module}", env))
        walls["floor"].append(_wall(FLOOR_IMPORTS, env))
    packages = {}
    for stage, module in modules.items():
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        packages[stage] = {k: round(v, 3) for k, v in list(self_time_by_package(proc.stderr).items())[:8]}
    return {
        "rounds": rounds,
        "import_wall_seconds": {k: min(v) for k, v in walls.items()},
        "import_wall_seconds_all": walls,
        "self_time_by_package": packages,
        "floor_imports": FLOOR_IMPORTS,
    }


def figures(r: dict[str, Any]) -> list[Figure]:
    walls = dict(r["import_wall_seconds"])
    floor = walls.pop("floor")
    out = [
        Figure(
            f"imports of stage {stage}",
            s,
            "s",
            note="; ".join(f"{k} {v:.2f}" for k, v in list(r["self_time_by_package"][stage].items())[:4])
            + " (self time, -X importtime)",
        )
        for stage, s in walls.items()
    ]
    out.append(Figure("imports floor: torch + diffusers UNet + MLflow", floor, "s", note=r["floor_imports"]))
    return out
