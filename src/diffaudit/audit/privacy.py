"""Memorization, two tests per space (pixel: exact and near-exact copies; the evaluator's features:
copies up to small shifts or contrast). docs/privacy.md defines both and quotes their measured rates.

- d1/d2 (Gu et al. 2023): a generated image whose nearest training image is much closer than the second
  nearest (d1/d2 < 1/3) is likely a copy of that one image rather than a blend of what it learned. The
  same test on real held-out images gives its false-alarm floor on this data.
- Near-copies by distance to closest record (DCR), calibrated on held-out data: a generated image is
  flagged when its DCR is below the `rank`-th smallest DCR of the real held-out images (the test split,
  never trained on), rank = floor(p/100 * (n + 1)). For a generated image that is no more a copy than a
  real held-out image (exchangeable with them), the chance of a flag is then rank/(n + 1) <= p %
  (a conformal p-value). Each held-out image's own DCR against the threshold of the others
  (leave-one-out) gives the false-alarm rate on images that did not set the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffaudit.metrics.knn import nearest
from diffaudit.results.privacy import PrivacyResult
from diffaudit.utils import intervals
from diffaudit.utils.images import labelled_pairs


def two_nearest(queries: torch.Tensor, reference: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distances d1 <= d2 of each query to its two nearest reference points, and the nearest's index
    (exact search, metrics/knn.py)."""
    d, i = nearest(queries, reference, 2)
    return d[:, 0].numpy(), d[:, 1].numpy(), i[:, 0].numpy()


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


def share(flagged: np.ndarray, level: float) -> dict:
    """The share of `flagged` with its Wilson interval (results.privacy.Share)."""
    k, n = int(flagged.sum()), int(len(flagged))
    return {
        "value": k / n if n else 0.0,
        "ci": list(intervals.wilson(k, n, level)),
        "method": intervals.WILSON,
        "n_flagged": k,
        "n": n,
    }


def conformal_rank(n: int, percentile: float) -> int:
    """The rank k of the threshold among n calibration DCRs: floor(p/100 * (n + 1)), the largest k whose
    conformal p-value k/(n + 1) is at most p % (0: n is too small for p)."""
    return int(math.floor(percentile / 100.0 * (n + 1) + 1e-9))


def dcr_threshold(heldout_dcr: np.ndarray, percentile: float) -> tuple[float, int]:
    """(threshold, rank): the rank-th smallest held-out DCR; (0.0, 0) when there are too few held-out
    images for that percentile (then nothing is flagged: a distance is never below 0)."""
    rank = conformal_rank(len(heldout_dcr), percentile)
    if rank == 0:
        return 0.0, 0
    return float(np.sort(heldout_dcr)[rank - 1]), rank


def leave_one_out_flags(heldout_dcr: np.ndarray, percentile: float) -> np.ndarray:
    """Each held-out image's DCR against the threshold that the other n - 1 held-out images set."""
    n = len(heldout_dcr)
    rank = conformal_rank(n - 1, percentile)  # the others number n - 1
    if n < 2 or rank == 0:
        return np.zeros(n, dtype=bool)
    order = np.argsort(heldout_dcr, kind="stable")
    s = heldout_dcr[order]
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    # Without image i, the rank-th smallest of the others is s[rank] if i sits below it, else s[rank - 1].
    threshold = np.where(position < rank, s[min(rank, n - 1)], s[rank - 1])
    return heldout_dcr < threshold


def _or_nan(x: np.ndarray, f: Callable[[np.ndarray], Any]) -> float:
    return float(f(x)) if len(x) else float("nan")


