"""The team server (`make server`) for real in a test: its PostgreSQL cluster, `mlflow server` with
basic-auth, and three accounts (admin, a pipeline writer, a read-only reviewer), all on loopback."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest

from diffaudit.tracking import postgres
from diffaudit.tracking.postgres import Cluster
from pipelines.team_server import ADMIN, Settings, load_secrets, prepare
from pipelines.team_users import add_user
from tests.helpers.release import free_port

ROOT = Path(__file__).resolve().parents[2]


def postgres_or_skip() -> None:
    """CI must run these tests (.ci/run installs postgresql); elsewhere they skip without it."""
    if postgres.available():
        return
    if os.environ.get("CI"):
        pytest.fail("PostgreSQL binaries missing: CI must install Debian's postgresql (.ci/run does)")
    pytest.skip("PostgreSQL not installed (apt-get install -y postgresql)")


@contextmanager
def credentials(user: str, password: str) -> Iterator[None]:
    """MLflow's client reads the login from the environment: set it for the block, then restore."""
    with mock.patch.dict(os.environ, MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password):
        yield


@dataclass
class TeamServer:
    home: Path
    settings: Settings
    cmd: list[str]
    env: dict[str, str]
    passwords: dict[str, str]
    proc: subprocess.Popen | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def cluster(self) -> Cluster:
        return Cluster(
            self.home / "pg", self.settings.pg_port, "mlflow", load_secrets(self.home)["db_password"]
        )

    def client_env(self, user: str) -> dict[str, str]:
        """A pipeline's environment on this server as `user`: URI and login, nothing in any config."""
        return {
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_TRACKING_USERNAME": user,
            "MLFLOW_TRACKING_PASSWORD": self.passwords[user],
        }

    def start(self, timeout: float = 180.0) -> None:
        log = self.home / f"server-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT, env=self.env
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not ready after {timeout}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def secrets(self) -> list[str]:
        """Every credential the setup holds: the accounts' passwords, the database's, the CSRF key."""
        keys = load_secrets(self.home)
        return [*self.passwords.values(), keys["db_password"], keys["flask_secret_key"]]

    def stored_text(self) -> str:
        """What the server keeps: both databases (pg_dump) and every artifact file."""
        parts = [self.cluster.dump("mlflow"), self.cluster.dump("mlflow_auth")]
        for path in sorted((self.home / "artifacts").rglob("*")):
            if path.is_file():
                parts.append(f"{path}\n{path.read_bytes().decode('utf-8', 'replace')}")
        return "\n".join(parts)


@contextmanager
def team_server() -> Iterator[TeamServer]:
    """The whole setup in a fresh folder (outside pytest's 0700 temp dirs: postgres runs as its own user
    when we are root); stopped and removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="diffaudit-team-"))
    home.chmod(0o711)
    settings = Settings(home=home, port=free_port(), pg_port=free_port(), workers=2)
    passwords = {name: f"pw-{name}-{secrets.token_urlsafe(12)}" for name in (ADMIN, "pipeline", "reviewer")}
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), environ.get("PATH", "")])
    cmd, env = prepare(settings, environ)
    server = TeamServer(
        home, settings, cmd, env | {"MLFLOW_AUTH_ADMIN_PASSWORD": passwords[ADMIN]}, passwords
    )
    try:
        server.start()
        with credentials(ADMIN, passwords[ADMIN]):
            add_user(server.uri, "pipeline", passwords["pipeline"], "writer")
            add_user(server.uri, "reviewer", passwords["reviewer"], "reviewer")
        yield server
    finally:
        server.stop()
        server.cluster.stop()
        shutil.rmtree(home, ignore_errors=True)
