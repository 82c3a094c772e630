"""reports/headline.json (the report stage: pipelines/report.py): the run's headline numbers in one flat
file of at most 30 short keys, the one file DVC declares as metrics (`dvc metrics show`, `dvc exp show`,
`dvc metrics diff`). Every detailed result file stays a plain DVC output.

Each key is spelled here, once, as a field. A number measured in a feature space names the space in its
key (`fid_evaluator`, or `fid_inception` when eval.feature is inception: the one space's keys are present,
as in quality.json), and a number with a real-vs-real floor stands beside it (`<key>_floor`). A value is
null where it does not apply to the model (quality.json's `not_applicable`), where its stage did not run
or was switched off, or where it was not measured (NaN in the detailed file).
"""

from __future__ import annotations

import math
from typing import ClassVar

from pydantic import model_validator

from diffaudit.results.base import FieldError, ResultFile
from diffaudit.results.files import RunResults
from diffaudit.results.quality import SPACES, FeatureSpace, SpaceKeyed, space_key
from diffaudit.results.release import ReleaseSummary

MAX_KEYS = 30  # what `dvc metrics show` and `dvc exp show` stay readable with


def ratio_key(space: FeatureSpace) -> str:
    """FID over its floor, named after the space (fid_evaluator_ratio)."""
    return f"{space_key('fid', space)}_ratio"


RATIO_KEYS = {s: ratio_key(s) for s in SPACES}


def _num(value: float | None) -> float | None:
    """A finite number, or None (NaN and infinities are 'not measured' in a headline)."""
    return None if value is None or not math.isfinite(value) else float(value)


def _ratio(value: float | None, floor: float | None) -> float | None:
    return _num(value / floor) if value is not None and floor else None


class HeadlineResult(SpaceKeyed, ResultFile):
    FILE: ClassVar[str] = "headline.json"
    SPACE_QUANTITIES: ClassVar[tuple[str, ...]] = ("fid", "fid_floor", "kid", "kid_floor")

    # Quality (evaluate stage, quality.json), in its feature space, each beside its real-vs-real floor.
    fid_evaluator: float | None = None
    fid_inception: float | None = None
    fid_evaluator_floor: float | None = None
    fid_inception_floor: float | None = None
    fid_evaluator_ratio: float | None = None  # FID / its floor
    fid_inception_ratio: float | None = None
    kid_evaluator: float | None = None
    kid_inception: float | None = None
    kid_evaluator_floor: float | None = None
    kid_inception_floor: float | None = None
    precision: float | None
    precision_floor: float | None
    recall: float | None
    recall_floor: float | None
    cond_acc: float | None  # conditional accuracy (null: not applicable, an unconditional model)
    cond_acc_floor: float | None  # the evaluator's accuracy on real test images
    cas: float | None  # classification accuracy score (null: eval.cas off, or not applicable)
    cas_floor: float | None
    # Fairness (audit stage, fairness.json `headline`): the gated statistic of each, worst attribute.
    fairness_disc: float | None
    bias_amp: float | None  # |BA| of audit.gates.bias_amplification_measure
    group_gap: float | None  # worst-group gap
    # Privacy (privacy.json), the worse space; the floor: the same test on real held-out images.
    memorized: float | None  # share with d1/d2 below audit.memorization_ratio
    memorized_floor: float | None
    near_copy: float | None  # share flagged by the DCR near-copy test
    near_copy_floor: float | None  # its false-alarm rate on held-out images
    mia_auc: float | None  # membership inference headline AUC (chance: 0.5; null: membership off)
    # Release (gates.json, the registry's decision).
    gates_passed: bool | None  # null: the audit did not run
    gates_failed: int | None
    promoted: bool
    # Sampler study: the fewest network evaluations reaching its target (null: none reaches it).
    study_sampler: str | None
    study_nfe: int | None
    # Explain: median sampling step after which the class no longer changes, of `explain_steps`.
    class_commit: float | None
    explain_steps: int | None

    @model_validator(mode="after")
    def _ratio_in_space(self) -> HeadlineResult:
        key = ratio_key(self.space())
        stray = next((k for k in RATIO_KEYS.values() if k != key and k in self.model_fields_set), None)
        if stray is not None:
            raise FieldError(stray, f"a ratio of another feature space than {self.space()}")
        if key not in self.model_fields_set:
            raise FieldError(key, "Field required")
        return self

    @classmethod
    def of(cls, results: RunResults, summary: ReleaseSummary) -> HeadlineResult:
        """The headline of a run's result files and its release summary (absent files: null values)."""
        q = results.quality
        quality: dict[str, float | None] = {}
        if q is not None:
            space = q.feature_space
            fid, floor = q.space_value("fid"), q.space_value("fid_floor")
            quality = {
                space_key("fid", space): _num(fid),
                space_key("fid_floor", space): _num(floor),
                ratio_key(space): _ratio(fid, floor),
                space_key("kid", space): _num(q.space_value("kid")),
                space_key("kid_floor", space): _num(q.space_value("kid_floor")),
                "precision": _num(q.precision),
                "precision_floor": _num(q.precision_floor),
                "recall": _num(q.recall),
                "recall_floor": _num(q.recall_floor),
                "cond_acc": _num(q.conditional_accuracy),
                "cond_acc_floor": None
                if q.conditional_accuracy is None
                else _num(q.conditional_accuracy_floor),
                "cas": _num(q.cas),
                "cas_floor": _num(q.cas_floor),
            }
        else:
            quality = {space_key(k, "evaluator"): None for k in cls.SPACE_QUANTITIES}
            quality |= dict.fromkeys((ratio_key("evaluator"), "precision", "precision_floor", "recall"), None)
            quality |= dict.fromkeys(("recall_floor", "cond_acc", "cond_acc_floor", "cas", "cas_floor"), None)
        f = results.fairness.headline if results.fairness is not None else None
        fairness = {
            "fairness_disc": _num(f.fairness_discrepancy.value) if f else None,
            "bias_amp": _num(f.bias_amplification.value) if f else None,
            "group_gap": _num(f.worst_group_gap.value) if f else None,
        }
        p = results.privacy
        mem = max(p.memorization.values(), key=lambda s: s.fraction, default=None) if p else None
        near = max(p.near_copies.values(), key=lambda s: s.fraction.value, default=None) if p else None
        privacy = {
            "memorized": _num(mem.fraction) if mem else None,
            "memorized_floor": _num(mem.real_test_floor.fraction) if mem else None,
            "near_copy": _num(near.fraction.value) if near else None,
            "near_copy_floor": _num(near.heldout.false_alarm.value) if near else None,
            "mia_auc": _num(p.membership.headline.auc.value) if p and p.membership else None,
        }
        g, study, ex = results.gates, results.sampler_study, results.explain
        best = study.best if study is not None else None
        commit = ex.commitment.per_head.get("class") if ex is not None else None
        return cls(
            **quality,
            **fairness,
            **privacy,
            gates_passed=g.passed if g is not None else None,
            gates_failed=len(g.failed) if g is not None else None,
            promoted=summary.promoted,
            study_sampler=best.sampler if best else None,
            study_nfe=best.nfe if best else None,
            class_commit=_num(commit.median) if commit else None,
            explain_steps=ex.sampler.steps if ex is not None else None,
        )
