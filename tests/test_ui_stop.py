"""`make ui` stops whole: after a stop signal no process it started (mlflow server, uvicorn and its
workers, the job runner's huey consumers) is left running (issue 18)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.config import ROOT
from tests.helpers.processes import descendants, running
from tests.helpers.release import free_port

VENV = Path(sys.executable).parent.parent


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "to_group"),
    [(signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["sigterm-to-make", "ctrl-c-to-the-group"],
)
def test_stopping_make_ui_leaves_no_process_running(tmp_path: Path, sig: int, to_group: bool) -> None:
    """SIGTERM as `kill <pid of make>` or a supervisor sends it; SIGINT as a terminal's Ctrl-C does (to
    the foreground group). `-o install`: the test's venv is already installed."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = ["make", "--no-print-directory", "-o", "install", f"VENV={VENV}", f"UI_PORT={port}", "ui"]
    with open(tmp_path / "ui.log", "wb") as log:
        make = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while True:
            assert make.poll() is None, (tmp_path / "ui.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "ui.log").read_text()[-3000:]
                time.sleep(1.0)
        time.sleep(3.0)  # the job runner starts its consumers after the server answers
        started = descendants(make.pid)
        assert len(started) >= 2, "make ui started no server"
        (os.killpg if to_group else os.kill)(make.pid, sig)
        make.wait(timeout=30)
        deadline = time.monotonic() + 15
        while running(started) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert running(started) == {}, "still running after the stop signal"
    finally:
        for pid in started | {make.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_make_ui_is_on_loopback_and_checks_the_host_header(tmp_path: Path) -> None:
    """Red team, issue 18 (held up; kept tested): `make ui` listens on 127.0.0.1 only and refuses a request
    whose Host is not a local name (DNS rebinding), as MLflow's host validation does."""
    import http.client
    import socket

    from tests.helpers.release import server

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = ["make", "--no-print-directory", "-o", "install", f"VENV={VENV}", f"UI_PORT={port}", "ui"]
    with server(cmd, f"http://127.0.0.1:{port}/health", tmp_path / "ui.log", env=env):

        def status(host: str) -> int:  # not /health or /version, which MLflow exempts from the check
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host})
            return conn.getresponse().status

        assert status(f"127.0.0.1:{port}") == 200 and status(f"localhost:{port}") == 200
        assert status("evil.example") in (400, 403)
        outside = socket.gethostbyname(socket.gethostname())
        if not outside.startswith("127."):
            with pytest.raises(OSError):
                socket.create_connection((outside, port), timeout=5).close()
