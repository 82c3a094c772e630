"""`make serve`: serve a registry alias (default: the champion) over MLflow's scoring protocol on loopback.

Resolves the model name and tracking store from params.yaml, and says plainly when there is no
champion yet instead of letting the server fail on an unresolvable URI. The server is MLflow's scoring
app (what `mlflow models serve` runs) in this process, behind a Host check, a body-size limit and a
per-request deadline (diffaudit.tracking.scoring_app), so SIGTERM stops it within seconds.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from diffaudit.config.schema import load_params
from diffaudit.errors import ConfigError, TrackingError
from diffaudit.tracking.http_guards import LOOPBACK_HOSTS
from diffaudit.tracking.mlflow_tracking import redact_uri, setup, tracking_uri
from diffaudit.tracking.registry import CHAMPION, alias_version
from diffaudit.tracking.scoring_app import run, scoring_app

DEFAULT_TIMEOUT_S = 60  # MLflow's own default for a scoring request


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
    ap.add_argument(
        "--allowed-hosts",
        default=",".join(LOOPBACK_HOSTS),
        help="comma-separated Host header names the server answers (`*` for any); default: loopback names",
    )
    ap.add_argument(
        "--timeout",
        type=int,
        default=int(os.environ.get("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT") or DEFAULT_TIMEOUT_S),
        help="seconds a request may run: 504 after it, and its sampling stops",
    )
    args = ap.parse_args(argv)
    allowed = [h.strip() for h in args.allowed_hosts.split(",") if h.strip()]
    if not allowed or args.timeout < 1:
        what = (
            "--allowed-hosts names no host" if not allowed else f"--timeout must be >= 1, got {args.timeout}"
        )
        print(f"[serve] error: {what}", file=sys.stderr)
        return 1
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
    print(f"[serve] allowed hosts: {', '.join(allowed)}; request timeout {args.timeout}s", flush=True)
    run(scoring_app(uri, allowed, args.timeout), args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
