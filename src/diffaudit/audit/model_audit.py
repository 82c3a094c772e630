"""The fairness and privacy audit end to end: read the generated set as the audit reads it, measure
representation, bias amplification, per-group quality and memorization, judge the release gates, and
(optionally) mitigate by balanced selection and audit the selected set again.

Returns numbers and pictures; writing and logging them is the stage's job (pipelines/audit.py), so the
library stays free of paths and tracking.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from diffaudit.audit import gates as gates_mod
from diffaudit.audit.attribute_rules import AttributeRule, apply_rules, fit_rules
from diffaudit.audit.fairness import distribution
from diffaudit.audit.fairness_report import Judged, fairness_report, judge
from diffaudit.audit.membership import membership_audit
from diffaudit.audit.mitigation import Draw, balanced_selection
from diffaudit.audit.privacy import gallery_figure, privacy_report
from diffaudit.config.schema import Config
from diffaudit.data.store import DataMeta, Split
from diffaudit.errors import ConfigError
from diffaudit.models.evaluator import Evaluator
from diffaudit.results import FairnessReport, FairnessResult, GatesResult, PrivacyResult, QualityResult
from diffaudit.results.fairness import Mitigation, MitigationSide, Selection
from diffaudit.results.membership import MembershipResult
from diffaudit.utils.images import class_grid

if TYPE_CHECKING:
    from diffaudit.diffusion.pipeline import ClassConditionalPipeline

Look = Callable[[torch.Tensor, torch.Tensor], Judged]  # images, their classes -> how the audit reads them
# labels, per-image seeds -> images in [-1, 1], drawn with the run's own sampler
Generate = Callable[[torch.Tensor, list[int]], torch.Tensor]

BA_CSV_HEADER = "set,attribute,class,group,p_train,p_gen,ba,ci_low,ci_high"


@dataclass
class AuditOutcome:
    fairness: FairnessResult
    privacy: PrivacyResult
    gates: GatesResult
    verdicts: list[gates_mod.Verdict]
    figures: dict = field(default_factory=dict)  # name -> PIL image (plots/audit/<name>.png)
    ba_csv: str = ""  # plots/bias_amplification.csv


def looker(evaluator: Evaluator, rules: dict[str, AttributeRule]) -> Look:
    """The evaluator's reads, with every rule-measured attribute read by its rule instead."""
    return lambda images, labels: apply_rules(judge(evaluator, images), images, labels, rules)


