"""reports/headline.json (the report stage: pipelines/report.py): the run's headline numbers in one flat
file, the one file DVC declares as metrics (`dvc metrics show`, `dvc exp show`, `dvc metrics diff`).
Every detailed result file (metrics/*.json, reports/release.json) stays a plain DVC output.

`dvc metrics show` prints a metrics file as one row with a column per key, so the headline is what fits
200 columns: FID beside its floor, conditional accuracy beside its floor, the number each fairness and
privacy gate reads, the gates failed and the release decision (12 short keys). KID, precision/recall,
density/coverage, CAS, the sampler study and explainability stay in their files and the report.

Each key is spelled here, once, as a field. A number measured in a feature space names the space in its
key (`fid_evaluator`, or `fid_inception` when eval.feature is inception: the one space's keys are present,
as in quality.json), and a number with a real-vs-real floor stands beside it (`<key>_floor`). A value is
null where it does not apply to the model (quality.json's `not_applicable`), where its stage did not run
or was switched off, or where it was not measured (NaN in the detailed file).
"""

from __future__ import annotations

import math
from typing import ClassVar

from diffaudit.results.base import ResultFile
from diffaudit.results.files import RunResults
from diffaudit.results.quality import SpaceKeyed, space_key
from diffaudit.results.release import ReleaseSummary

MAX_KEYS = 30  # the most a headline may grow to (today 12: `dvc metrics show` must fit 200 columns)


def _num(value: float | None) -> float | None:
    """A finite number, or None (NaN and infinities are 'not measured' in a headline)."""
    return None if value is None or not math.isfinite(value) else float(value)


class HeadlineResult(SpaceKeyed, ResultFile):
    FILE: ClassVar[str] = "headline.json"
    SPACE_QUANTITIES: ClassVar[tuple[str, ...]] = ("fid", "fid_floor")

    # Quality (quality.json), in its feature space, beside its real-vs-real floor.
    fid_evaluator: float | None = None
    fid_inception: float | None = None
    fid_evaluator_floor: float | None = None
    fid_inception_floor: float | None = None
    cond_acc: float | None  # conditional accuracy (null: not applicable, an unconditional model)
    cond_acc_floor: float | None  # the evaluator's accuracy on real test images
    # Fairness (fairness.json `headline`): the number each gate reads, worst attribute.
    fair_disc: float | None  # fairness discrepancy of the generated shares
    bias_amp: float | None  # |bias amplification| of audit.gates.bias_amplification_measure
    group_gap: float | None  # worst-group gap
    # Privacy (privacy.json), the worse space.
    memorized: float | None  # share of generated images with d1/d2 below audit.memorization_ratio
    near_copy: float | None  # share flagged by the DCR near-copy test (~copy_percentile % by chance)
    mia_auc: float | None  # membership inference headline AUC (chance: 0.5; null: membership off)
    # Release: gates failed (gates.json; null: the audit did not run), and the registry's decision.
    gates_failed: int | None
    promoted: bool

    @classmethod
    def of(cls, results: RunResults, summary: ReleaseSummary) -> HeadlineResult:
        """The headline of a run's result files and its release summary (absent files: null values)."""
        q = results.quality
        if q is not None:
            space = q.feature_space
            acc = q.conditional_accuracy
            quality = {
                space_key("fid", space): _num(q.space_value("fid")),
                space_key("fid_floor", space): _num(q.space_value("fid_floor")),
                "cond_acc": _num(acc),
                "cond_acc_floor": None if acc is None else _num(q.conditional_accuracy_floor),
            }
        else:
            quality = {space_key(k, "evaluator"): None for k in cls.SPACE_QUANTITIES}
            quality |= {"cond_acc": None, "cond_acc_floor": None}
        f = results.fairness.headline if results.fairness is not None else None
        p, g = results.privacy, results.gates
        mem = max((s.fraction for s in p.memorization.values()), default=None) if p else None
        near = max((s.fraction.value for s in p.near_copies.values()), default=None) if p else None
        return cls(
            **quality,
            fair_disc=_num(f.fairness_discrepancy.value) if f else None,
            bias_amp=_num(f.bias_amplification.value) if f else None,
            group_gap=_num(f.worst_group_gap.value) if f else None,
            memorized=_num(mem),
            near_copy=_num(near),
            mia_auc=_num(p.membership.headline.auc.value) if p and p.membership else None,
            gates_failed=len(g.failed) if g is not None else None,
            promoted=summary.promoted,
        )
