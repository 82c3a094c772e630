"""`make serve`: serve a registry alias (default: the champion) with `mlflow models serve` on loopback.

Resolves the model name and tracking store from params.yaml, and says plainly when there is no
champion yet instead of letting the server fail on an unresolvable URI.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from diffaudit.config.schema import load_params
from diffaudit.errors import ConfigError, TrackingError
from diffaudit.tracking.mlflow_tracking import redact_uri, setup, tracking_uri
from diffaudit.tracking.registry import CHAMPION, alias_version


def serve_command(model_uri: str, host: str, port: int, workers: int = 1) -> list[str]:
    # --env-manager local: the project's venv already holds every dependency the model needs.
    return [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def existing_aliases(name: str) -> dict[str, str]:
    """alias -> version of the registered model ({} when the model is not registered)."""
    try:
        model = MlflowClient().get_registered_model(name)
    except MlflowException:
        return {}
    return {alias: str(version) for alias, version in sorted((model.aliases or {}).items())}


def missing_alias_message(name: str, alias: str, uri: str) -> str:
    """One line: the alias does not exist, why when it is the champion, and the aliases that do."""
    aliases = existing_aliases(name)
    out = f"{name}@{alias} does not exist in {redact_uri(uri)}"
    if alias == CHAMPION:
        out += ": no run has passed the release rule yet (see reports/release.json, or `make retrain`)"
    if aliases:
        listed = ", ".join(f"{a} (v{v})" for a, v in aliases.items())
        return f"{out}; its aliases: {listed} (make serve SERVE_ALIAS=<alias>)"
    return f"{out}; {name} has no aliases (no run has registered it yet: `make repro`)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--alias", default=CHAMPION)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5001)
    ap.add_argument("--params", default=os.environ.get("DIFFAUDIT_PARAMS", "params.yaml"))
    args = ap.parse_args(argv)
    try:
        cfg = load_params(args.params)
        setup(cfg)
    except (ConfigError, TrackingError) as err:
        print(f"[serve] error: {err}", file=sys.stderr)
        return 1
    name = cfg.tracking.registered_model_name
    mv = alias_version(name, args.alias)
    if mv is None:
        print(f"[serve] error: {missing_alias_message(name, args.alias, tracking_uri(cfg))}", file=sys.stderr)
        return 1
    uri = f"models:/{name}@{args.alias}"
    print(f"[serve] {uri} (version {mv.version}) on http://{args.host}:{args.port}/invocations", flush=True)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri(cfg)  # lets the server resolve models:/
    # MLflow starts `uvicorn` by name: make this interpreter's environment (the venv) findable.
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    cmd = serve_command(uri, args.host, args.port)
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
