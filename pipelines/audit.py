"""Stage audit (fairness and privacy): representation, bias amplification, per-group quality,
memorization, balanced-selection mitigation, and the release gates.

Writes metrics/fairness.json, metrics/privacy.json, metrics/gates.json and plots/audit/; logs them and
every verdict to MLflow. With audit.fail_on_gate=true a failing gate exits non-zero after the outputs
are written (the verdicts are the evidence).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING

import torch

from diffaudit.audit.model_audit import AuditOutcome, Generate, audit_model
from diffaudit.config.schema import Config
from diffaudit.data.store import load_meta, load_split
from diffaudit.errors import GateFailedError
from diffaudit.layout import Layout
from diffaudit.models.evaluator import Evaluator
from diffaudit.results import QualityResult, read_result, write_result
from diffaudit.results.gates import CROSSING_NOTE
from diffaudit.results.intervals import Estimate
from diffaudit.results.membership import MembershipResult
from diffaudit.tracking.mlflow_tracking import log_outputs, stage_run
from diffaudit.utils.images import save_png
from diffaudit.utils.io import load_tensors, write_text
from pipelines._stage import progress_enabled, run

if TYPE_CHECKING:
    from diffaudit.diffusion.pipeline import ClassConditionalPipeline


def _model(cfg: Config, layout: Layout) -> Callable[[], ClassConditionalPipeline]:
    """The exported model with the run's sampler, loaded once on first use (mitigation, membership)."""
    from diffaudit.diffusion.pipeline import ClassConditionalPipeline

    @cache
    def pipe() -> ClassConditionalPipeline:
        return ClassConditionalPipeline.from_exported(layout.diffusion, cfg.sampler.name)

    return pipe


def _generator(cfg: Config, pipe: Callable[[], ClassConditionalPipeline]) -> Generate:
    """The run's own sampler for the mitigation's extra draws."""

    def draw(labels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        return (
            pipe()
            .sample_as_configured(cfg.sampler, labels=labels, seeds=seeds, progress=progress_enabled())
            .images
        )

    return draw


def main(cfg: Config) -> None:
    from diffaudit.diffusion.sampling import sample_seeds

    layout = Layout.of(cfg)
    inputs = {
        "samples": layout.samples_dir,  # hashed as dvc.lock hashes the output
        "evaluator": layout.evaluator,
        "data": layout.prepared,
        "model": layout.diffusion,
    }
    with stage_run(cfg, "audit", inputs):
        meta = load_meta(layout.prepared)
        train, val, test = (load_split(layout.prepared, s) for s in ("train", "val", "test"))
        samples = load_tensors(layout.samples)
        quality = read_result(layout.quality, QualityResult) if layout.quality.is_file() else None
        evaluator = Evaluator.from_pretrained(layout.evaluator, use_safetensors=True)
        model = _model(cfg, layout)
        out = audit_model(
            cfg,
            meta,
            train,
            val,
            test,
            samples["images"],
            samples["labels"],
            evaluator,
            quality,
            _generator(cfg, model),
            seeds_after=lambda start, n: sample_seeds(cfg.seed, start + n)[start:],
            model=model,
        )
        for name, image in out.figures.items():
            save_png(image, layout.audit_plots / f"{name}.png")
        write_result(layout.fairness, out.fairness)
        write_result(layout.privacy, out.privacy)
        write_result(layout.gates, out.gates)
        write_text(layout.bias_amplification_csv, out.ba_csv)
        _log(out)
        log_outputs(
            files=[layout.fairness, layout.privacy, layout.gates], folders={"audit": layout.audit_plots}
        )
        for v in out.verdicts:
            print(f"[audit] {v.message()}")
        if (mia := out.privacy.membership) is not None:
            h = mia.headline
            auc = f"{h.auc.value:.3f}" + (
                "" if h.auc.ci is None else f" [{h.auc.ci[0]:.3f}, {h.auc.ci[1]:.3f}]"
            )
            print(
                f"[audit] membership inference ({mia.n_members} members, as many non-members): {h.attack}"
                f"{' reversed' if h.reversed else ''} "
                f"at t={h.timestep}, AUC {auc} on the held-out half"
            )
        g = out.gates
        print(
            f"[audit] {'all gates passed' if g.passed else 'gates failed: ' + ', '.join(g.failed)} "
            f"({out.fairness.seconds:.1f}s)"
        )
        failed = [v for v in out.verdicts if v.passed is False]
        if cfg.audit.fail_on_gate and failed:
            raise GateFailedError("; ".join(v.message() for v in failed))


GATE_TAG = {True: "pass", False: "fail", None: "n/a"}  # MLflow tag gate.<name>


def _log(out: AuditOutcome) -> None:
    """The audit's headline numbers and every gate's verdict, as MLflow metrics and tags."""
    fairness, privacy = out.fairness, out.privacy
    metrics: dict = {
        "fairness": fairness.headline.dump(),
        "fairness.fd_l2_corrected": {h: r.corrected.fd_l2.value for h, r in fairness.representation.items()},
        "memorized_fraction": {s: m.fraction for s, m in privacy.memorization.items()},
        "near_copy_fraction": {s: n.fraction.value for s, n in privacy.near_copies.items()},
        "gate": {
            v.gate: {"passed": float(v.passed)}
            | ({} if v.crosses is None else {"ci_crosses_threshold": float(v.crosses)})
            | ({} if v.value is None or v.value != v.value else {"value": float(v.value)})
            for v in out.verdicts
            if v.passed is not None  # a gate that does not apply has no verdict to plot (its tag says why)
        },
    }
    if (mia := out.privacy.membership) is not None:
        metrics["membership"] = _membership_metrics(mia)
    if (mit := fairness.mitigation) is not None:
        metrics["mitigation"] = {
            "fd_l2_before": mit.before.fd_l2.value,
            "fd_l2_after": mit.after.fd_l2.value,
            "extra_draws": mit.selection.extra_draws,
        }
    tags = {f"gate.{v.gate}": GATE_TAG[v.passed] for v in out.verdicts}
    tags |= {
        f"gate.{v.gate}.note": CROSSING_NOTE[v.passed]
        for v in out.verdicts
        if v.crosses and v.passed is not None
    }
    tags |= {f"gate.{v.gate}.note": v.not_applicable for v in out.verdicts if v.not_applicable}
    log_outputs(metrics=metrics, tags=tags | {"gates.passed": str(out.gates.passed).lower()})


def _membership_metrics(mia: MembershipResult) -> dict:
    """membership.{auc, auc_ci_low, ...} (the headline) and membership.<attack>.t<step>.{auc, ...}."""

    def ends(name: str, e: Estimate) -> dict[str, float]:
        return {} if e.ci is None else {f"{name}_ci_low": e.ci[0], f"{name}_ci_high": e.ci[1]}

    def flat(auc: Estimate, tpr: Estimate) -> dict[str, float]:
        return (
            {"auc": auc.value, "tpr_at_1pct_fpr": tpr.value} | ends("auc", auc) | ends("tpr_at_1pct_fpr", tpr)
        )

    h = mia.headline
    out: dict = flat(h.auc, h.tpr_at_1pct_fpr) | {"timestep": h.timestep, "n_members": mia.n_members}
    for attack, points in mia.attacks.items():
        out[attack] = {f"t{t}": flat(p.auc, p.tpr_at_1pct_fpr) for t, p in points.items()}
    return out


if __name__ == "__main__":
    run("audit", main)
