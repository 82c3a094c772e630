"""benchmarks/compare_runs: the check that a refactor left the default run's metrics where they were."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.compare_runs import compare_dirs, differences, main


def test_differences_are_exact_and_skip_only_timings() -> None:
    a = {"fid": 1.0, "n": 3, "ci": {"low": 0.5, "high": float("nan")}, "seconds": 1.0, "pts": [1, 2]}
    assert differences(a, json.loads(json.dumps(a)) | {"seconds": 9.0}) == []
    b = {"fid": 1.0 + 1e-15, "n": 3.0, "ci": {"low": 0.5, "high": float("nan")}, "pts": [1, 2, 3], "new": 0}
    assert differences(a, b) == [
        "fid: 1.0 != 1.000000000000001",
        "n: 3 != 3.0",
        "new: only in B",
        "pts: 2 items != 3 items",
    ]


def test_compare_dirs_reports_missing_files_and_exits_1(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "quality.json").write_text('{"fid": 1.5}')
    (b / "quality.json").write_text('{"fid": 1.5}')
    assert main([str(a), str(b)]) == 0
    (a / "gates.json").write_text('{"passed": true}')
    assert compare_dirs(a, b) == {"gates.json": ["only in A"], "quality.json": []}
    assert main([str(a), str(b)]) == 1


def test_the_study_best_is_left_to_the_clock_and_nothing_else(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    study = {"best": {"sampler": "euler", "nfe": 10}, "fewest_nfe_to_target": {"euler": 10, "ddim": 10}}
    (a / "sampler_study.json").write_text(json.dumps(study))
    (b / "sampler_study.json").write_text(json.dumps(study | {"best": {"sampler": "ddim", "nfe": 10}}))
    assert compare_dirs(a, b) == {"sampler_study.json": []}
    (b / "sampler_study.json").write_text(json.dumps(study | {"fewest_nfe_to_target": {"euler": 20}}))
    assert compare_dirs(a, b)["sampler_study.json"] == [
        "fewest_nfe_to_target.ddim: only in A",
        "fewest_nfe_to_target.euler: 10 != 20",
    ]
