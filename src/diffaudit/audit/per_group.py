"""Per-group quality: is every group served equally well? fairlearn's MetricFrame does the grouping
(`by_group`, `overall`, and the worst-group gap `difference()`); the metrics are closures over
per-image arrays computed once, fed image indices as y_true/y_pred so one frame can hold per-image
metrics (conditional accuracy, confidence, precision) and set metrics (recall, FID) alike.

A generated image's group is the evaluator's prediction (the generator was never told it); a real
image's group is its true label. Groups smaller than `min_group_size` are reported but left out of the
gap; FID is computed only where both sides have `min_group_size_fid` images (a covariance of a
d-dimensional feature needs many more than d points to mean anything).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from fairlearn.metrics import MetricFrame
from scipy import linalg

from diffaudit.metrics.precision_recall import coverage_share, knn_radii
from diffaudit.utils import intervals

SAMPLE_METRICS = ("conditional_accuracy", "confidence", "precision")
SET_METRICS = ("recall", "fid")


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2) of two feature sets."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(sa @ sb)
    covmean = np.real(covmean)
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * np.trace(covmean))


def _inside(queries: np.ndarray, support: np.ndarray, k: int) -> np.ndarray:
    """1.0 where a query lies inside the k-NN ball of some support point (Kynkäänniemi et al. 2019)."""
    s = torch.from_numpy(np.asarray(support, dtype=np.float64))
    radii = knn_radii(s, min(k, len(s) - 1))
    return coverage_share(torch.from_numpy(np.asarray(queries, dtype=np.float64)), s, radii).numpy()


def _group_mean_boot(
    values: np.ndarray, groups: np.ndarray, levels: list, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_boot, n_levels) group means with images resampled within their group."""
    out = np.empty((n_boot, len(levels)))
    for j, g in enumerate(levels):
        v = values[groups == g]
        out[:, j] = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    return out


def per_group_quality(
    groups: np.ndarray,
    *,
    hit: np.ndarray,
    confidence: np.ndarray,
    gen_feats: np.ndarray,
    real_feats: np.ndarray,
    real_groups: np.ndarray,
    k: int,
    min_group_size: int,
    min_group_size_fid: int,
    n_boot: int,
    level: float,
    rng: np.random.Generator,
) -> dict:
    """MetricFrame over generated images grouped by `groups` (names), with the worst-group gap and its
    bootstrap interval for the per-image metrics."""
    groups = np.asarray(groups).astype(str)
    real_groups = np.asarray(real_groups).astype(str)
    levels, counts = np.unique(groups, return_counts=True)
    sizes = {str(g): int(n) for g, n in zip(levels, counts, strict=True)}
    kept = [str(g) for g, n in zip(levels, counts, strict=True) if n >= min_group_size]
    precision = _inside(gen_feats, real_feats, k)

    def of_group(idx: np.ndarray) -> str | None:
        g = np.unique(groups[idx])
        return str(g[0]) if len(g) == 1 else None  # None: the overall set

    def real_of(g: str | None) -> np.ndarray:
        return real_feats if g is None else real_feats[real_groups == g]

    def recall(idx: np.ndarray) -> float:
        fake, real = gen_feats[idx], real_of(of_group(idx))
        if len(fake) <= k or len(real) == 0:
            return float("nan")
        return float(_inside(real, fake, k).mean())

    def fid(idx: np.ndarray) -> float:
        fake, real = gen_feats[idx], real_of(of_group(idx))
        if min(len(fake), len(real)) < min_group_size_fid:
            return float("nan")
        return frechet_distance(fake, real)

    per_image = {"conditional_accuracy": hit, "confidence": confidence, "precision": precision}
    metrics: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
        name: (lambda yt, _yp, v=v: float(v[np.asarray(yt, dtype=np.int64)].mean()))
        for name, v in per_image.items()
    }
    metrics |= {
        "recall": lambda yt, _yp: recall(np.asarray(yt, dtype=np.int64)),
        "fid": lambda yt, _yp: fid(np.asarray(yt, dtype=np.int64)),
    }
    sel = np.flatnonzero(np.isin(groups, kept))
    result: dict = {
        "sizes": sizes,
        "excluded_small_groups": sorted(set(sizes) - set(kept)),
        "real_sizes": {g: int((real_groups == g).sum()) for g in kept},
    }
    if len(kept) == 0:
        return result | {"by_group": {}, "overall": {}, "gap": {}}
    mf = MetricFrame(metrics=metrics, y_true=sel, y_pred=sel, sensitive_features=groups[sel])
    by_group = mf.by_group
    gap = mf.difference(method="between_groups")
    boots = (
        {m: _group_mean_boot(per_image[m][sel], groups[sel], kept, n_boot, rng) for m in SAMPLE_METRICS}
        if n_boot and len(kept) > 1
        else {}
    )
    result["by_group"] = {
        str(g): {m: _num(by_group.loc[g, m]) for m in by_group.columns} for g in by_group.index
    }
    result["overall"] = {m: _num(v) for m, v in mf.overall.items()}
    result["gap"] = {
        m: _gap(_num(gap[m]), by_group[m].to_numpy(dtype=np.float64), boots.get(m), level)
        | {"worst_group": _worst(by_group[m], higher_is_better=(m != "fid"))}
        for m in by_group.columns
    }
    return result


def _gap(plug_in: float, means: np.ndarray, boots: np.ndarray | None, level: float) -> dict:
    """The worst-group gap (largest minus smallest group value): biased upward like every maximum of
    noisy terms, so its interval inverts a test along equal groups -> the estimated differences
    (utils/intervals.py `range_of`), with the median-unbiased estimate; the plug-in beside it. Set
    metrics (recall, FID) are not resampled: plug-in only."""
    if boots is None or not np.isfinite(plug_in):
        return {"value": plug_in, "ci": None, "method": None, "plug_in": plug_in}
    value, ci = intervals.range_of(means, boots - means, level)
    return {"value": value, "ci": list(ci), "method": intervals.INVERSION, "plug_in": plug_in}


def _num(v: object) -> float:
    return float(v)  # type: ignore[arg-type]


def _worst(col: object, higher_is_better: bool) -> str | None:
    s = col.dropna()  # type: ignore[attr-defined]
    if s.empty:
        return None
    return str(s.idxmin() if higher_is_better else s.idxmax())
