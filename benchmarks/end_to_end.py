"""End to end: per-stage wall time of the last `make repro` (from MLflow) and DVC's cache on a threshold
change.

1. MLflow: the latest pipeline parent run (tag diffaudit.stage=pipeline) closed by `make repro`
   (tag dvc_repro_exit_code) and its stage runs; per stage its wall time (run end - start) and, when
   the stage logs it, its peak RSS (metric `peak_rss_mib`). Stages DVC found up to date have no run
   in that pipeline: for them the latest finished run of the stage is reported, marked as such.
   The target is judged only when the timed train stage ran the default config (conf/ as composed
   without overrides) in everything that sets its cost; a run of other settings is reported, not judged.
2. DVC: in a temporary git copy of the working tree with the smoke experiment as default, `dvc repro`
   once, change one audit threshold (`make params`' own compose), `dvc repro` again, and assert from
   DVC's output that exactly the stages reading `audit` params, and their downstream, reran.
   Skipped when dvc.yaml has no audit stage.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import ROOT, Figure, max_rss_children_mib
from diffaudit.tracking.mlflow_tracking import PEAK_RSS_METRIC, PIPELINE_TAG, STAGE_TAG, STARTUP_METRIC

TARGET_SECONDS, TARGET_MIB = 600.0, 4096.0
# Start-up (process start to the stage's first line of work, `startup_seconds` of each stage run): the
# longest over the stages that do not train, and the sum of all over the `make repro` span (issue 19).
TARGET_STARTUP_MAX, TARGET_STARTUP_SHARE = 3.0, 0.08
TRAINING_STAGES = ("train", "evaluator")  # the evaluator stage trains the evaluator classifier
THRESHOLD = "audit.gates.min_conditional_accuracy"
# Config sections that set the pipeline's cost: a timed run that differs from the default here is another
# workload.
COST_KEYS = ("data.", "model.", "diffusion.", "train.", "trainer.", "sampler.", "eval.")


# -- 1. the last `make repro` in MLflow ----------------------------------------------------------
def last_repro(db: Path, experiment: str = "diffaudit") -> dict[str, Any] | None:
    """Stage timings of the latest pipeline closed by `make repro`; None when the store has none."""
    if not db.is_file():
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{STAGE_TAG}` != ''", max_results=5000
    )
    parents = sorted(
        (r for r in runs if r.data.tags.get(STAGE_TAG) == "pipeline"),
        key=lambda r: ("dvc_repro_exit_code" in r.data.tags, r.info.start_time),
    )
    if not parents:
        return None
    parent = parents[-1]  # the latest closed by `make repro`, else the latest at all (an interrupted run)
    pid = parent.data.tags[PIPELINE_TAG]
    closed = "dvc_repro_exit_code" in parent.data.tags
    stages: dict[str, dict[str, Any]] = {}
    latest: dict[str, Any] = {}
    for r in sorted(runs, key=lambda r: r.info.start_time):
        stage = r.data.tags[STAGE_TAG]
        if stage != "pipeline" and r.info.status == "FINISHED" and r.info.end_time:
            latest[stage] = r
            if r.data.tags.get(PIPELINE_TAG) == pid:
                stages[stage] = _stage_row(r, in_pipeline=True)
    for stage, r in latest.items():
        stages.setdefault(stage, _stage_row(r, in_pipeline=False))
    # The train run timed in this pipeline (else, if DVC found it cached, the latest one).
    train = next(
        (
            r
            for r in runs
            if r.data.tags.get(STAGE_TAG) == "train"
            and r.data.tags.get(PIPELINE_TAG) == pid
            and r.info.status == "FINISHED"
        ),
        None,
    ) or latest.get("train")
    peaks = [s["peak_rss_mib"] for s in stages.values() if s["peak_rss_mib"] is not None]
    ends = [r.info.end_time for r in runs if r.data.tags.get(PIPELINE_TAG) == pid and r.info.end_time]
    end = parent.info.end_time if closed else max(ends, default=parent.info.start_time)
    span = (end - parent.info.start_time) / 1000
    return {
        "pipeline_id": pid,
        "closed_by_make_repro": closed,
        "exit_code": int(parent.data.tags["dvc_repro_exit_code"]) if closed else None,
        "pipeline_seconds": span,
        "startup": startup(stages, span),
        "stages": stages,
        "sum_stage_seconds": sum(s["seconds"] for s in stages.values()),
        "peak_rss_mib": max(peaks) if peaks else None,
        "stages_without_peak": sorted(k for k, s in stages.items() if s["peak_rss_mib"] is None),
        "stages_never_finished": sorted(
            set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]) - set(stages)
        ),
        "differs_from_default": _differs_from_default(dict(train.data.params)) if train else {},
    }


def _differs_from_default(logged: dict[str, str]) -> dict[str, list[str | None]]:
    """Cost-setting params of a logged train run that differ from the default config: key -> [run,
    default]."""
    from benchmarks.common import load_config
    from diffaudit.tracking.mlflow_tracking import config_params

    default = config_params(load_config([]))
    return {
        k: [logged.get(k), v]
        for k, v in sorted(default.items())
        if k.startswith(COST_KEYS) and k in logged and logged[k] != v
    }  # absent: an older schema


def _stage_row(run: Any, in_pipeline: bool) -> dict[str, Any]:
    return {
        "seconds": (run.info.end_time - run.info.start_time) / 1000,
        "in_last_repro": in_pipeline,
        "pipeline_id": run.data.tags.get(PIPELINE_TAG),
        "peak_rss_mib": run.data.metrics.get(PEAK_RSS_METRIC),
        "startup_seconds": run.data.metrics.get(STARTUP_METRIC),
    }


def startup(stages: dict[str, dict[str, Any]], span: float) -> dict[str, Any]:
    """Start-up of the stages that ran in the last repro: the longest over the stages that do not train
    (`import_seconds_max`), and the sum of every stage's over the pipeline span (`startup_share`)."""
    ran = {k: s["startup_seconds"] for k, s in stages.items() if s["in_last_repro"]}
    timed = {k: v for k, v in ran.items() if v is not None}
    non_training = {k: v for k, v in timed.items() if k not in TRAINING_STAGES}
    worst = max(non_training, key=non_training.__getitem__, default=None)
    total = sum(timed.values())
    return {
        "per_stage": timed,
        "untimed": sorted(set(ran) - set(timed)),  # runs from before stages logged it
        "import_seconds_max": non_training[worst] if worst else None,
        "import_seconds_max_stage": worst,
        "startup_seconds_total": total,
        "startup_share": total / span if timed and span > 0 else None,
    }


