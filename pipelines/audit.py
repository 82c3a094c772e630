"""Stage audit (fairness and privacy): representation, bias amplification, per-group quality,
memorization, balanced-selection mitigation, and the release gates.

Writes metrics/fairness.json, metrics/privacy.json, metrics/gates.json and plots/audit/; logs them and
every verdict to MLflow. With audit.fail_on_gate=true a failing gate exits non-zero after the outputs
are written (the verdicts are the evidence).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import torch

from diffaudit.audit import gates as gates_mod
from diffaudit.audit.attribute_rules import AttributeRule, apply_rules, fit_rules
from diffaudit.audit.fairness import distribution
from diffaudit.audit.fairness_report import Judged, fairness_report, judge
from diffaudit.audit.mitigation import Draw, balanced_selection
from diffaudit.audit.privacy import gallery, privacy_report
from diffaudit.config.schema import Config
from diffaudit.data.store import DataMeta, Split, load_meta, load_split
from diffaudit.errors import ConfigError, GateFailedError
from diffaudit.models.evaluator import Evaluator, load_evaluator
from diffaudit.results import FairnessReport, FairnessResult, QualityResult, read_result, write_result
from diffaudit.results.fairness import Mitigation, MitigationSide, Selection
from diffaudit.tracking.mlflow_tracking import log_metrics_flat, stage_run
from diffaudit.utils.images import class_grid, grid, save_png
from diffaudit.utils.io import load_tensors, write_text
from pipelines._stage import progress_enabled, run

Look = Callable[[torch.Tensor, torch.Tensor], Judged]  # images, their classes -> how the audit reads them


def _looker(evaluator: Evaluator, rules: dict[str, AttributeRule]) -> Look:
    """The evaluator's reads, with every rule-measured attribute read by its rule instead."""
    return lambda images, labels: apply_rules(judge(evaluator, images), images, labels, rules)


