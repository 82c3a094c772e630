"""One pipeline run at a time in a folder (issue 18, red team 2): two `make repro` at once used to mix
configs silently, the second rewriting params.yaml before DVC's own lock refused it. The Makefile takes a
lock before composing; a second run is refused (non-zero exit) and changes nothing."""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.end_to_end import copy_repo

VENV = Path(sys.executable).parent.parent


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("lock") / "repo"
    env = copy_repo(path)
    (path / ".dvc" / "offline_plots.html").write_text("<!-- no plots in this test -->")  # install: built
    return path, env


@pytest.mark.parametrize(
    "target", [["repro", "OVERRIDES=sampler.steps=3"], ["audit", "MODEL=/nonexistent"], ["retrain"]]
)
def test_a_second_run_is_refused_while_one_holds_the_folder(repo, target: list[str]) -> None:
    path, env = repo
    params = (path / "params.yaml").read_bytes()
    with open(path / ".diffaudit-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the running `make repro`'s flock holds
        proc = subprocess.run(
            ["make", "--no-print-directory", f"VENV={VENV}", *target],
            cwd=path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert proc.returncode != 0, proc.stdout + proc.stderr  # make reports the recipe's exit 1 as 2
    assert "another pipeline run holds .diffaudit-run.lock" in proc.stderr
    assert "nothing was changed" in proc.stderr and "Running stage" not in proc.stdout
    assert (path / "params.yaml").read_bytes() == params  # not recomposed under the running one


def test_the_lock_is_free_again_after_a_run(repo) -> None:
    path, env = repo
    proc = subprocess.run(
        ["make", "--no-print-directory", f"VENV={VENV}", "params", "OVERRIDES=sampler.steps=3"],
        cwd=path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    with open(path / ".diffaudit-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if anything still held it
