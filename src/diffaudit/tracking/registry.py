"""The model registry's release rule: every run's model becomes a registered version with the alias
`candidate`; `champion` moves to it only when every gate passes and it is no worse than the current
champion beyond the configured tolerance. The decision and its reasons are kept with the version
(tags) so anyone can see later why a model was, or was not, released.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from diffaudit.config.release_schema import CompareMetric, ReleaseCfg
from diffaudit.config.schema import Config
from diffaudit.report.content import GateVerdict, fmt_num

CANDIDATE = "candidate"
CHAMPION = "champion"
METRIC_TAG = "diffaudit.metric."
FEATURE_SPACE_TAG = "diffaudit.feature_space"  # "<eval.feature>+evaluator:<md5>": who measured a version
MODEL_NAME_IN_RUN = "model"
SERVING_REQUIREMENTS = ("torch", "diffusers", "safetensors", "numpy", "pandas", "mlflow", "lightning", "pydantic",
                        "pyyaml", "tqdm")


@dataclass
class Comparison:
    """One configured metric of the candidate against a reference (the champion, or a baseline)."""

    metric: str
    mode: str
    tolerance: float
    relative: bool
    candidate: float | None
    reference: float | None
    ok: bool
    note: str


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    comparisons: list[Comparison] = field(default_factory=list)


def allowed_bound(spec: CompareMetric, reference: float) -> float:
    """The worst value the candidate may have: the reference minus (max) or plus (min) the slack."""
    slack = spec.tolerance * abs(reference) if spec.relative else spec.tolerance
    return reference - slack if spec.mode == "max" else reference + slack


def compare(candidate: dict[str, float | None], reference: dict[str, float | None],
            spec: list[CompareMetric], against: str = "champion", same_space: bool = True) -> list[Comparison]:
    """Judge each configured metric. A candidate without a configured metric fails it (we cannot show
    it is no worse); a reference without it passes with a note (nothing to be worse than), and so does
    a reference measured by another evaluator (`same_space=False`) on every metric the evaluator
    produces (all but the inception-space ones): those numbers live in another feature space, so a
    difference would say nothing about the models. The gates still judge the candidate on its own."""
    out = []
    for s in spec:
        c, r = candidate.get(s.metric), reference.get(s.metric)
        tol = f"{s.tolerance:g}{' relative' if s.relative else ''}"
        if c is None or not math.isfinite(c):
            out.append(Comparison(s.metric, s.mode, s.tolerance, s.relative, c, r, False,
                                  f"{s.metric}: the candidate has no value"))
            continue
        if not same_space and "inception" not in s.metric:  # all but inception-space numbers are the evaluator's
            out.append(Comparison(s.metric, s.mode, s.tolerance, s.relative, c, r, True,
                                  f"{s.metric}: not compared: {against} was measured by another evaluator "
                                  "(another feature space)"))
            continue
        if r is None or not math.isfinite(r):
            out.append(Comparison(s.metric, s.mode, s.tolerance, s.relative, c, r, True,
                                  f"{s.metric}: {against} has no value, not compared"))
            continue
        bound = allowed_bound(s, r)
        ok = c >= bound if s.mode == "max" else c <= bound
        word = "higher" if s.mode == "max" else "lower"
        verdict = "within tolerance" if ok else "regressed"
        out.append(Comparison(
            s.metric, s.mode, s.tolerance, s.relative, c, r, ok,
            f"{s.metric} {verdict}: {fmt_num(c)} vs {against} {fmt_num(r)} ({word} is better; "
            f"worst allowed {fmt_num(bound)}, tolerance {tol})",
        ))
    return out


def decide(gates: GateVerdict, comparisons: list[Comparison], champion_version: str | None,
           release: ReleaseCfg) -> Decision:
    """Promote only when the gates pass (or are not required and absent) and nothing regressed."""
    reasons: list[str] = []
    if not gates.ran:
        if release.require_gates:
            reasons.append(f"gates not run: {gates.note or 'no metrics/gates.json'} (release.require_gates)")
    elif not gates.passed:
        failed = gates.failed
        if failed:
            reasons += [f"gate {g.name} failed: value {fmt_num(g.value)}, threshold {fmt_num(g.threshold)}"
                        + (f" ({g.detail})" if g.detail else "") for g in failed]
        else:
            reasons.append("the gates file does not say every gate passed" + (f": {gates.note}" if gates.note else ""))
    regressions = [c.note for c in comparisons if not c.ok]
    reasons += regressions
    if reasons:
        return Decision(False, reasons, comparisons)
    gate_text = (f"all {len(gates.gates)} gates pass" if gates.ran else "gates not required")
    if champion_version is None:
        return Decision(True, [f"{gate_text}; no champion yet"], comparisons)
    return Decision(True, [f"{gate_text}; no regression beyond tolerance against champion "
                           f"v{champion_version} ({len(comparisons)} metrics)"], comparisons)


# ---- MLflow ----

def alias_version(name: str, alias: str, client: MlflowClient | None = None) -> ModelVersion | None:
    """The version holding `alias`, or None when the model or the alias does not exist."""
    client = client or MlflowClient()
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def version_metrics(mv: ModelVersion) -> dict[str, float | None]:
    """The compared metrics a version was registered with (tags, so they outlive run deletion)."""
    out: dict[str, float | None] = {}
    for k, v in (mv.tags or {}).items():
        if k.startswith(METRIC_TAG):
            try:
                out[k.removeprefix(METRIC_TAG)] = float(v)
            except ValueError:
                out[k.removeprefix(METRIC_TAG)] = None
    return out


def _requirements() -> list[str]:
    reqs = []
    for pkg in SERVING_REQUIREMENTS:
        try:
            reqs.append(f"{pkg}=={metadata.version(pkg).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def log_model(cfg: Config, model_dir: str | Path, class_names: list[str], release: ReleaseCfg) -> Any:
    """Log the exported model as a pyfunc in the active run: from code (no pickle), with explicit
    requirements (inferring them would load the model in a subprocess, slowly)."""
    import json

    from diffaudit.tracking import pyfunc_model

    unet_cfg = json.loads((Path(model_dir) / "unet" / "config.json").read_text())
    steps = release.serve_steps or cfg.sampler.steps
    return mlflow.pyfunc.log_model(
        name=MODEL_NAME_IN_RUN,
        python_model=pyfunc_model.__file__,
        artifacts={"diffusion": str(model_dir)},
        signature=pyfunc_model.signature(int(unet_cfg["sample_size"]), int(unet_cfg["in_channels"]), steps, cfg.sampler.name),
        model_config={"class_names": class_names, "guidance_scale": cfg.sampler.guidance_scale,
                      "steps": steps, "sampler": cfg.sampler.name},
        pip_requirements=_requirements(),
    )


@dataclass
class ReleaseRecord:
    """What the report stage did in the registry; written to reports/release.json."""

    model_name: str
    candidate_version: str | None
    champion_version: str | None  # after the decision
    previous_champion_version: str | None
    promoted: bool
    reasons: list[str]
    comparisons: list[dict[str, Any]]
    gates_ran: bool
    gates_passed: bool
    model_uri: str | None = None
    run_id: str | None = None
    pipeline_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def register_and_decide(
    cfg: Config, release: ReleaseCfg, model_info: Any, candidate_metrics: dict[str, float | None],
    gates: GateVerdict, run_id: str | None, pipeline_id: str | None, feature_space: str | None = None,
) -> ReleaseRecord:
    """Register the logged model, alias it `candidate`, and move `champion` when the rule allows.
    `feature_space` names the evaluator that measured the candidate (its md5); the champion's metrics
    are compared only when it was measured by the same one (or says nothing about it)."""
    client = MlflowClient()
    name = cfg.tracking.registered_model_name
    champion = alias_version(name, CHAMPION, client)
    champion_metrics = version_metrics(champion) if champion else {}
    champion_space = (champion.tags or {}).get(FEATURE_SPACE_TAG) if champion else None
    same = not (feature_space and champion_space and feature_space != champion_space)
    comparisons = compare(candidate_metrics, champion_metrics, release.compare, same_space=same) if champion else []
    champion_version = str(champion.version) if champion else None
    decision = decide(gates, comparisons, champion_version, release)
    tags = {f"{METRIC_TAG}{k}": repr(v) for k, v in candidate_metrics.items() if v is not None}
    tags |= {"diffaudit.gates_passed": str(gates.passed if gates.ran else "not run"),
             "diffaudit.decision": "champion" if decision.promote else "refused",
             "diffaudit.reasons": "; ".join(decision.reasons)[:4900]}
    if pipeline_id:
        tags["diffaudit.pipeline_id"] = pipeline_id
    if feature_space:
        tags[FEATURE_SPACE_TAG] = feature_space
    mv = mlflow.register_model(model_info.model_uri, name, tags=tags)
    client.set_registered_model_alias(name, CANDIDATE, mv.version)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, mv.version)
    return ReleaseRecord(
        model_name=name, candidate_version=str(mv.version),
        champion_version=str(mv.version) if decision.promote else champion_version,
        previous_champion_version=champion_version,
        promoted=decision.promote, reasons=decision.reasons,
        comparisons=[asdict(c) for c in decision.comparisons],
        gates_ran=gates.ran, gates_passed=gates.passed, model_uri=f"models:/{name}/{mv.version}",
        run_id=run_id, pipeline_id=pipeline_id,
    )


def revoke(name: str, version: str, previous_champion: str | None, reason: str) -> None:
    """Undo a promotion decided before a later check failed (e.g. a regression against the main
    branch): the champion alias goes back to the previous champion, or away when there was none."""
    client = MlflowClient()
    current = alias_version(name, CHAMPION, client)
    if current is not None and str(current.version) == str(version):
        if previous_champion:
            client.set_registered_model_alias(name, CHAMPION, previous_champion)
        else:
            client.delete_registered_model_alias(name, CHAMPION)
    client.set_model_version_tag(name, version, "diffaudit.decision", "refused")
    client.set_model_version_tag(name, version, "diffaudit.reasons", reason[:4900])
