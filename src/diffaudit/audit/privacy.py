"""Memorization (Gu et al. 2023): a generated image whose nearest training image is much closer than the
second nearest (d1/d2 < 1/3) is likely a copy of that one image rather than a blend of what it learned.

Measured in pixel space (exact and near-exact copies) and in the evaluator's feature space (copies up
to small shifts or contrast). The same test on real held-out images, which were never trained on,
gives the detector's false-alarm floor on this data (near-duplicate training images raise it).
"""

from __future__ import annotations

import numpy as np
import torch

from diffaudit.results.privacy import PrivacyResult


def two_nearest(
    queries: torch.Tensor, reference: torch.Tensor, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distances d1 <= d2 of each query to its two nearest reference points, and the nearest's index."""
    q = queries.reshape(len(queries), -1).double()
    r = reference.reshape(len(reference), -1).double()
    d1, d2, i1 = [], [], []
    for i in range(0, len(q), chunk):
        d = torch.cdist(q[i : i + chunk], r)
        top = d.topk(2, dim=1, largest=False)
        d1.append(top.values[:, 0])
        d2.append(top.values[:, 1])
        i1.append(top.indices[:, 0])
    return torch.cat(d1).numpy(), torch.cat(d2).numpy(), torch.cat(i1).numpy()


def nn_ratio(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """d1/d2; an exact copy of a training image that is itself duplicated (d1 = d2 = 0) counts as 0."""
    return np.where(d2 > 0, d1 / np.maximum(d2, 1e-12), 0.0)


def memorization(queries: torch.Tensor, reference: torch.Tensor, threshold: float) -> dict:
    """Flags, ratios and nearest indices for one space; `fraction` is the share flagged."""
    d1, d2, idx = two_nearest(queries, reference)
    ratio = nn_ratio(d1, d2)
    flagged = ratio < threshold
    return {
        "fraction": float(flagged.mean()) if len(flagged) else 0.0,
        "n_flagged": int(flagged.sum()),
        "ratio": ratio,
        "d1": d1,
        "nearest": idx,
        "flagged": flagged,
    }


def summary(m: dict) -> dict:
    """The JSON-ready part of a memorization result."""
    r = m["ratio"]
    return {
        "fraction": m["fraction"],
        "n_flagged": m["n_flagged"],
        "n": int(len(r)),
        "ratio_min": float(r.min()) if len(r) else float("nan"),
        "ratio_median": float(np.median(r)) if len(r) else float("nan"),
        "ratio_quantiles": {q: float(np.quantile(r, float(q))) for q in ("0.01", "0.05", "0.25")}
        if len(r)
        else {},
    }


def closest_pairs(m: dict, n: int) -> list[tuple[int, int, float]]:
    """(query index, nearest reference index, ratio) of the `n` most copy-like queries."""
    order = np.argsort(m["ratio"], kind="stable")[:n]
    return [(int(i), int(m["nearest"][i]), float(m["ratio"][i])) for i in order]


def gallery(
    queries: torch.Tensor, reference: torch.Tensor, pairs: list[tuple[int, int, float]]
) -> torch.Tensor:
    """Images to tile two per pair: generated image, then its nearest training image."""
    if not pairs:
        return queries[:0]
    q = torch.stack([queries[i] for i, _, _ in pairs])
    r = torch.stack([reference[j] for _, j, _ in pairs])
    return torch.stack([q, r], dim=1).reshape(-1, *queries.shape[1:])


def privacy_report(
    gen: dict[str, torch.Tensor],
    train: dict[str, torch.Tensor],
    test: dict[str, torch.Tensor],
    threshold: float,
    n_pairs: int,
) -> tuple[PrivacyResult, dict[str, dict]]:
    """privacy.json and the raw per-space results. Each dict maps space ("pixel", "feature") to a tensor
    of that set: generated images are compared with training images, real test images give the floor."""
    report: dict = {
        "ratio": threshold,
        "n_generated": len(gen["pixel"]),
        "n_train": len(train["pixel"]),
        "memorization": {},
    }
    raw = {}
    for space in gen:
        m = memorization(gen[space], train[space], threshold)
        floor = memorization(test[space], train[space], threshold)
        raw[space] = m
        report["memorization"][space] = summary(m) | {
            "real_test_floor": {
                "fraction": floor["fraction"],
                "n": len(floor["ratio"]),
                "ratio_min": float(floor["ratio"].min()) if len(floor["ratio"]) else float("nan"),
            },
            "closest_pairs": [
                {"generated": i, "train": j, "ratio": r} for i, j, r in closest_pairs(m, n_pairs)
            ],
        }
    return PrivacyResult.model_validate(report), raw
