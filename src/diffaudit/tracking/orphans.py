"""Stage runs whose process was killed: MLflow leaves them RUNNING for ever, so the next stage run of the
same store closes them.

Every stage run carries the host and pid of its process. A RUNNING run of this host whose process no
longer exists was killed (SIGKILL, out of memory, a power cut): nothing ended it. It is marked FAILED with
a note saying so. A run of another host is left alone, since its process cannot be seen from here.
"""

from __future__ import annotations

import os
import socket
import time

from mlflow.tracking import MlflowClient

HOST_TAG = "diffaudit.host"
PID_TAG = "diffaudit.pid"
NOTE_TAG = "diffaudit.closed_note"


def process_tags() -> dict[str, str]:
    """The tags that let a later run tell whether this run's process still lives."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def close_orphaned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark FAILED every RUNNING run of this host whose process is gone; return their run ids."""
    host = socket.gethostname()
    running = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=1000,
    )
    closed = []
    for run in running:
        pid = run.data.tags.get(PID_TAG, "")
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        note = (
            f"process {pid} on {host} ended without closing this run (killed); marked FAILED by a later "
            f"stage run at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
        )
        client.set_tag(run.info.run_id, NOTE_TAG, note)
        client.set_terminated(run.info.run_id, "FAILED")
        closed.append(run.info.run_id)
    return closed
