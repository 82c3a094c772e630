"""The release rule as pure functions: compare a candidate's metrics with the champion's, and decide.

`champion` moves to a candidate only when every gate passes and it is no worse than the current
champion beyond the configured tolerance. No MLflow here: release/promote.py applies the decision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from diffaudit.config.release_schema import CompareMetric, ReleaseCfg
from diffaudit.results.files import measured_by_evaluator
from diffaudit.results.gates import GatesResult
from diffaudit.results.release import Comparison
from diffaudit.utils.format import fmt_num


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    comparisons: list[Comparison] = field(default_factory=list)


def allowed_bound(spec: CompareMetric, reference: float) -> float:
    """The worst value the candidate may have: the reference minus (max) or plus (min) the slack."""
    slack = spec.tolerance * abs(reference) if spec.relative else spec.tolerance
    return reference - slack if spec.mode == "max" else reference + slack


def compare(
    candidate: dict[str, float | None],
    reference: dict[str, float | None],
    spec: list[CompareMetric],
    against: str = "champion",
    same_space: bool = True,
    not_applicable: Mapping[str, str] | None = None,
) -> list[Comparison]:
    """Judge each configured metric. A candidate without a configured metric fails it (we cannot show
    it is no worse); a reference without it passes with a note (nothing to be worse than), and so does
    a reference measured by another evaluator (`same_space=False`) on every metric that depends on the
    evaluator (results.files.measured_by_evaluator: all but the inception-space quality keys): those
    numbers live in another feature space, so a difference would say nothing about the models. The
    gates still judge the candidate on its own. A metric that does not apply to the candidate
    (`not_applicable`: metric -> why) is not compared and does not block."""
    out = []
    for s in spec:
        c, r = candidate.get(s.metric), reference.get(s.metric)
        tol = f"{s.tolerance:g}{' relative' if s.relative else ''}"

        def judged(
            ok: bool, note: str, s: CompareMetric = s, c: float | None = c, r: float | None = r
        ) -> Comparison:
            return Comparison(
                metric=s.metric,
                mode=s.mode,
                tolerance=s.tolerance,
                relative=s.relative,
                candidate=c,
                reference=r,
                ok=ok,
                note=note,
            )

        if s.metric in (not_applicable or {}):
            out.append(judged(True, f"{s.metric}: {(not_applicable or {})[s.metric]}, not compared"))
            continue
        if c is None or not math.isfinite(c):
            out.append(judged(False, f"{s.metric}: the candidate has no value"))
            continue
        if not same_space and measured_by_evaluator(s.metric):
            out.append(
                judged(
                    True,
                    f"{s.metric}: not compared: {against} was measured by another evaluator "
                    "(another feature space)",
                )
            )
            continue
        if r is None or not math.isfinite(r):
            out.append(judged(True, f"{s.metric}: {against} has no value, not compared"))
            continue
        bound = allowed_bound(s, r)
        ok = c >= bound if s.mode == "max" else c <= bound
        word = "higher" if s.mode == "max" else "lower"
        verdict = "within tolerance" if ok else "regressed"
        out.append(
            judged(
                ok,
                f"{s.metric} {verdict}: {fmt_num(c)} vs {against} {fmt_num(r)} "
                f"({word} is better; worst allowed {fmt_num(bound)}, tolerance {tol})",
            )
        )
    return out


def decide(
    gates: GatesResult | None,
    comparisons: list[Comparison],
    champion_version: str | None,
    release: ReleaseCfg,
) -> Decision:
    """Promote only when the gates pass (or are not required and absent: `gates` None, the audit has not
    run) and nothing regressed. A gate that does not apply to the model (an unconditional model's
    conditional accuracy) neither blocks nor counts: the verdict rests on the gates that apply."""
    reasons: list[str] = []
    if gates is None:
        if release.require_gates:
            reasons.append(f"gates not run: no {GatesResult.FILE} (release.require_gates)")
    elif not gates.passed:
        reasons += [entry.describe(name) for name, entry in gates.failed_gates().items()]
    regressions = [c.note for c in comparisons if not c.ok]
    reasons += regressions
    if reasons:
        return Decision(False, reasons, comparisons)
    gate_text = "gates not required"
    if gates is not None:
        gate_text = f"all {len(gates.applicable())} applicable gates pass"
        if gates.not_applicable:
            gate_text += f" ({', '.join(gates.not_applicable)} not applicable)"
    if champion_version is None:
        return Decision(True, [f"{gate_text}; no champion yet"], comparisons)
    return Decision(
        True,
        [
            f"{gate_text}; no regression beyond tolerance against champion "
            f"v{champion_version} ({len(comparisons)} metrics)"
        ],
        comparisons,
    )