def _drawer(cfg: Config, model_dir: Path, look: Look, attribute: str, first_index: int) -> Draw:
    """Sample extra candidates with the stage's own sampler; seeds continue after the sample stage's."""
    from diffaudit.diffusion.sampling import generate, sample_seeds
    from diffaudit.diffusion.schedulers import build_sampler
    from diffaudit.models.unet import load_exported

    unet, sched_cfg = load_exported(model_dir)
    scheduler = build_sampler(cfg.sampler.name, sched_cfg)
    next_index = [first_index]

    def draw(labels: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        start = next_index[0]
        seeds = sample_seeds(cfg.seed, start + len(labels))[start:]
        next_index[0] += len(labels)
        images = generate(unet, scheduler, labels, seeds, cfg.sampler.steps, cfg.sampler.guidance_scale,
                          sched_cfg["prediction_type"], cfg.sampler.batch_size, progress_enabled())
        return images, look(images, labels).preds[attribute]

    return draw


def _mitigate(cfg: Config, meta: DataMeta, train: Split, test: Split, test_j: Judged, look: Look,
              images: torch.Tensor, labels: torch.Tensor, gen_j: Judged, model_dir: Path,
              before: FairnessReport) -> tuple[Mitigation, torch.Tensor, torch.Tensor]:
    """Balanced selection on one attribute, then the fairness audit again on the selected set."""
    m = cfg.audit.mitigation
    attribute = m.attribute or next(iter(meta.attribute_groups), None)
    if attribute is None or attribute not in meta.attribute_groups:
        raise ConfigError(f"audit.mitigation.attribute={attribute!r} is not an attribute of the data "
                          f"({sorted(meta.attribute_groups)})")
    k = len(meta.attribute_groups[attribute])
    target = np.full(k, 1.0 / k) if m.target == "uniform" else distribution(train.attributes[attribute].numpy(), k)
    draw = _drawer(cfg, model_dir, look, attribute, first_index=len(labels))
    t0 = time.perf_counter()
    sel_images, sel_labels, _, info = balanced_selection(
        images, labels, gen_j.preds[attribute], target, draw, m.oversample, m.max_rounds)
    after = fairness_report(cfg.audit, meta, train, test, test_j, sel_labels, look(sel_images, sel_labels), cfg.seed)
    est = "corrected" if cfg.audit.correct_errors else "raw"

    def side(r: FairnessReport) -> MitigationSide:
        rep = r.representation[attribute]
        return MitigationSide(p_gen=rep.p_gen(est), fd_l2=rep.discrepancies(est).fd_l2,
                              max_abs_ba=r.bias_amplification[attribute].max_abs_ba, headline=r.headline)

    summary = Mitigation(attribute=attribute, target=target.tolist(), seconds=time.perf_counter() - t0,
                         selection=Selection.model_validate(info), before=side(before), after=side(after),
                         report=after)
    return summary, sel_images, sel_labels


def _ba_rows(fairness: FairnessReport, label: str) -> list[str]:
    rows = []
    for attr, r in fairness.bias_amplification.items():
        for c in r.cells:
            rows.append(f"{label},{attr},{c.class_},{c.group},{c.p_train:.4f},{c.p_gen:.4f},"
                        f"{c.ba:.4f},{c.ci[0]:.4f},{c.ci[1]:.4f}")
    return rows


def main(cfg: Config) -> None:
    data_dir = Path(cfg.paths.data) / "prepared"
    samples_path = Path(cfg.paths.samples) / "samples.safetensors"
    evaluator_dir = Path(cfg.paths.models) / "evaluator"
    model_dir = Path(cfg.paths.models) / "diffusion"
    metrics_dir, plots_dir = Path(cfg.paths.metrics), Path(cfg.paths.plots)
    quality_path = metrics_dir / QualityResult.FILE
    inputs = {"samples": samples_path, "evaluator": evaluator_dir, "data": data_dir, "model": model_dir}
    with stage_run(cfg, "audit", inputs):
        t0 = time.perf_counter()
        meta = load_meta(data_dir)
        train, val, test = (load_split(data_dir, s) for s in ("train", "val", "test"))
        samples = load_tensors(samples_path)
        images, labels = samples["images"], samples["labels"]
        evaluator = load_evaluator(evaluator_dir)
        quality = read_result(quality_path, QualityResult) if quality_path.is_file() else None
        rules = fit_rules(meta, [train, val]) if cfg.audit.derived_attributes == "definition" else {}
        look = _looker(evaluator, rules)
        test_j, gen_j, train_j = look(test.images, test.labels), look(images, labels), judge(evaluator, train.images)

        fairness = fairness_report(cfg.audit, meta, train, test, test_j, labels, gen_j, cfg.seed)
        as_t = torch.from_numpy
        privacy, raw = privacy_report(
            {"pixel": images, "feature": as_t(gen_j.feats)}, {"pixel": train.images, "feature": as_t(train_j.feats)},
            {"pixel": test.images, "feature": as_t(test_j.feats)}, cfg.audit.memorization_ratio, cfg.audit.gallery_size)
        audit_plots = plots_dir / "audit"
        pairs = [(p.generated, p.train, p.ratio) for p in privacy.memorization["pixel"].closest_pairs]
        save_png(grid(gallery(images, train.images, pairs), ncol=8, scale=4), audit_plots / "memorization_gallery.png")

        verdicts = gates_mod.evaluate_gates(cfg.audit.gates, gates_mod.measurements(fairness, privacy, quality))
        gates = gates_mod.report(verdicts)
        ba_rows = _ba_rows(fairness, "before")
        mitigation = None
        if cfg.audit.mitigation.enabled and meta.attribute_groups:
            mitigation, sel_images, sel_labels = _mitigate(cfg, meta, train, test, test_j, look, images, labels,
                                                           gen_j, model_dir, fairness)
            save_png(class_grid(sel_images, sel_labels, meta.num_classes), audit_plots / "mitigated_grid.png")
            after = gates_mod.evaluate_gates(cfg.audit.gates,
                                             gates_mod.measurements(mitigation.report, privacy, quality))
            # Informative only: the release is judged on the model with its plain sampler.
            gates.with_mitigation = {v.gate: v.passed for v in after if v.gate in
                                     ("fairness_discrepancy", "bias_amplification", "worst_group_gap")}
            ba_rows += _ba_rows(mitigation.report, "after")
        fairness = FairnessResult.of(fairness, seconds=time.perf_counter() - t0, mitigation=mitigation)

        write_result(metrics_dir / "fairness.json", fairness)
        write_result(metrics_dir / "privacy.json", privacy)
        write_result(metrics_dir / "gates.json", gates)
        header = "set,attribute,class,group,p_train,p_gen,ba,ci_low,ci_high"
        write_text(plots_dir / "bias_amplification.csv", "\n".join([header, *ba_rows]) + "\n")
        if mlflow.active_run():
            log_metrics_flat(fairness.headline.dump(), prefix="fairness.")
            log_metrics_flat({h: r.corrected.fd_l2.value for h, r in fairness.representation.items()},
                             prefix="fairness.fd_l2_corrected.")
            log_metrics_flat({s: m.fraction for s, m in privacy.memorization.items()},
                             prefix="memorized_fraction.")
            for v in verdicts:
                mlflow.log_metric(f"gate.{v.gate}.passed", float(v.passed))
                if v.value is not None and not np.isnan(v.value):
                    mlflow.log_metric(f"gate.{v.gate}.value", float(v.value))
                mlflow.set_tag(f"gate.{v.gate}", "pass" if v.passed else "fail")
            mlflow.set_tag("gates.passed", str(gates.passed).lower())
            if mitigation is not None:
                mlflow.log_metrics({"mitigation.fd_l2_before": mitigation.before.fd_l2.value,
                                    "mitigation.fd_l2_after": mitigation.after.fd_l2.value,
                                    "mitigation.extra_draws": mitigation.selection.extra_draws})
            for name in ("fairness.json", "privacy.json", "gates.json"):
                mlflow.log_artifact(str(metrics_dir / name))
            mlflow.log_artifacts(str(audit_plots), "audit")
        for v in verdicts:
            print(f"[audit] {v.message()}")
        print(f"[audit] {'all gates passed' if gates.passed else 'gates failed: ' + ', '.join(gates.failed)} "
              f"({fairness.seconds:.1f}s)")
        failed = [v for v in verdicts if not v.passed]
        if cfg.audit.fail_on_gate and failed:
            raise GateFailedError("; ".join(v.message() for v in failed))


if __name__ == "__main__":
    run("audit", main)
