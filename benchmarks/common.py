"""What the benchmarks share: the composed config, data, timers, peak-memory probes and the result table."""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffaudit.config.compose import compose_config
from diffaudit.config.schema import Config, validate_config
from diffaudit.data.store import META_FILE, DataMeta, Split, load_meta, load_split
from diffaudit.layout import Layout

ROOT = Path(__file__).resolve().parents[1]
QUICK_OVERRIDES = ["experiment=smoke"]


def load_config(overrides: list[str] | None = None) -> Config:
    """The project's composed config (conf/ plus overrides), validated."""
    return validate_config(compose_config(list(overrides or []), ROOT / "conf"))


def load_data(
    cfg: Config, n_synthetic: int = 640, prefer_prepared: bool = True
) -> tuple[Split, Split, DataMeta, str]:
    """(train, val, meta, source): the prepared data when it matches the config, else random images of its
    shape."""
    prepared = ROOT / Layout.of(cfg).prepared
    if prefer_prepared and (prepared / META_FILE).is_file():
        meta = load_meta(prepared)
        if meta.image_size == cfg.data.image_size and meta.channels == cfg.data.channels:
            return load_split(prepared, "train"), load_split(prepared, "val"), meta, "prepared"
    meta = DataMeta(
        class_names=[str(i) for i in range(10)],
        attribute_groups={},
        image_size=cfg.data.image_size,
        channels=cfg.data.channels,
        source="synthetic",
    )
    return (
        synthetic_split(n_synthetic, meta, 0),
        synthetic_split(max(8, n_synthetic // 8), meta, 1),
        meta,
        "synthetic",
    )


def synthetic_split(n: int, meta: DataMeta, seed: int) -> Split:
    """n random images in [-1, 1] with balanced labels (cost is what matters here, not content)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, meta.channels, meta.image_size, meta.image_size, generator=gen) * 2 - 1
    return Split(images=images, labels=torch.arange(n) % meta.num_classes, attributes={})


def median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def loadavg() -> float:
    """1-minute load average (background load on a shared machine), or -1 where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


# -- peak memory -------------------------------------------------------------------------------
def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc malloc_trim), so the starting RSS is live memory only."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) through /proc/self/clear_refs (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class PeakRss:
    """Peak resident memory of a block, in MiB: absolute and above the RSS it started with."""

    peak_mib: float | None = None
    delta_mib: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def peak_rss() -> Iterator[PeakRss]:
    """Peak RSS of the block above its starting RSS (freed heap trimmed, VmHWM reset first).

    None where /proc does not allow the reset (not Linux, or Linux < 4.0).
    """
    out = PeakRss()
    gc.collect()
    _trim_heap()
    ok = _reset_peak_rss()
    start = _status_kb("VmRSS")
    yield out
    peak = _status_kb("VmHWM")
    if ok and start is not None and peak is not None:
        out.peak_mib, out.delta_mib = peak / 1024, (peak - start) / 1024


def max_rss_children_mib() -> float:
    """Largest peak RSS of any finished child process (a stage run by DVC), in MiB."""
    kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


# -- timing ------------------------------------------------------------------------------------
def interleave(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each fn once per round, in turn (A, B, A, B, ...); each returns its own measured seconds."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            out[k].append(fn())
    return out


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


# -- the table ---------------------------------------------------------------------------------
@dataclass
class Figure:
    """One reported number with its target; `ok` is None where the figure has no target."""

    name: str
    value: float | str | None
    unit: str = ""
    target: str = ""
    ok: bool | None = None
    note: str = ""

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "target": self.target,
            "ok": self.ok,
            "note": self.note,
        }


def fmt(v: float | str | None) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(figures: list[Figure]) -> str:
    """A fixed-width text table of figures and their targets."""
    rows = [("figure", "value", "target", "met", "note")]
    for f in figures:
        met = {True: "yes", False: "NO", None: "-"}[f.ok]
        rows.append((f.name, f"{fmt(f.value)} {f.unit}".strip(), f.target or "-", met, f.note))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
