"""The processes a server started, read from /proc: for tests that stop a server and check that nothing
it started is left running."""

from __future__ import annotations

import os


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of a live process; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, ppid, pgid = f.read().rsplit(")", 1)[1].split()[:3]
    except (OSError, ValueError):
        return None
    return state, int(ppid), int(pgid)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(root: int) -> set[int]:
    """Every process under `root` now (children, theirs, ...), `root` excluded."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        if (st := _stat(pid)) is not None:
            children.setdefault(st[1], []).append(pid)
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def group(pgid: int) -> set[int]:
    """The live processes of a process group."""
    return {pid for pid in _pids() if (st := _stat(pid)) is not None and st[2] == pgid and st[0] != "Z"}


def running(pids: set[int]) -> dict[int, str]:
    """pid -> command line of those of `pids` still running (zombies are not)."""
    out = {}
    for pid in pids:
        st = _stat(pid)
        if st is not None and st[0] != "Z":
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    out[pid] = f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
            except OSError:
                continue
    return out


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU time the live ones of `pids` have used so far."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")