def near_copies(
    gen_dcr: np.ndarray,
    gen_nearest: np.ndarray,
    ratio: np.ndarray,
    heldout_dcr: np.ndarray,
    percentile: float,
    level: float,
    n_pairs: int,
) -> dict:
    """The DCR test of one space (results.privacy.SpaceNearCopies) from the generated images' DCRs, their
    nearest training images and d1/d2 ratios, and the held-out images' DCRs."""
    threshold, rank = dcr_threshold(heldout_dcr, percentile)
    flagged = gen_dcr < threshold
    order = np.argsort(gen_dcr, kind="stable")[:n_pairs]
    return {
        "percentile": float(percentile),
        "rank": rank,
        "threshold": threshold,
        "fraction": share(flagged, level),
        "dcr_min": _or_nan(gen_dcr, np.min),
        "dcr_median": _or_nan(gen_dcr, np.median),
        "heldout": {
            "n": int(len(heldout_dcr)),
            "dcr_min": _or_nan(heldout_dcr, np.min),
            "dcr_median": _or_nan(heldout_dcr, np.median),
            "scheme": "leave-one-out",
            "false_alarm": share(leave_one_out_flags(heldout_dcr, percentile), level),
        },
        "closest_pairs": [
            {
                "generated": int(i),
                "train": int(gen_nearest[i]),
                "dcr": float(gen_dcr[i]),
                "ratio": float(ratio[i]),
                "flagged": bool(flagged[i]),
            }
            for i in order
        ],
    }


def gallery_figure(
    queries: torch.Tensor, reference: torch.Tensor, result: PrivacyResult, space: str = "pixel"
) -> Image.Image:
    """The most copy-like generated images by DCR in `space`, each beside its nearest training image,
    captioned with the DCR against the threshold, d1/d2 against its threshold, and the verdicts."""
    near = result.near_copies[space]
    pairs = near.closest_pairs
    images = gallery(queries, reference, [(p.generated, p.train, p.dcr) for p in pairs])
    captions, marked = [], []
    for p in pairs:
        copy = p.ratio < result.ratio
        verdicts = [v for v, hit in (("near-copy", p.flagged), ("d1/d2 copy", copy)) if hit]
        captions.append(
            [
                f"gen #{p.generated}  train #{p.train}",
                f"DCR {p.dcr:.3g} ({'<' if p.flagged else '>='} {near.threshold:.3g})",
                f"d1/d2 {p.ratio:.2f} ({'<' if copy else '>='} {result.ratio:.2f})",
                "FLAGGED: " + ", ".join(verdicts) if verdicts else "not flagged",
            ]
        )
        marked.append(bool(verdicts))
    calibration = (
        f"DCR < {near.threshold:.3g}, no. {near.rank} (smallest first) of {near.heldout.n} held-out DCRs "
        f"({near.percentile:g} %)"
        if near.rank
        else f"none can be flagged: {near.heldout.n} held-out DCRs are too few for {near.percentile:g} %"
    )
    title = [
        f"Generated images closest to a training image ({space} DCR, smallest first)",
        f"near-copy: {calibration}; d1/d2 copy: d1/d2 < {result.ratio:.2f} (Gu et al. 2023)",
        f"flagged: {near.fraction.n_flagged} of {near.fraction.n} generated (near-copy), "
        f"{result.memorization[space].n_flagged} (d1/d2)",
    ]
    return labelled_pairs(images[0::2], images[1::2], captions, marked, ("generated", "nearest train"), title)


def privacy_report(
    gen: dict[str, torch.Tensor],
    train: dict[str, torch.Tensor],
    test: dict[str, torch.Tensor],
    threshold: float,
    n_pairs: int,
    percentile: float = 1.0,
    level: float = 0.95,
) -> tuple[PrivacyResult, dict[str, dict]]:
    """privacy.json and the raw per-space results. Each dict maps space ("pixel", "feature") to a tensor
    of that set: generated images are compared with training images, real test images give the floor
    of d1/d2 and calibrate the DCR threshold (`percentile` %; intervals at `level`)."""
    report: dict = {
        "ratio": threshold,
        "n_generated": len(gen["pixel"]),
        "n_train": len(train["pixel"]),
        "memorization": {},
        "near_copies": {},
    }
    raw = {}
    for space in gen:
        m = memorization(gen[space], train[space], threshold)
        floor = memorization(test[space], train[space], threshold)
        near = near_copies(m["d1"], m["nearest"], m["ratio"], floor["d1"], percentile, level, n_pairs)
        raw[space] = m | {"near_flagged": m["d1"] < near["threshold"]}
        report["near_copies"][space] = near
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
