"""Bias amplification: BA(a|c) = p_gen(a|c) - p_train(a|c) for every class c and attribute value a.

Positive: the model makes group a more common within class c than its training data did; negative:
rarer. A model that reproduces a skewed training set faithfully has BA ~ 0 (the skew is the data's,
and representation against a uniform reference is what shows it). p_gen(a|c) is corrected with the
evaluator's confusion matrix on real test images of class c when that class has enough of them in every
group, else with the pooled matrix. The headline is the largest |BA|; being a maximum over many noisy
cells it is biased upwards (winner's curse), which is why each cell carries its own interval.
"""

from __future__ import annotations

import numpy as np

from diffaudit.audit.fairness import Shares, distribution, percentile_ci


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
    `fairness.stratified_shares`, plus the headline max |BA| and where it is."""
    k = len(group_names)
    cells: list[dict] = []
    n_boot = len(next(iter(per_class.values())).boot_raw) if per_class else 0
    boot_abs_max = np.zeros(n_boot)
    for c, sh in sorted(per_class.items()):
        if sh.n == 0:
            continue
        p_train = distribution(train_attr[train_labels == c], k)
        p_gen, boots = (sh.corrected, sh.boot_corrected) if correct_errors else (sh.raw, sh.boot_raw)
        ba, ba_boot = p_gen - p_train, boots - p_train
        if n_boot:
            boot_abs_max = np.maximum(boot_abs_max, np.abs(ba_boot).max(-1))
        for a, aname in enumerate(group_names):
            ci = percentile_ci(ba_boot[:, a], level)
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
                    "clear_of_zero": bool(ci[0] > 0 or ci[1] < 0),
                    "confusion": sh.correction,
                }
            )
    worst = max(cells, key=lambda r: abs(r["ba"])) if cells else None
    return {
        "corrected": correct_errors,
        "cells": cells,
        "max_abs_ba": {
            "value": abs(worst["ba"]) if worst else float("nan"),
            "ci": percentile_ci(boot_abs_max, level) if n_boot else [float("nan")] * 2,
            "class": worst["class"] if worst else None,
            "group": worst["group"] if worst else None,
            "cell_ci": worst["ci"] if worst else None,
            "clear_of_zero": worst["clear_of_zero"] if worst else False,
        },
        "n_cells_clear_of_zero": int(sum(r["clear_of_zero"] for r in cells)),
    }
