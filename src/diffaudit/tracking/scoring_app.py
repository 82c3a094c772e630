"""MLflow's scoring app (the `/invocations`, `/ping` of `mlflow models serve`) behind diffaudit's guards,
run by uvicorn in this process.

`mlflow models serve` starts uvicorn in a child process with no way to add middleware or a shutdown
timeout: it took any Host header and any body size, and on SIGTERM the CLI died while its uvicorn child
waited for a running request to finish. Here one process serves, and SIGTERM stops it within seconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from types import FrameType

from diffaudit.tracking import request_deadline
from diffaudit.tracking.http_guards import MAX_BODY_BYTES, ASGIApp, BodyLimit, Deadline, HostGuard

SHUTDOWN_GRACE_S = 5  # a stopping server waits this long for a running request before cancelling it


def scoring_app(
    model_uri: str, allowed_hosts: Iterable[str], timeout_s: int, max_body_bytes: int = MAX_BODY_BYTES
) -> ASGIApp:
    """Load the model and wrap MLflow's app: Host check, then body size, then the request deadline."""
    from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
    from mlflow.pyfunc import load_model, scoring_server

    os.environ[MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.name] = str(timeout_s)  # MLflow's app reads it at init
    app: ASGIApp = scoring_server.init(load_model(model_uri))
    app = Deadline(app, timeout_s)
    app = BodyLimit(app, max_body_bytes)
    return HostGuard(app, allowed_hosts)


def run(app: ASGIApp, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT; the signal also tells a running request's model to stop."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            request_deadline.SHUTTING_DOWN.set()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    Server(config).run()
