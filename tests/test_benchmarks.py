"""Smoke test of the benchmark code on tiny sizes (benchmarks/): it runs and writes its results.
No timing is asserted; `make bench` measures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import end_to_end, gpu_check
from benchmarks import run as bench_run
from benchmarks.common import Figure, table
from benchmarks.eval_scaling import growth


def test_quick_run_writes_every_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    assert bench_run.main(["--quick", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["benchmarks"]) == set(bench_run.BENCHMARKS)
    for name, r in res["benchmarks"].items():
        assert "error" not in r, (name, r.get("error"))
    t = res["benchmarks"]["training_overhead"]
    assert t["training_overhead_ratio"] > 0 and t["step_flops"] > 0 and t["checkpoints_written"]
    p = res["benchmarks"]["precision"]
    assert p["train_step_speedup"] > 0 and p["precision"] in ("bf16-mixed", "32-true")
    s = res["benchmarks"]["sampling"]
    # classifier-free guidance: one forward of 2n images per step, for every sampler
    assert all(v["one_batched_forward"] for v in s["cfg_forward"].values()), s["cfg_forward"]
    e = res["benchmarks"]["eval_scaling"]
    assert set(e["per_size"]) == {str(n) for n in e["sizes"]}
    st = res["benchmarks"]["startup"]
    assert st["import_wall_seconds"]["floor"] > 0 and st["self_time_by_package"]
    assert res["benchmarks"]["end_to_end"]["cache"] == {"skipped": "not requested"}
    names = {f["name"] for f in res["figures"]}
    assert {
        "training_overhead_ratio",
        "train_step_speedup",
        "cfg: one batched forward per step",
        "eval memory growth exponent",
    } <= names
    assert all(set(f) == {"name", "value", "unit", "target", "ok", "note"} for f in res["figures"])


DVC = {
    "stages": {
        "prepare": {"params": ["seed", "data"], "outs": ["data/prepared"]},
        "sample": {"deps": ["models/diffusion"], "params": ["sampler"], "outs": ["samples"]},
        "audit": {
            "deps": ["samples", "data/prepared"],
            "params": ["audit", "seed"],
            "outs": ["plots/audit"],
            "metrics": [{"metrics/audit.json": {"cache": False}}],
        },
        "report": {
            "deps": ["metrics/audit.json", "samples"],
            "params": [{"params.yaml": ["report.title"]}],
            "outs": ["reports"],
        },
        "other": {"deps": ["data/prepared"], "outs": ["x"]},
    }
}


def test_expected_reruns_follow_params_and_outputs() -> None:
    assert end_to_end.expected_reruns(DVC, "audit.gates.min_conditional_accuracy") == {"audit", "report"}
    assert end_to_end.expected_reruns(DVC, "sampler.steps") == {"sample", "audit", "report"}
    assert end_to_end.expected_reruns(DVC, "data.image_size") == {"prepare", "audit", "report", "other"}
    assert end_to_end.expected_reruns(DVC, "report.title") == {"report"}
    out = (
        "Stage 'prepare' didn't change, skipping\nRunning stage 'audit':\n> python -m x\n"
        "Running stage 'report':\n"
    )
    assert end_to_end.ran_stages(out) == {"audit", "report"}


def test_cache_check_skips_without_an_audit_stage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("stages:\n  prepare:\n    cmd: echo\n")
    monkeypatch.setattr(end_to_end, "ROOT", tmp_path)
    assert "skipped" in end_to_end.cache_check()


def test_last_repro_reads_stage_runs(tiny_run) -> None:
    rep = end_to_end.last_repro(tiny_run.root / "mlflow.db")
    assert rep is not None and rep["pipeline_id"] == "tiny-session"
    assert {"prepare", "evaluator", "train", "sample", "evaluate"} <= set(rep["stages"])
    assert all(s["seconds"] >= 0 and s["in_last_repro"] for s in rep["stages"].values())
    # The tiny run is not the default workload: its time is shown but not judged against the target.
    assert "train.max_steps" in rep["differs_from_default"], rep["differs_from_default"]
    wall = next(
        f
        for f in end_to_end.figures({"last_repro": rep, "cache": {"skipped": "x"}})
        if f.name == "make repro wall time"
    )
    assert wall.ok is None and "NOT the default config" in wall.note, wall


def test_gpu_check_without_cuda_exits_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gpu_check.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_gpu_check_logic_on_cpu_tiny(tmp_path: Path) -> None:
    args = [
        "--cpu",
        "--model",
        "unet_small",
        "--image-size",
        "16",
        "--batch",
        "2",
        "--steps",
        "1",
        "--rounds",
        "1",
        "--no-compile",
        "--pipeline-steps",
        "4",
        "--pipeline-batch",
        "4",
        "--pipeline-image-size",
        "16",
        "--sample-images",
        "6",
        "--sample-batch",
        "4",
        "--out",
        str(tmp_path),
    ]
    assert gpu_check.main(args) == 0
    res = json.loads((tmp_path / "gpu_results.json").read_text())
    sm = res["sampling"]
    assert sm["images"] == 6 and sm["images_per_s"] > 0 and sm["steps"] > 0, sm
    assert {"fp32", "bf16", "bf16_channels_last"} <= set(res["cifar"]["variants"])
    variants = res["cifar"]["variants"].values()
    assert all("images_per_s" in v and v["share_of_bf16_matmul"] > 0 for v in variants)
    assert res["pipeline"]["precision"] == "bf16-mixed" and res["pipeline"]["training_overhead_ratio"] > 0


def test_helpers() -> None:
    assert growth([1000, 8000], [1.0, 8.0]) == pytest.approx(1.0)
    assert growth([1000, 8000], [1.0, 64.0]) == pytest.approx(2.0)
    assert growth([1, 2], [None, 1.0]) is None
    text = table([Figure("a", 1.5, "s", "< 2", True), Figure("b", None)])
    assert "a" in text and "n/a" in text and "yes" in text


def test_study_verdict_picks_the_cheapest_point_within_ten_percent() -> None:
    from benchmarks.sampling import study_verdict
    from diffaudit.results import SamplerStudyResult
    from diffaudit.results.sampler_study import PointScore

    def pt(fid: float, acc: float, seconds: float, nfe: int) -> PointScore:
        return PointScore(
            fid_evaluator=fid,
            kid_evaluator=0.0,
            kid_evaluator_std=0.0,
            precision=0.5,
            recall=0.5,
            conditional_accuracy=acc,
            fid_over_floor=fid,
            nfe=nfe,
            unet_evals=nfe,
            guidance_scale=1.0,
            seconds=seconds,
            reaches_target=False,
        )

    sweep = {
        "ddpm": {"20": pt(1.5, 0.95, 9.0, 20), "50": pt(1.0, 0.96, 20.0, 50)},
        "dpm_solver": {"10": pt(1.2, 0.95, 4.0, 10), "20": pt(1.05, 0.95, 8.0, 20)},
    }
    study = SamplerStudyResult.model_construct(nfe_sweep=sweep)  # only the sweep is read
    v = study_verdict(study)
    assert v["met"] and v["cheapest_within_tolerance"] == {"sampler": "dpm_solver", "nfe": 20, "seconds": 8.0}
    sweep["dpm_solver"]["20"] = pt(1.2, 0.95, 8.0, 20)
    assert not study_verdict(study)["met"]


def test_ema_study_tiny(tiny_run, tmp_path: Path) -> None:
    from benchmarks import ema_study

    out = tmp_path / "ema.json"
    args = [
        "--overrides",
        "experiment=smoke",
        "train.max_steps=4",
        "--at",
        "2",
        "4",
        "--decays",
        "0.9",
        "--per-class",
        "2",
        "--data",
        str(tiny_run.root / "data" / "prepared"),
        "--evaluator",
        str(tiny_run.root / "models" / "evaluator"),
        "--out",
        str(out),
    ]
    assert ema_study.main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["step"], r["weights"]) for r in rows} == {(s, w) for s in (2, 4) for w in ("raw", "ema0.9")}
    assert all(
        r["fid_evaluator"] >= 0 and 0 <= r["conditional_accuracy"] <= 1 and 0 <= r["thick_share"] <= 1
        for r in rows
    ), rows
    # The EMA lags the raw weights, so the two are different models (not a relabelled copy).
    by = {(r["step"], r["weights"]): r for r in rows}
    assert by[(4, "raw")]["fid_evaluator"] != by[(4, "ema0.9")]["fid_evaluator"]
