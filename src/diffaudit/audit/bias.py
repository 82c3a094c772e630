"""Bias amplification of one attribute: per-cell differences and three aggregates (docs/fairness.md).

Cells: BA(a|c) = p_gen(a|c) - p_train(a|c) for every class c and attribute value a. Positive: the model
makes group a more common within class c than its training data did; negative: rarer. A model that
reproduces a skewed training set faithfully has BA ~ 0 (the skew is the data's, and representation
against a uniform reference is what shows it). p_gen(a|c) is corrected with the evaluator's confusion
matrix on real test images of class c when that class has enough of them in every group, else with the
pooled matrix.

Aggregates, each with a bootstrap interval over the same replicates as the cells:
- `wang_russakovsky`: directional BiasAmp (task -> attribute) of Wang & Russakovsky 2021, the mean over
  every cell of its difference signed by the direction of the training association of a and c;
- `zhao`: mean bias amplification of Zhao et al. 2017, the differences of the cells where the training
  data over-represents the group (p_train(a|c) > 1/|A|), summed and divided by the number of classes;
- `max_abs_ba`: the largest |BA| of one cell; being a maximum over many noisy cells its plug-in is
  biased upwards (winner's curse): `value` is the median-unbiased estimate of a test-inversion
  interval (`plug_in` beside it), and each cell carries its own interval.
The two papers' measures are signed and average over cells, so a model that pushes one class toward
balance and another away from it is not read as amplifying; the worst cell reads any departure.
"""

from __future__ import annotations

import numpy as np

from diffaudit.audit.fairness import Shares, distribution, percentile_ci
from diffaudit.utils import intervals

# An interval widened by less than this to hold its estimate is float noise, not a widening.
_TOLERANCE = 1e-12


def _with_interval(value: float, replicates: np.ndarray, level: float) -> dict:
    """{value, ci, method}: the percentile interval of the replicates, widened to hold the estimate where
    it falls outside (a skewed replicate distribution; `method` then says so)."""
    ci = percentile_ci(replicates, level)
    if np.isnan(ci[0]) or np.isnan(ci[1]):  # nothing to resample (audit.bootstrap 0)
        return {"value": float(value), "ci": None, "method": None}
    method = intervals.PERCENTILE
    if not np.isnan(value):
        if ci[0] - value > _TOLERANCE or value - ci[1] > _TOLERANCE:
            method = intervals.PERCENTILE_WIDENED
        ci = [min(ci[0], value), max(ci[1], value)]
    return {"value": float(value), "ci": ci, "method": method}


def _worst_cell(rows: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]], level: float) -> dict:
    """The largest |BA| over every cell: its median-unbiased estimate and test-inversion interval
    (utils/intervals.py `inversion`, distance max|.| from "no cell amplified"), the plug-in beside them.
    A maximum of noisy cells is biased upward, and at no amplification every resample's maximum lies
    above the estimate, so a percentile interval of the resampled maxima would not hold it."""
    nan = float("nan")
    if not rows:
        return {"value": nan, "ci": None, "method": None, "plug_in": nan}
    ba = np.concatenate([p_gen - p_train for _, p_train, p_gen, _ in rows])
    boots = np.concatenate([b for *_, b in rows], axis=-1)  # (n_boot, classes x groups)
    plug_in = float(np.abs(ba).max())
    if len(boots) == 0:
        return {"value": plug_in, "ci": None, "method": None, "plug_in": plug_in}
    p_gen_all = np.concatenate([p_gen for *_, p_gen, _ in rows])
    value, ci = intervals.worst_coordinate(ba, boots - p_gen_all, level)
    return {"value": value, "ci": list(ci), "method": intervals.INVERSION, "plug_in": plug_in}