def _drawer(
    generate: Generate,
    seeds_after: Callable[[int, int], list[int]],
    look: Look,
    attribute: str,
    first_index: int,
) -> Draw:
    """Extra candidates from the run's sampler; their seeds continue after the sample stage's."""
    next_index = [first_index]

    def draw(labels: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        seeds = seeds_after(next_index[0], len(labels))
        next_index[0] += len(labels)
        images = generate(labels, seeds)
        return images, look(images, labels).preds[attribute]

    return draw


def _mitigate(
    cfg: Config,
    meta: DataMeta,
    train: Split,
    test: Split,
    test_j: Judged,
    look: Look,
    images: torch.Tensor,
    labels: torch.Tensor,
    gen_j: Judged,
    draw_for: Callable[[str], Draw],
    before: FairnessReport,
) -> tuple[Mitigation, torch.Tensor, torch.Tensor]:
    """Balanced selection on one attribute, then the fairness audit again on the selected set."""
    m = cfg.audit.mitigation
    attribute = m.attribute or next(iter(meta.attribute_groups), None)
    if attribute is None or attribute not in meta.attribute_groups:
        raise ConfigError(
            f"audit.mitigation.attribute={attribute!r} is not an attribute of the data "
            f"({sorted(meta.attribute_groups)})"
        )
    k = len(meta.attribute_groups[attribute])
    target = (
        np.full(k, 1.0 / k) if m.target == "uniform" else distribution(train.attributes[attribute].numpy(), k)
    )
    t0 = time.perf_counter()
    sel_images, sel_labels, _, info = balanced_selection(
        images, labels, gen_j.preds[attribute], target, draw_for(attribute), m.oversample, m.max_rounds
    )
    after = fairness_report(
        cfg.audit, meta, train, test, test_j, sel_labels, look(sel_images, sel_labels), cfg.seed
    )
    est = "corrected" if cfg.audit.correct_errors else "raw"

    def side(r: FairnessReport) -> MitigationSide:
        rep = r.representation[attribute]
        return MitigationSide(
            p_gen=rep.p_gen(est),
            fd_l2=rep.discrepancies(est).fd_l2,
            max_abs_ba=r.bias_amplification[attribute].max_abs_ba,
            headline=r.headline,
        )

    summary = Mitigation(
        attribute=attribute,
        target=target.tolist(),
        seconds=time.perf_counter() - t0,
        selection=Selection.model_validate(info),
        before=side(before),
        after=side(after),
        report=after,
    )
    return summary, sel_images, sel_labels


def _ba_rows(fairness: FairnessReport, label: str) -> list[str]:
    rows = []
    for attr, r in fairness.bias_amplification.items():
        for c in r.cells:
            lo, hi = c.ci if c.ci is not None else ("", "")
            rows.append(
                f"{label},{attr},{c.class_},{c.group},{c.p_train:.4f},{c.p_gen:.4f},"
                f"{c.ba:.4f},{lo if lo == '' else f'{lo:.4f}'},{hi if hi == '' else f'{hi:.4f}'}"
            )
    return rows


def _membership(
    cfg: Config, train: Split, test: Split, model: Callable[[], ClassConditionalPipeline] | None
) -> MembershipResult | None:
    """Membership inference on the trained model: training images against test images."""
    if not cfg.audit.membership.enabled or model is None:
        return None
    pipe = model()
    denoiser, schedule = pipe.vp_denoiser()  # an EDM model: on a VP grid (diffusion/edm.py VPView)
    return membership_audit(
        denoiser,
        schedule,
        (train.images, train.labels),
        (test.images, test.labels),
        cfg.audit.membership,
        seed=cfg.seed,
        bootstrap=cfg.audit.bootstrap,
        ci_level=cfg.audit.ci_level,
        encode=pipe.encode if pipe.latent else None,
    )


def audit_model(
    cfg: Config,
    meta: DataMeta,
    train: Split,
    val: Split,
    test: Split,
    images: torch.Tensor,
    labels: torch.Tensor,
    evaluator: Evaluator,
    quality: QualityResult | None,
    generate: Generate,
    seeds_after: Callable[[int, int], list[int]],
    model: Callable[[], ClassConditionalPipeline] | None = None,
) -> AuditOutcome:
    """Audit one generated set (`images` for `labels`, the sample stage's); `generate` and `seeds_after`
    (start index, count -> seeds) draw the mitigation's extra candidates with the run's sampler; `model`
    loads the trained model for membership inference (audit.membership; none given: not run)."""
    t0 = time.perf_counter()
    rules = fit_rules(meta, [train, val]) if cfg.audit.derived_attributes == "definition" else {}
    look = looker(evaluator, rules)
    test_j, gen_j, train_j = (
        look(test.images, test.labels),
        look(images, labels),
        judge(evaluator, train.images),
    )

    fairness = fairness_report(cfg.audit, meta, train, test, test_j, labels, gen_j, cfg.seed)
    as_t = torch.from_numpy
    privacy, _ = privacy_report(
        {"pixel": images, "feature": as_t(gen_j.feats)},
        {"pixel": train.images, "feature": as_t(train_j.feats)},
        {"pixel": test.images, "feature": as_t(test_j.feats)},
        cfg.audit.memorization_ratio,
        cfg.audit.gallery_size,
        cfg.audit.copy_percentile,
        cfg.audit.ci_level,
    )
    figures = {"memorization_gallery": gallery_figure(images, train.images, privacy)}

    membership = _membership(cfg, train, test, model)
    if membership is not None:
        privacy.membership = membership
    measured = gates_mod.measurements(fairness, privacy, quality)
    verdicts = gates_mod.evaluate_gates(cfg.audit.gates, measured)
    gates = gates_mod.report(verdicts)
    ba_rows = _ba_rows(fairness, "before")
    mitigation = None
    if cfg.audit.mitigation.enabled and meta.attribute_groups:

        def draw_for(attribute: str) -> Draw:
            return _drawer(generate, seeds_after, look, attribute, first_index=len(labels))

        mitigation, sel_images, sel_labels = _mitigate(
            cfg, meta, train, test, test_j, look, images, labels, gen_j, draw_for, fairness
        )
        figures["mitigated_grid"] = class_grid(sel_images, sel_labels, meta.num_classes)
        after = gates_mod.evaluate_gates(
            cfg.audit.gates, gates_mod.measurements(mitigation.report, privacy, quality)
        )
        # Informative only: the release is judged on the model with its plain sampler.
        gates.with_mitigation = {
            v.gate: bool(v.passed)
            for v in after
            if v.passed is not None
            and v.gate in ("fairness_discrepancy", "bias_amplification", "worst_group_gap")
        }
        ba_rows += _ba_rows(mitigation.report, "after")
    result = FairnessResult.of(fairness, seconds=time.perf_counter() - t0, mitigation=mitigation)
    return AuditOutcome(
        result, privacy, gates, verdicts, figures, "\n".join([BA_CSV_HEADER, *ba_rows]) + "\n"
    )
