"""Accounts on the team server (`make server`), created by its admin.

A reviewer is a plain account: the server's default permission (READ) lets it see every run, artifact
and model, and nothing more, so it can neither register a model version nor set an alias (promote). A
writer (a pipeline's account) also gets EDIT on the experiment and MANAGE on the registered model when
they already exist; one that creates them manages them anyway.

The admin's credentials come from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, the new account's
password from DIFFAUDIT_NEW_USER_PASSWORD or a prompt: never from the command line.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient
from mlflow.tracking import MlflowClient

from diffaudit.tracking.mlflow_tracking import redact_uri

ROLES = ("reviewer", "writer")


def add_user(
    uri: str, username: str, password: str, role: str, experiment: str = "", model: str = ""
) -> list[str]:
    """Create the account (and a writer's grants); return what was granted, for the message."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    AuthServiceClient(uri).create_user(username, password)
    granted: list[str] = []
    if role == "writer":
        auth, client = AuthServiceClient(uri), MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment) if experiment else None
        if exp is not None:
            auth.grant_user_permission(username, "experiment", exp.experiment_id, "EDIT")
            granted.append(f"EDIT on experiment {experiment}")
        if model:
            try:
                client.get_registered_model(model)
            except MlflowException:
                pass
            else:
                auth.grant_user_permission(username, "registered_model", model, "MANAGE")
                granted.append(f"MANAGE on model {model}")
    return granted


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("username")
    ap.add_argument("--role", choices=ROLES, default="reviewer")
    ap.add_argument("--experiment", default="", help="a writer's experiment (when it exists)")
    ap.add_argument("--model", default="", help="a writer's registered model (when it exists)")
    ap.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5002"))
    args = ap.parse_args(argv)
    password = os.environ.get("DIFFAUDIT_NEW_USER_PASSWORD") or getpass.getpass(
        f"{args.username}'s password: "
    )
    try:
        granted = add_user(args.uri, args.username, password, args.role, args.experiment, args.model)
    except MlflowException as err:
        first = redact_uri(str(err.message)).splitlines()[0].split(" Error: ")[0]  # not the SQL behind it
        print(f"[users] error: {first}", file=sys.stderr)
        return 1
    extra = f" ({', '.join(granted)})" if granted else ""
    print(f"[users] {args.role} {args.username} created on {redact_uri(args.uri)}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
