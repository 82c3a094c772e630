"""This process's own clock: how long ago it started (Linux /proc), and which stage it was started for.

A stage's start-up (process start to its first line of work) means something only in a process started to
run that stage (`python -m pipelines.<stage>`), not when tests or notebooks call a stage's `main` in a
process that has run other things; `pipelines._stage.run` marks the process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_entry_stage: list[str] = []  # the stage this process was started to run, until its start-up is read


def seconds_since_start() -> float | None:
    """Wall seconds since this process started, to 10 ms (the kernel's clock tick); None off Linux.

    /proc/self/stat's field 22 is the start in ticks since boot, on the clock CLOCK_BOOTTIME reads, so the
    difference needs no wall-clock time (psutil's create_time adds an integer-second boot time to it).
    """
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22; fields[0] is field 3 (after the parenthesised name)
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def mark_stage_process(stage: str) -> None:
    """Record that this process was started to run `stage` (called by the stage's entry point)."""
    _entry_stage[:] = [stage]


def stage_startup_seconds(stage: str) -> float | None:
    """Seconds from process start to now, once, if this process was started for `stage`; else None."""
    if _entry_stage != [stage]:
        return None
    _entry_stage.clear()
    return seconds_since_start()
