"""Stage start-up (issue 19): the process clock against an outside timer, the `startup_seconds` metric a
stage process logs (and an in-process call does not), and the bench's figures from stage rows."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from benchmarks.end_to_end import startup
from benchmarks.startup import self_time_by_package
from diffaudit.tracking.mlflow_tracking import STAGE_TAG, STARTUP_METRIC
from tests.helpers.config import ROOT, pipeline_env, stage_env, tiny_config


def test_seconds_since_start_agrees_with_an_outside_timer() -> None:
    code = (
        "import time; time.sleep(0.6)\n"
        "from diffaudit.utils.process import seconds_since_start; print(seconds_since_start())"
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    outside = time.perf_counter() - t0
    inside = float(out.stdout)
    assert 0.6 <= inside <= outside + 0.02  # one 10 ms clock tick of slack


def test_a_stage_process_logs_its_startup_and_an_in_process_call_does_not(tmp_path) -> None:
    cfg = tiny_config(tmp_path)
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipelines.prepare"],
        cwd=ROOT,
        env=stage_env(tmp_path / "params.yaml", "startup"),
        check=True,
        capture_output=True,
        timeout=300,
    )
    outside = time.perf_counter() - t0
    from pipelines import prepare

    with pipeline_env(tmp_path, "startup"):  # this store, whatever a test before left in the environment
        prepare.main(cfg)  # this process was not started for the stage: no start-up to log
    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{STAGE_TAG}` = 'prepare'")
    logged = [r.data.metrics.get(STARTUP_METRIC) for r in runs]
    assert len(logged) == 2 and logged.count(None) == 1, logged
    startup_s = next(v for v in logged if v is not None)
    assert 0.2 < startup_s < outside  # imports at least, and less than the whole process


def test_startup_figures_from_stage_rows() -> None:
    def row(s: float | None, ran: bool = True) -> dict:
        return {"startup_seconds": s, "in_last_repro": ran}

    stages = {"prepare": row(2.0), "train": row(9.0), "evaluator": row(8.0), "sample": row(4.5)}
    stages |= {"report": row(None), "audit": row(7.0, ran=False)}  # an old run, and a cached one
    st = startup(stages, span=100.0)
    assert st["import_seconds_max"] == 4.5 and st["import_seconds_max_stage"] == "sample"
    assert st["startup_seconds_total"] == pytest.approx(23.5)
    assert st["startup_share"] == pytest.approx(0.235)
    assert st["untimed"] == ["report"]


def test_importtime_self_time_is_summed_per_top_level_package() -> None:
    text = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:      1000 |       1000 |     torch._C\n"
        "import time:      2000 |       3000 |   torch\n"
        "import time:       500 |        500 |   mlflow.entities\n"
        "import time:       250 |        750 | mlflow\n"
    )
    assert self_time_by_package(text) == {"torch": 0.003, "mlflow": 0.00075}