# -- 2. DVC's cache -----------------------------------------------------------------------------
def _entries(items: list[Any] | None) -> list[str]:
    """Paths (or param keys) of a dvc.yaml list whose items are strings or one-key dicts."""
    out: list[str] = []
    for item in items or []:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            for k, v in item.items():
                # `- params.yaml: [keys]` lists keys of another file; `- path: {cache: false}` is one out
                out.extend(v if isinstance(v, list) else [k])
    return out


def _under(a: str, b: str) -> bool:
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def expected_reruns(dvc: dict[str, Any], key: str) -> set[str]:
    """Stages whose params include `key` (or a parent of it), plus every stage downstream of them."""
    stages = dvc.get("stages", {})
    hit = {
        name
        for name, s in stages.items()
        if any(key == p or key.startswith(p + ".") for p in _entries(s.get("params")))
    }
    outs = {
        name: _entries(s.get("outs")) + _entries(s.get("metrics")) + _entries(s.get("plots"))
        for name, s in stages.items()
    }
    changed = True
    while changed:
        changed = False
        for name, s in stages.items():
            if name in hit:
                continue
            if any(_under(d, o) for d in _entries(s.get("deps")) for up in hit for o in outs[up]):
                hit.add(name)
                changed = True
    return hit


def ran_stages(dvc_output: str) -> set[str]:
    """Stages DVC says it ran ("Running stage 'x'")."""
    return set(re.findall(r"Running stage '([^']+)'", dvc_output))


