"""What one pipeline execution decided, as its MLflow parent run shows it: the headline metrics (short,
stable names), the release decision as a tag (a column of the runs table), and a one-paragraph
description (`mlflow.note.content`); the same verdict in one console line at the end of `make repro`.

Read from the typed result files (metrics/*.json, reports/release.json), never from raw JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from diffaudit.results import GatesResult, QualityResult, ReleaseSummary, RunResults
from diffaudit.utils.format import fmt_num

DECISION_TAG = "release.decision"  # the report run carries the same tag
NOTE_TAG = "mlflow.note.content"  # MLflow's run description

# release.decision values
CHAMPION, REFUSED, REVOKED, NOT_REGISTERED, FAILED = (
    "champion",
    "refused",
    "revoked",
    "not registered",
    "failed",
)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def fid_over_floor_name(quality: QualityResult) -> str:
    """`fid_evaluator_over_floor`: FID lives in a feature space, so the name says which."""
    return f"fid_{quality.feature_space}_over_floor"


def quality_headline(quality: QualityResult) -> dict[str, float]:
    """FID (and its floor, and their ratio), KID, precision/recall, density/coverage, conditional accuracy
    and CAS where they apply: the numbers a reviewer compares runs on, no settings or interval ends."""
    fs = quality.feature_space
    fid, floor = quality.space_value("fid"), quality.space_value("fid_floor")
    out: dict[str, float | None] = {
        f"fid_{fs}": fid,
        f"fid_{fs}_floor": floor,
        f"kid_{fs}": quality.space_value("kid"),
        "precision": quality.precision,
        "recall": quality.recall,
        "density": quality.density,
        "coverage": quality.coverage,
        "conditional_accuracy": quality.conditional_accuracy,  # None (not logged) when not applicable
        "cas": quality.cas,
    }
    if _finite(fid) and _finite(floor) and floor > 0:
        out[fid_over_floor_name(quality)] = fid / floor
    return {k: float(v) for k, v in out.items() if _finite(v)}


def quality_metrics(quality: QualityResult) -> dict[str, float]:
    """What the evaluate stage logs: the headline, each beside its real-vs-real floor (`<name>_floor`),
    FID's bias-corrected estimate, and conditional accuracy per class (`conditional_accuracy.<class>`).
    Settings, sample sizes and interval ends stay in quality.json (an artifact of the run)."""
    fs = quality.feature_space
    floors: dict[str, float | None] = {
        f"fid_{fs}_debiased": quality.space_value("fid_debiased"),
        f"kid_{fs}_floor": quality.space_value("kid_floor"),
        "precision_floor": quality.precision_floor,
        "recall_floor": quality.recall_floor,
        "density_floor": quality.density_floor,
        "coverage_floor": quality.coverage_floor,
        "cas_floor": quality.cas_floor,
    }
    if quality.conditional_accuracy is not None:
        floors["conditional_accuracy_floor"] = quality.conditional_accuracy_floor
        floors |= {f"conditional_accuracy.{c}": v for c, v in quality.conditional_accuracy_per_class.items()}
    return quality_headline(quality) | {k: float(v) for k, v in floors.items() if _finite(v)}


def gate_metrics(gates: GatesResult) -> dict[str, float]:
    """gates_passed, and gate.<name>.value / gate.<name>.passed for every gate that applies."""
    out = {"gates_passed": float(gates.passed)}
    for name, g in gates.applicable().items():
        out[f"gate.{name}.passed"] = float(bool(g.passed))
        if g.measured:
            out[f"gate.{name}.value"] = float(g.value)  # type: ignore[arg-type]
    return out


def headline_metrics(results: RunResults) -> dict[str, float]:
    """The parent run's metrics: quality's headline (FID over floor named by its feature space, conditional
    accuracy when it applies) and each gate's value and pass."""
    out: dict[str, float] = {}
    if results.quality is not None:
        q = results.quality
        head = quality_headline(q)
        keep = (fid_over_floor_name(q), f"fid_{q.feature_space}", f"fid_{q.feature_space}_floor")
        out |= {k: v for k, v in head.items() if k in keep + ("conditional_accuracy", "cas")}
    if results.gates is not None:
        out |= gate_metrics(results.gates)
    return out


@dataclass
class Verdict:
    decision: str  # release.decision: champion | refused | revoked | not registered | failed
    line: str  # the verdict in one console line
    description: str  # one paragraph (markdown), the parent run's description
    metrics: dict[str, float] = field(default_factory=dict)
    short: str = ""  # the verdict in a few words, for the run's name ("RELEASED v3", "FAILED")

    @property
    def tags(self) -> dict[str, str]:
        return {DECISION_TAG: self.decision, NOTE_TAG: self.description}


