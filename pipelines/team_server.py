"""`make server`: the reviewers' shared dashboard. MLflow over PostgreSQL, logins required (MLflow's
basic-auth app), artifacts proxied by the server, Host headers validated, on loopback unless told otherwise.

`make ui` stays the one-person dashboard (sqlite, local artifacts). Everything this server keeps lives in
one folder (DIFFAUDIT_SERVER_HOME, default .team-server/): a PostgreSQL cluster (pg/) holding the tracking
and the accounts databases, the proxied artifacts (artifacts/), the auth config (auth.ini) and the
secrets generated on first start (secrets.json); both files are readable by their owner only. Set
DIFFAUDIT_SERVER_DB_URI and DIFFAUDIT_SERVER_AUTH_DB_URI to use an existing PostgreSQL instead.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from diffaudit.errors import TrackingError
from diffaudit.tracking.postgres import Cluster

ADMIN = "admin"
TRACKING_DB = "mlflow"
AUTH_DB = "mlflow_auth"


@dataclass(frozen=True)
class Settings:
    home: Path
    host: str = "127.0.0.1"
    port: int = 5002
    pg_port: int = 5433
    allowed_hosts: str = ""  # empty: this host and localhost, at `port`
    workers: int = 2

    def hosts(self) -> str:
        """The Host headers the server answers (DNS-rebinding guard). Off loopback they must be named."""
        if self.allowed_hosts:
            return self.allowed_hosts
        if not _is_loopback(self.host):
            raise TrackingError(
                f"SERVER_HOST={self.host} is not loopback: name the hosts reviewers use in "
                "SERVER_ALLOWED_HOSTS (e.g. SERVER_ALLOWED_HOSTS=mlflow.team.example:5002)"
            )
        return ",".join(dict.fromkeys([f"{self.host}:{self.port}", f"localhost:{self.port}"]))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _private_file(path: Path, text: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def load_secrets(home: Path) -> dict[str, str]:
    """The database password and the Flask secret key (CSRF), generated on first start and kept."""
    path = home / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    home.mkdir(parents=True, exist_ok=True)
    made = {"db_password": secrets.token_urlsafe(24), "flask_secret_key": secrets.token_urlsafe(32)}
    _private_file(path, json.dumps(made))
    return made


def write_auth_config(path: Path, auth_db_uri: str) -> None:
    """MLflow's basic-auth config: every logged-in user may read everything (reviewers), and writes need a
    grant (the creator of an experiment or model manages it). No admin password in it: MLflow takes that
    from MLFLOW_AUTH_ADMIN_PASSWORD on first start."""
    escaped = auth_db_uri.replace("%", "%%")  # configparser interpolates % signs
    _private_file(
        path,
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {escaped}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )


def server_command(settings: Settings) -> list[str]:
    """The `mlflow server` command line; the store URIs (they hold a password) travel in the environment
    (MLFLOW_BACKEND_STORE_URI), never on a command line that `ps` shows."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--serve-artifacts",
        "--artifacts-destination",
        (settings.home / "artifacts").resolve().as_uri(),
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--allowed-hosts",
        settings.hosts(),
        "--workers",
        str(settings.workers),
    ]


def prepare(settings: Settings, environ: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Start the database (the local cluster unless DIFFAUDIT_SERVER_DB_URI names one), write the auth
    config, and return the server's command and environment."""
    environ = dict(os.environ if environ is None else environ)
    settings.hosts()  # an unguarded off-loopback setting is refused before anything starts
    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    keys = load_secrets(home)
    backend, auth_db = environ.get("DIFFAUDIT_SERVER_DB_URI"), environ.get("DIFFAUDIT_SERVER_AUTH_DB_URI")
    if not backend or not auth_db:
        cluster = Cluster(home / "pg", settings.pg_port, "mlflow", keys["db_password"])
        cluster.init()
        cluster.start()
        for db in (TRACKING_DB, AUTH_DB):
            cluster.create_database(db)
        backend, auth_db = backend or cluster.uri(TRACKING_DB), auth_db or cluster.uri(AUTH_DB)
    write_auth_config(home / "auth.ini", auth_db)
    env = {k: v for k, v in environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    # MLflow's job runner (GenAI scorers, several worker processes) has no work for a review dashboard.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env |= {
        "MLFLOW_BACKEND_STORE_URI": backend,
        "MLFLOW_AUTH_CONFIG_PATH": str(home / "auth.ini"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
        or keys["flask_secret_key"],
    }
    return server_command(settings), env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--home", type=Path, default=Path(os.environ.get("DIFFAUDIT_SERVER_HOME", ".team-server"))
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5002)
    ap.add_argument("--pg-port", type=int, default=5433)
    ap.add_argument("--allowed-hosts", default="")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    settings = Settings(args.home, args.host, args.port, args.pg_port, args.allowed_hosts, args.workers)
    try:
        cmd, env = prepare(settings)
    except TrackingError as err:
        print(f"[server] error: {err}", file=sys.stderr)
        return 1
    print(f"[server] http://{settings.host}:{settings.port} (Host headers allowed: {settings.hosts()})")
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
