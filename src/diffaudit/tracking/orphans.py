"""Stage runs that never ended: MLflow leaves them RUNNING for ever, so a later stage run closes them.

Two ways a run is left so, each closed FAILED with a note (tag `diffaudit.closed_note`) saying why:
- its process was killed (SIGKILL, out of memory, a power cut): every stage run carries the host and pid
  of its process, and a RUNNING run of this host whose process no longer exists is closed by the next
  stage run on the store. A run of another host is left to this rule there, since its process cannot be
  seen from here;
- the store failed under it (a tracking server restarted mid-stage; the stage exits with a one-line
  TrackingError): the next run of the same stage in the same pipeline closes it, from any host.
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


def close_orphaned_runs(
    client: MlflowClient, experiment_id: str, pipeline_id: str, stage: str, current: str
) -> list[str]:
    """Mark FAILED every RUNNING run other than `current` whose process on this host is gone, or that is
    an earlier run of `stage` in pipeline `pipeline_id`; return their run ids."""
    from diffaudit.tracking.mlflow_tracking import PIPELINE_TAG, STAGE_TAG

    host, when = socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
    notes: dict[str, str] = {}
    running = "attributes.status = 'RUNNING'"
    for run in client.search_runs(
        [experiment_id], filter_string=f"{running} and tags.`{HOST_TAG}` = '{host}'", max_results=1000
    ):
        pid = run.data.tags.get(PID_TAG, "")
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            notes[run.info.run_id] = f"process {pid} on {host} ended without closing this run (killed)"
    same_stage = f"tags.`{PIPELINE_TAG}` = '{pipeline_id}' and tags.`{STAGE_TAG}` = '{stage}'"
    for run in client.search_runs(
        [experiment_id], filter_string=f"{running} and {same_stage}", max_results=100
    ):
        notes.setdefault(
            run.info.run_id,
            f"never finished (the tracking store failed, or its process died); superseded by run {current}",
        )
    notes.pop(current, None)
    for run_id, why in notes.items():
        client.set_tag(run_id, NOTE_TAG, f"{why}; marked FAILED by a later stage run at {when}")
        client.set_terminated(run_id, "FAILED")
    return sorted(notes)