def decision_of(release: ReleaseSummary) -> str:
    if release.revoked:
        return REVOKED
    if release.record is None:
        return NOT_REGISTERED
    return CHAMPION if release.promoted else REFUSED


def quality_sentence(results: RunResults) -> str:
    q = results.quality
    if q is None:
        return "Quality was not measured."
    fs = q.feature_space
    fid, floor = q.space_value("fid"), q.space_value("fid_floor")
    parts = []
    if _finite(fid) and _finite(floor) and floor > 0:
        parts.append(
            f"FID in the {fs} feature space is {fid / floor:.2f}x its real-vs-real floor "
            f"({fmt_num(fid)} against {fmt_num(floor)}, n = {q.n_images})"
        )
    if q.conditional_accuracy is not None:
        parts.append(f"conditional accuracy {fmt_num(q.conditional_accuracy)}")
    elif "conditional_accuracy" in q.not_applicable:
        parts.append(f"conditional accuracy {q.not_applicable['conditional_accuracy']}")
    return (parts[0][0].upper() + "; ".join(parts)[1:] + ".") if parts else ""


def gates_sentence(gates: GatesResult | None) -> str:
    if gates is None:
        return "The audit gates did not run."
    applicable = gates.applicable()
    na = f" ({', '.join(gates.not_applicable)} not applicable)" if gates.not_applicable else ""
    if gates.passed:
        return f"All {len(applicable)} applicable audit gates pass{na}."
    failed = ", ".join(gates.failed)
    return f"{len(gates.failed)} of {len(applicable)} applicable audit gates fail: {failed}{na}."


def verdict(
    results: RunResults,
    release: ReleaseSummary | None,
    returncode: int,
    pipeline_id: str,
    report_url: str | None = None,
) -> Verdict:
    """The verdict of pipeline execution `pipeline_id` (dvc repro exited `returncode`). A failed execution
    decided nothing: files left on disk by an earlier run are not reported as its outcome. After a
    successful one every output agrees with dvc.lock, so reports/release.json is the current verdict even
    when the report stage itself was up to date."""
    if returncode != 0 or release is None:
        why = f"dvc repro exited {returncode}" if returncode != 0 else "no reports/release.json"
        line = f"FAILED: no release decision ({why}; the failing stage's error is above)"
        if returncode == 0:
            line = f"no release decision ({why}: the report stage has not run)"
        description = (
            f"**No release decision.** Pipeline execution `{pipeline_id}` reached no verdict: {why}. "
            "Its stage runs show how far it got; result files left by an earlier run are not reported "
            "as this one's."
        )
        decision = FAILED if returncode != 0 else NOT_REGISTERED
        return Verdict(decision, line, description, short=decision.upper())
    record = release.record
    decision = decision_of(release)
    metrics = headline_metrics(results) | {"promoted": float(release.promoted and not release.revoked)}
    if record is not None:
        model = f"{record.model_name} v{record.candidate_version}"
        head = {
            CHAMPION: f"**RELEASED: {model} is the champion.**",
            REFUSED: f"**REFUSED: {model} stays candidate**"
            + (f" (champion remains v{record.champion_version})." if record.champion_version else "."),
            REVOKED: f"**REVOKED: {model} was promoted, then refused by a later check.**",
        }[decision]
        reasons = list(release.revoked or []) + list(record.reasons)
    else:
        model = "the model"
        head = "**NOT REGISTERED: no release decision** (release.register_model is off, or no run)."
        reasons = []
    because = f" The release rule: {'; '.join(reasons)}." if reasons else ""
    link = f" The audit report: [audit.html]({report_url})" if report_url else ""
    attached = " (attached to this run as `audit.html`)." if report_url else ""
    description = (
        " ".join(s for s in (head, gates_sentence(results.gates), quality_sentence(results)) if s)
        + because
        + link
        + attached
    )
    word = {CHAMPION: "RELEASED", REFUSED: "REFUSED", REVOKED: "REVOKED", NOT_REGISTERED: "NOT REGISTERED"}
    gates = results.gates
    if decision == CHAMPION or not (gates and gates.failed):
        why = reasons[0] if reasons else gates_sentence(gates)
        more = len(reasons) - 1
    else:  # the failed gates by name, then how many other reasons (a regression, a revocation)
        why = f"gates failed: {', '.join(gates.failed)}"
        more = len([r for r in reasons if not r.startswith("gate ")])
    why += f"; {more} more reason{'s' * (more > 1)} in the report" if more > 0 else ""
    line = f"{word[decision]}: {model}" + (f" is champion ({why})" if decision == CHAMPION else f" ({why})")
    version = f" v{record.candidate_version}" if record is not None else ""
    return Verdict(decision, line, description, metrics, short=f"{word[decision]}{version}")
