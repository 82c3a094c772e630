"""`make ui`: `mlflow server` with its arguments, stopped whole on SIGTERM, SIGINT or SIGHUP.

`mlflow server` forwards a stop signal to its uvicorn child, but not to the job runner's huey consumers
it also starts: after `kill <make ui>` seven of them kept running. Here the server runs in a process group
of its own; a stop signal goes to the server first (its graceful stop), then to everything left in the
group, and what still runs after a grace period is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GRACE_S = 5.0  # for the server's own graceful stop, then again for the rest of its group


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies, left for init to reap, do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    if not os.path.isdir("/proc"):
        return True
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state, _ppid, group = f.read().rsplit(")", 1)[1].split()[:3]
        except OSError:
            continue
        if int(group) == pgid and state != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def stop_group(proc: subprocess.Popen, sig: int) -> None:
    """`sig` to the server, then SIGTERM to its group, then SIGKILL: each after up to GRACE_S."""
    if proc.poll() is None:
        proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(GRACE_S)
    for follow_up in (signal.SIGTERM, signal.SIGKILL):
        _signal_group(proc.pid, follow_up)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(proc.pid)):
            time.sleep(0.1)
        if proc.poll() is not None and not _group_alive(proc.pid):
            return


def stop_with_parent() -> None:
    """SIGTERM this process when its parent (make) dies, even by SIGKILL (Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    stop_with_parent()
    cmd = [sys.executable, "-m", "mlflow", "server", *args]
    proc = subprocess.Popen(cmd, start_new_session=True)  # its own group: pgid == pid
    received: list[int] = []

    def on_stop(sig: int, _frame: FrameType | None) -> None:
        received.append(sig)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop)
    while proc.poll() is None and not received:
        time.sleep(0.2)
    stop_group(proc, received[0] if received else signal.SIGTERM)
    return 0 if received else (proc.returncode or 0)


if __name__ == "__main__":
    sys.exit(main())