def wang_russakovsky(p_train: np.ndarray, p_gen: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Directional BiasAmp T->A (Wang & Russakovsky 2021, task = class, attribute = group): the mean over
    cells of y_ac * D_ac + (1 - y_ac) * (-D_ac), D = p_gen(a|c) - p_train(a|c), y = `positive`
    (p_train(a, c) > p_train(a) p_train(c)). p_train, positive: (classes, groups); p_gen: (..., classes,
    groups), so replicates are computed in one call."""
    delta = p_gen - p_train
    return np.where(positive, delta, -delta).mean(axis=(-2, -1))


def zhao(p_train: np.ndarray, p_gen: np.ndarray, over: np.ndarray) -> np.ndarray:
    """Mean bias amplification (Zhao et al. 2017, object = class, gender = group): the sum of
    b~(o, g) - b*(o, g) over the cells where `over` (b*(o, g) > 1/|G|), divided by the number of classes.
    Shapes as in `wang_russakovsky`."""
    return np.where(over, p_gen - p_train, 0.0).sum(axis=(-2, -1)) / p_train.shape[-2]


def bias_amplification(
    per_class: dict[int, Shares],
    train_labels: np.ndarray,
    train_attr: np.ndarray,
    class_names: list[str],
    group_names: list[str],
    *,
    correct_errors: bool,
    level: float,
) -> dict:
    """Per-cell BA with bootstrap intervals, from the class-conditional shares of
    `fairness.stratified_shares`, the two papers' aggregates over the classes that have generated
    images, and the largest |BA| and where it is."""
    k = len(group_names)
    train_labels = np.asarray(train_labels, dtype=np.int64)
    train_attr = np.asarray(train_attr, dtype=np.int64)
    # Training counts n(c, a), exact integers, so the strict comparisons below are exact too.
    joint = np.zeros((len(class_names), k), dtype=np.int64)
    np.add.at(joint, (train_labels, train_attr), 1)
    n_c, n_a, n = joint.sum(1), joint.sum(0), joint.sum()
    cells: list[dict] = []
    rows: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []  # (class, p_train, p_gen, replicates)
    for c, sh in sorted(per_class.items()):
        if sh.n == 0:
            continue
        p_train = distribution(train_attr[train_labels == c], k)
        p_gen, boots = (sh.corrected, sh.boot_corrected) if correct_errors else (sh.raw, sh.boot_raw)
        rows.append((c, p_train, p_gen, boots))
        ba, ba_boot = p_gen - p_train, boots - p_train
        for a, aname in enumerate(group_names):
            cell = _with_interval(float(ba[a]), ba_boot[:, a], level)
            ci = cell["ci"]
            cells.append(
                {
                    "class": class_names[c],
                    "group": aname,
                    "n_gen": sh.n,
                    "p_train": float(p_train[a]),
                    "p_gen_raw": float(sh.raw[a]),
                    "p_gen": float(p_gen[a]),
                    "ba": float(ba[a]),
                    "ci": ci,
                    "method": cell["method"],
                    "clear_of_zero": ci is not None and bool(ci[0] > 0 or ci[1] < 0),
                    "confusion": sh.correction,
                }
            )
    worst = max(cells, key=lambda r: abs(r["ba"])) if cells else None
    nan = float("nan")
    if rows:
        classes = [r[0] for r in rows]
        p_train_t = np.stack([r[1] for r in rows])
        p_gen_t = np.stack([r[2] for r in rows])
        boots_t = np.stack([r[3] for r in rows], axis=-2)  # (n_boot, classes, groups)
        positive = (joint * n)[classes] > np.outer(n_c, n_a)[classes]
        over = joint[classes] * k > n_c[classes, None]
        wr = _with_interval(
            float(wang_russakovsky(p_train_t, p_gen_t, positive)),
            wang_russakovsky(p_train_t, boots_t, positive),
            level,
        )
        zh = _with_interval(float(zhao(p_train_t, p_gen_t, over)), zhao(p_train_t, boots_t, over), level)
        zh["n_cells"] = int(over.sum())
    else:
        wr = {"value": nan, "ci": None, "method": None}
        zh = {"value": nan, "ci": None, "method": None, "n_cells": 0}
    wr["n_cells"] = len(cells)
    return {
        "corrected": correct_errors,
        "cells": cells,
        "wang_russakovsky": wr,
        "zhao": zh,
        "max_abs_ba": {
            **_worst_cell(rows, level),
            "class": worst["class"] if worst else None,
            "group": worst["group"] if worst else None,
            "cell_ci": worst["ci"] if worst else None,
            "clear_of_zero": worst["clear_of_zero"] if worst else False,
        },
        "n_cells_clear_of_zero": int(sum(r["clear_of_zero"] for r in cells)),
    }
