"""A PostgreSQL cluster in one folder: the team tracking server's store (`make server`) and its tests'.

Debian keeps the server binaries off PATH (/usr/lib/postgresql/<version>/bin), and postgres refuses to
run as root, so as root every server command runs as the `postgres` system user (runuser) on a folder
that user owns. The cluster listens on loopback TCP only, with password (scram) logins.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from diffaudit.errors import TrackingError

SYSTEM_USER = "postgres"  # who runs the server when we are root (Debian's package creates it)


def find_bin(name: str) -> Path | None:
    """A PostgreSQL program: the newest Debian install under /usr/lib/postgresql, else on PATH."""
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1]
    found = shutil.which(name)
    return Path(found) if found else None


def available() -> bool:
    """Whether this machine can run a cluster (initdb, pg_ctl and pg_dump are installed)."""
    return all(find_bin(n) for n in ("initdb", "pg_ctl", "pg_dump"))


def _bin(name: str) -> str:
    path = find_bin(name)
    if path is None:
        raise TrackingError(f"PostgreSQL's {name} is not installed (apt-get install -y postgresql)")
    return str(path)


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", SYSTEM_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def _give_to_owner(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, SYSTEM_USER, SYSTEM_USER)


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise TrackingError(f"PostgreSQL {what} failed: {tail[0]}")


@dataclass(frozen=True)
class Cluster:
    """A cluster in `home` (data/, server.log), its superuser `user` logging in with `password`."""

    home: Path
    port: int
    user: str
    password: str
    host: str = "127.0.0.1"

    @property
    def data(self) -> Path:
        return self.home / "data"

    def uri(self, database: str) -> str:
        """The SQLAlchemy URI of one database (it holds the password: never print or log it)."""
        login = f"{quote(self.user)}:{quote(self.password, safe='')}"
        return f"postgresql://{login}@{self.host}:{self.port}/{database}"

    def init(self) -> None:
        """Create the cluster on first use (a folder that already holds one is kept as it is)."""
        if (self.data / "PG_VERSION").exists():
            return
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        if os.geteuid() == 0 and subprocess.run(_as_owner(["test", "-x", str(self.home.parent)])).returncode:
            raise TrackingError(
                f"the {SYSTEM_USER} user cannot reach {self.home.parent} (postgres does not run as root): "
                "put the server's folder somewhere it can (DIFFAUDIT_SERVER_HOME)"
            )
        _give_to_owner(self.home)
        pwfile = self.home / "initdb.pw"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        _give_to_owner(pwfile)
        try:
            cmd = [_bin("initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}"]
            _run(_as_owner([*cmd, "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions"]), "initdb")
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self) -> None:
        """Start the server (waits until it accepts connections); a running one is left alone."""
        if self.running():
            return
        opts = f"-c listen_addresses={self.host} -p {self.port} -k {self.data}"
        log = self.home / "server.log"
        _run(
            _as_owner([_bin("pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", opts, "-w", "start"]),
            "start",
        )

    def running(self) -> bool:
        proc = subprocess.run(
            _as_owner([_bin("pg_ctl"), "-D", str(self.data), "status"]), capture_output=True
        )
        return proc.returncode == 0

    def stop(self) -> None:
        if self.running():
            _run(_as_owner([_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]), "stop")

    def _env(self) -> dict[str, str]:
        # The password reaches libpq through the environment, never a command line (ps shows those).
        return os.environ | {"PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"}

    def create_database(self, name: str) -> None:
        """Create database `name` unless it exists."""
        import psycopg  # SQLAlchemy's default PostgreSQL driver, so MLflow's too

        with psycopg.connect(self.uri("postgres"), connect_timeout=10, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')

    def dump(self, database: str) -> str:
        """The whole database as SQL text (pg_dump), e.g. to check what the store holds."""
        cmd = [_bin("pg_dump"), "-h", self.host, "-p", str(self.port), "-U", self.user, database]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self._env(), timeout=120)
        if proc.returncode != 0:
            raise TrackingError(f"pg_dump {database} failed: {proc.stderr.strip()}")
        return proc.stdout
