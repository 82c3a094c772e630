"""Release gates: each measured value against its threshold in conf/audit/, one verdict per gate.

A gate whose threshold is null is skipped; a gate whose value could not be measured (NaN, a missing
quality file) fails, since a release cannot pass on a number nobody took. A gate that does not apply to
the model (conditional accuracy of an unconditional model: results/applicability.py) is neither passed nor
failed: its verdict is null with the reason, and the release rests on the gates that apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffaudit.config.audit_schema import GatesCfg
from diffaudit.results.fairness import FairnessReport
from diffaudit.results.gates import CROSSING_NOTE, GateEntry, GatesResult, crosses
from diffaudit.results.privacy import PrivacyResult
from diffaudit.results.quality import QualityResult, space_key

# gate name -> (threshold key in GatesCfg, direction: the value must be "<=" or ">=" the threshold)
GATES: dict[str, tuple[str, str]] = {
    "conditional_accuracy": ("min_conditional_accuracy", ">="),
    "fid_over_floor": ("max_fid_over_floor", "<="),
    "fairness_discrepancy": ("max_fairness_discrepancy", "<="),
    "bias_amplification": ("max_abs_bias_amplification", "<="),
    "worst_group_gap": ("max_worst_group_gap", "<="),
    "memorized_fraction": ("max_memorized_fraction", "<="),
    "near_copy_fraction": ("max_near_copy_fraction", "<="),
    "mia_auc": ("max_mia_auc", "<="),
}


# What a gate reads: (value, what it is) or (value, what it is, the interval of the gated statistic).
Measured = tuple[float | None, str] | tuple[float | None, str, list[float] | None]


@dataclass(frozen=True)
class NotApplicable:
    """What a gate reads instead of a measurement when it does not apply to the model."""

    reason: str


# How a gate's `source` names the bias amplification measure it read (audit.gates.bias_amplification_measure).
BA_MEASURE_SOURCE: dict[str, str] = {
    "worst_cell": "worst cell |BA|",
    "wang_russakovsky": "|Wang & Russakovsky directional BiasAmp|",
    "zhao": "|Zhao et al. mean bias amplification|",
}


@dataclass(frozen=True)
class Verdict:
    gate: str
    value: float | None
    threshold: float
    op: str
    passed: bool | None  # None: the gate does not apply (`not_applicable` says why)
    source: str  # what was measured (e.g. "thickness, corrected, fd_l2, estimate")
    ci: list[float] | None = None  # the interval of the gated statistic, where it has one
    not_applicable: str | None = None

    @property
    def crosses(self) -> bool | None:
        """Whether the interval reaches both sides of the threshold: the verdict rests on the estimate
        (None: no interval)."""
        return crosses(self.ci, self.threshold)

    def message(self) -> str:
        if self.not_applicable is not None:
            return f"gate {self.gate} {self.not_applicable} (neither passed nor failed)"
        v = "not measured" if self.value is None or math.isnan(self.value) else f"{self.value:.4g}"
        state = "passed" if self.passed else "FAILED"
        note = f"; {CROSSING_NOTE[self.passed]}" if self.crosses else ""
        return (
            f"gate {self.gate} {state}: value {v} (must be {self.op} {self.threshold:g}; {self.source}){note}"
        )


def evaluate_gates(cfg: GatesCfg, measured: dict[str, Measured | NotApplicable]) -> list[Verdict]:
    """One verdict per configured gate; `measured` maps gate name -> (value, what it is[, interval]), or
    `NotApplicable`."""
    verdicts = []
    for gate, (key, op) in GATES.items():
        threshold = getattr(cfg, key)
        if threshold is None:
            continue
        m = measured.get(gate)
        if isinstance(m, NotApplicable):
            verdicts.append(Verdict(gate, None, float(threshold), op, None, m.reason, None, m.reason))
            continue
        value, source, ci = (*measured.get(gate, (None, "not measured")), None)[:3]
        ok = value is not None and not math.isnan(value)
        if ok:
            ok = value >= threshold if op == ">=" else value <= threshold
        verdicts.append(Verdict(gate, value, float(threshold), op, bool(ok), source, ci))
    return verdicts


def report(verdicts: list[Verdict]) -> GatesResult:
    """gates.json: overall verdict, the failing gates, and every verdict with its value."""
    return GatesResult(
        passed=all(v.passed is not False for v in verdicts),
        failed=[v.gate for v in verdicts if v.passed is False],
        not_applicable=[v.gate for v in verdicts if v.passed is None],
        gates={
            v.gate: GateEntry(
                value=v.value,
                threshold=v.threshold,
                op=v.op,
                passed=v.passed,
                source=v.source,
                ci=v.ci,
                ci_crosses_threshold=None if v.passed is None else v.crosses,
                not_applicable=v.not_applicable,
            )
            for v in verdicts
        },
    )


def measurements(
    fairness: FairnessReport, privacy: PrivacyResult, quality: QualityResult | None
) -> dict[str, Measured | NotApplicable]:
    """What each gate reads: the fairness headline, the worse memorization space (for the d1/d2 and the
    near-copy test apart), quality.json's floors (no quality file: the quality gates are not measured, so
    they fail), the membership headline's AUC (membership inference off: not measured)."""
    head = fairness.headline
    ba = head.bias_amplification
    out: dict[str, Measured | NotApplicable] = {
        gate: (h.value, f"{h.where}, {what}{head.estimate}, {head.statistic}", h.gated_ci())
        for gate, h, what in (
            ("fairness_discrepancy", head.fairness_discrepancy, ""),
            ("bias_amplification", ba, BA_MEASURE_SOURCE[ba.measure] + ", "),
            ("worst_group_gap", head.worst_group_gap, ""),
        )
    }
    spaces = privacy.memorization
    if spaces:
        worst = max(spaces, key=lambda s: spaces[s].fraction)
        out["memorized_fraction"] = (spaces[worst].fraction, f"{worst} space, d1/d2 < {privacy.ratio:.3g}")
    near = privacy.near_copies
    if near:
        worst = max(near, key=lambda s: near[s].fraction.value)
        n = near[worst]
        out["near_copy_fraction"] = (
            n.fraction.value,
            f"{worst} space, DCR < {n.threshold:.3g} ({n.percentile:g} % of held-out DCRs)",
            list(n.fraction.ci),
        )
    if quality is not None:
        ci = quality.conditional_accuracy_ci
        out["conditional_accuracy"] = (
            NotApplicable(quality.not_applicable["conditional_accuracy"])
            if quality.conditional_accuracy is None
            else (quality.conditional_accuracy, QualityResult.FILE, None if ci is None else [ci.low, ci.high])
        )
        fid, floor = (space_key(q, quality.feature_space) for q in ("fid", "fid_floor"))
        excess = quality.space_value("fid") - quality.space_value("fid_floor")
        out["fid_over_floor"] = (excess, f"{fid} - {floor}, {QualityResult.FILE}")
    if (membership := privacy.membership) is not None:
        h = membership.headline
        way = " reversed" if h.reversed else ""
        source = f"membership {h.attack}{way} at t={h.timestep}, held-out half"
        out["mia_auc"] = (h.auc.value, source, None if h.auc.ci is None else list(h.auc.ci))
    return out
