"""Numbers as people read them, shared by the report, the model card, the release rule and the stages."""

from __future__ import annotations

import math
from typing import Any


def fmt_num(x: Any) -> str:
    """Numbers for people: 4 significant digits, integers whole, NaN/inf spelled out."""
    if isinstance(x, bool) or x is None:
        return {True: "yes", False: "no", None: "–"}[x]
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if x == 0:
            return "0"
        return f"{x:.3g}" if abs(x) < 1e-3 or abs(x) >= 1e6 else f"{x:.4g}"
    return str(x)
