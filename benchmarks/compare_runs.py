"""Are two runs' metrics the same? Every metrics/*.json of run A against run B, value by value, exactly
(NaN equals NaN), apart from what wall-clock time decides (TIMING_KEYS anywhere, DECIDED_BY_TIME per
file). Exit 1 on any difference.

    python -m benchmarks.compare_runs RUN_A/metrics RUN_B/metrics

It is how a refactor shows that the default run's numbers did not move (docs/architecture.md).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

USAGE = "usage: python -m benchmarks.compare_runs RUN_A/metrics RUN_B/metrics"
TIMING_KEYS = frozenset({"seconds"})  # wall-clock, differs run to run by nature
# Top-level keys that wall-clock time decides: the sampler study's `best` breaks a tie in NFE by the
# faster sampler (at the default all four samplers reach the target at 10 NFE).
DECIDED_BY_TIME: dict[str, tuple[str, ...]] = {"sampler_study.json": ("best",)}


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Every leaf where `a` and `b` differ, as 'dotted.path: a != b' (keys in TIMING_KEYS skipped)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k in TIMING_KEYS:
                continue
            path = f"{where}.{k}" if where else str(k)
            if k not in a or k not in b:
                out.append(f"{path}: only in {'B' if k not in a else 'A'}")
            else:
                out += differences(a[k], b[k], path)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)} items"]
        return [
            d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{i}]")
        ]
    same = (type(a) is type(b) and a == b) or (
        isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    )
    return [] if same else [f"{where}: {a!r} != {b!r}"]


def compare_dirs(a: Path, b: Path) -> dict[str, list[str]]:
    """file name -> its differences, for every JSON file in either folder."""
    names = sorted({p.name for p in a.glob("*.json")} | {p.name for p in b.glob("*.json")})
    out = {}
    for name in names:
        pa, pb = a / name, b / name
        if not (pa.is_file() and pb.is_file()):
            out[name] = [f"only in {'A' if pa.is_file() else 'B'}"]
            continue
        a_data, b_data = (json.loads(p.read_text()) for p in (pa, pb))
        for key in DECIDED_BY_TIME.get(name, ()):
            a_data.pop(key, None), b_data.pop(key, None)
        out[name] = differences(a_data, b_data)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(USAGE, file=sys.stderr)
        return 2
    result = compare_dirs(Path(argv[0]), Path(argv[1]))
    for name, diffs in result.items():
        print(f"{name}: {'identical' if not diffs else f'{len(diffs)} differences'}")
        for d in diffs[:20]:
            print(f"  {d}")
    return 1 if any(result.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
