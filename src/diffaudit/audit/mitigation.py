"""Mitigation by balanced selection sampling: for each class, draw extra candidates until every group of
one attribute can fill its target share, then keep a set of the original size per class with those
shares. Original images are kept first, so a model that is already balanced costs few extra draws.
The attribute is read as the audit reads it: by its pixel rule for a derived attribute (exact), else
by the evaluator.

It changes what is sampled, not the model: the skew remains in the weights and resurfaces with a plain
sampler. Where the evaluator does the selecting, the same evaluator then measures the result, so the
"after" figures are optimistic where it errs (documented in docs/fairness.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

# labels -> (images, predicted attribute group per image)
Draw = Callable[[torch.Tensor], tuple[torch.Tensor, np.ndarray]]


def target_counts(n: int, shares: np.ndarray) -> np.ndarray:
    """Integer counts summing to n, closest to n * shares (largest remainder)."""
    shares = np.asarray(shares, dtype=np.float64) / np.sum(shares)
    raw = n * shares
    counts = np.floor(raw).astype(np.int64)
    for j in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[j] += 1
    return counts


def balanced_selection(
    images: torch.Tensor,
    labels: torch.Tensor,
    attr: np.ndarray,
    target: np.ndarray,
    draw: Draw,
    oversample: float,
    max_rounds: int,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, dict]:
    """Return (images, labels, attribute predictions, info) of the balanced set, same count per class."""
    k = len(target)
    labels_np = labels.numpy()
    classes = [int(c) for c in np.unique(labels_np)]
    pool_img = {c: [images[labels_np == c]] for c in classes}
    pool_attr = {c: [np.asarray(attr)[labels_np == c]] for c in classes}
    n_c = {c: int((labels_np == c).sum()) for c in classes}
    want = {c: target_counts(n_c[c], target) for c in classes}
    budget = {c: math.ceil(oversample * n_c[c]) for c in classes}
    drawn = dict.fromkeys(classes, 0)
    for _ in range(max_rounds):
        request: dict[int, int] = {}
        for c in classes:
            a = np.concatenate(pool_attr[c])
            have = np.bincount(a, minlength=k)[:k]
            short = want[c] - have
            room = budget[c] - len(a)
            if (short > 0).any() and room > 0:
                # Laplace: a group never seen still gets a finite estimate
                share = (have + 1.0) / (len(a) + 2.0)
                request[c] = int(min(room, math.ceil(float(np.max(np.where(short > 0, short / share, 0.0))))))
        if not request:
            break
        req_labels = torch.cat([torch.full((m,), c, dtype=labels.dtype) for c, m in request.items()])
        new_img, new_attr = draw(req_labels)
        start = 0
        for c, m in request.items():
            pool_img[c].append(new_img[start : start + m])
            pool_attr[c].append(np.asarray(new_attr[start : start + m]))
            drawn[c] += m
            start += m
    out_img, out_lab, out_attr, per_class = [], [], [], {}
    for c in classes:
        imgs, a = torch.cat(pool_img[c]), np.concatenate(pool_attr[c])
        chosen: list[int] = []
        for g in range(k):
            chosen += np.flatnonzero(a == g)[: want[c][g]].tolist()
        taken = set(chosen)
        rest = [i for i in range(len(a)) if i not in taken]
        shortfall = n_c[c] - len(chosen)
        chosen += rest[:shortfall]  # a group still short after the budget: fill with the others, report it
        idx = np.array(sorted(chosen), dtype=np.int64)
        out_img.append(imgs[idx])
        out_lab.append(torch.full((len(idx),), c, dtype=labels.dtype))
        out_attr.append(a[idx])
        per_class[c] = {
            "extra_draws": drawn[c],
            "target": want[c].tolist(),
            "kept": np.bincount(a[idx], minlength=k)[:k].tolist(),
            "shortfall": int(max(shortfall, 0)),
        }
    info = {
        "extra_draws": int(sum(drawn.values())),
        "per_class": per_class,
        "classes_short": [c for c, v in per_class.items() if v["shortfall"] > 0],
    }
    return torch.cat(out_img), torch.cat(out_lab), np.concatenate(out_attr), info