def _sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return proc.stdout + proc.stderr


def copy_repo(dest: Path) -> dict[str, str]:
    """The working tree's tracked and unignored files as a fresh git repo with the smoke experiment; its
    env."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith("benchmarks/results"):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    config = dest / "conf" / "config.yaml"
    config.write_text(config.read_text().replace("  - experiment: null", "  - experiment: smoke"))
    venv = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DIFFAUDIT_", "DVC_"))}
    env |= {
        "PATH": f"{venv}:{env.get('PATH', '')}",
        "PYTHONPATH": str(dest / "src"),
        "DIFFAUDIT_PROGRESS": "0",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }
    _sh(["git", "init", "-q", "-b", "main"], dest, env, 60)
    if not (dest / ".dvc").is_dir():
        _sh(["dvc", "init", "-q"], dest, env, 120)
    _sh([sys.executable, "-m", "pipelines.compose"], dest, env, 300)
    _sh(["git", "add", "-A"], dest, env, 60)
    _sh(["git", "commit", "-qm", "bench"], dest, env, 60)
    return env


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d[part]
    return d


def cache_check(key: str = THRESHOLD, timeout: int = 1200) -> dict[str, Any]:
    """Full smoke repro, then `key` changed and repro again; which stages reran, and how long each took."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    if "audit" not in dvc.get("stages", {}) and key.startswith("audit."):
        return {"skipped": "dvc.yaml has no audit stage yet"}
    expected = expected_reruns(dvc, key)
    with tempfile.TemporaryDirectory(prefix="diffaudit-bench-") as tmp:
        repo = Path(tmp) / "repo"
        env = copy_repo(repo)
        rss_before = max_rss_children_mib()
        t0 = time.perf_counter()
        first = _sh(["dvc", "repro"], repo, env | {"DIFFAUDIT_PIPELINE_ID": "bench-1"}, timeout)
        full_s = time.perf_counter() - t0
        value = _get(yaml.safe_load((repo / "params.yaml").read_text()), key)
        new = (
            round(value * 0.9, 6)
            if isinstance(value, float)
            else (value + 1 if isinstance(value, int) else value)
        )
        _sh([sys.executable, "-m", "pipelines.compose", f"{key}={new}"], repo, env, 300)
        t0 = time.perf_counter()
        second = _sh(["dvc", "repro"], repo, env | {"DIFFAUDIT_PIPELINE_ID": "bench-2"}, timeout)
        rerun_s = time.perf_counter() - t0
        peak = max_rss_children_mib()
    ran = ran_stages(second)
    return {
        "key": key,
        "from": value,
        "to": new,
        "expected": sorted(expected),
        "ran": sorted(ran),
        "ran_first": sorted(ran_stages(first)),
        "only_expected_reran": ran == expected,
        "full_smoke_repro_seconds": full_s,
        "rerun_seconds": rerun_s,
        # ru_maxrss of the largest child: comparable across calls only if it grew past what ran before
        "smoke_peak_child_rss_mib": peak if peak > rss_before else None,
        "rusage_children_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }


def run(quick: bool = False, db: Path | None = None, dvc_check: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {"last_repro": last_repro(db or ROOT / "mlflow.db")}
    result["cache"] = cache_check() if dvc_check else {"skipped": "not requested"}
    return result


def figures(r: dict[str, Any]) -> list[Figure]:
    out: list[Figure] = []
    rep = r["last_repro"]
    if rep is None:
        out.append(
            Figure(
                "make repro wall time",
                None,
                "s",
                f"< {TARGET_SECONDS:.0f}",
                None,
                "no `make repro` pipeline run in mlflow.db",
            )
        )
    else:
        full = rep["closed_by_make_repro"] and all(s["in_last_repro"] for s in rep["stages"].values())
        total = rep["pipeline_seconds"] if full else rep["sum_stage_seconds"]
        note = (
            "parent run span"
            if full
            else "sum of the latest run of each stage (last repro partial or interrupted)"
        ) + f"; pipeline {rep['pipeline_id']}, exit {rep['exit_code']}"
        missing, other = rep["stages_never_finished"], rep.get("differs_from_default", {})
        if missing:
            note += f"; no finished run of {', '.join(missing)}"
        if other:
            note += (
                "; NOT the default config ("
                + ", ".join(f"{k}={a} vs {b}" for k, (a, b) in list(other.items())[:3])
                + (", ..." if len(other) > 3 else "")
                + "): not judged"
            )
        out.append(
            Figure(
                "make repro wall time",
                total,
                "s",
                f"< {TARGET_SECONDS:.0f}",
                None if missing or other else total < TARGET_SECONDS,
                note,
            )
        )
        for stage, s in rep["stages"].items():
            out.append(
                Figure(
                    f"stage {stage}",
                    s["seconds"],
                    "s",
                    note="" if s["in_last_repro"] else f"cached; from pipeline {s['pipeline_id']}",
                )
            )
        out += startup_figures(rep["startup"], judged=full and not (missing or other))
        peak = rep["peak_rss_mib"]
        out.append(
            Figure(
                "make repro peak memory",
                peak,
                "MiB",
                f"< {TARGET_MIB:.0f}",
                None if peak is None else peak < TARGET_MIB,
                "" if peak is not None else "stages do not log peak_rss_mib",
            )
        )
    out += _cache_figures(r["cache"])
    return out


def startup_figures(st: dict[str, Any], judged: bool) -> list[Figure]:
    """`import_seconds_max` and `startup_share` of the last repro; judged only on a full default run."""
    note = "" if judged else "not judged (partial repro or not the default config)"
    if st["untimed"]:
        note += f"; no startup_seconds from {', '.join(st['untimed'])} (older runs)"
    worst, share = st["import_seconds_max"], st["startup_share"]
    return [
        Figure(
            "import_seconds_max",
            worst,
            "s",
            f"<= {TARGET_STARTUP_MAX:g}",
            worst <= TARGET_STARTUP_MAX if judged and worst is not None else None,
            f"{st['import_seconds_max_stage']}; process start to first line of work, stages that do not "
            f"train" + (f"; {note}" if note else ""),
        ),
        Figure(
            "startup_share",
            share,
            "",
            f"<= {TARGET_STARTUP_SHARE:g}",
            share <= TARGET_STARTUP_SHARE if judged and share is not None else None,
            f"{st['startup_seconds_total']:.0f} s of start-up over the parent run's span"
            + (f"; {note}" if note else ""),
        ),
    ]


def _cache_figures(c: dict[str, Any]) -> list[Figure]:
    out: list[Figure] = []
    if "skipped" in c:
        out.append(
            Figure(
                "threshold change reruns only audit+downstream",
                None,
                "",
                "yes",
                None,
                f"skipped: {c['skipped']}",
            )
        )
    else:
        out.append(
            Figure(
                "threshold change reruns only audit+downstream",
                "yes" if c["only_expected_reran"] else "no",
                "",
                "yes",
                c["only_expected_reran"],
                f"ran {c['ran']}, expected {c['expected']}",
            )
        )
        out.append(
            Figure(
                "rerun after threshold change",
                c["rerun_seconds"],
                "s",
                note=f"{c['key']} {c['from']}->{c['to']}",
            )
        )
        out.append(Figure("smoke repro (full, temp copy)", c["full_smoke_repro_seconds"], "s"))
        out.append(Figure("smoke repro peak child RSS", c["smoke_peak_child_rss_mib"], "MiB"))
    return out
