"""One sentence per report section that states its finding in words, built from the typed results, so a
reviewer reads the answer before the tables (the HTML report opens each section with it; the model card
repeats them)."""

from __future__ import annotations

from collections.abc import Callable

from diffaudit.report.content import RunContent
from diffaudit.results import ExplainMetrics, FairnessResult, PrivacyResult, QualityResult, SamplerStudyResult
from diffaudit.utils.format import fmt_num


def _ci(ci: object) -> str:
    lo, hi = (ci.low, ci.high) if hasattr(ci, "low") else ci  # type: ignore[union-attr,misc]
    return f" [{fmt_num(lo)}, {fmt_num(hi)}]"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _settles(median: float, steps: int) -> str:
    """A commitment step (0-based index; `steps`: never settled) in words, 1-based."""
    return "never settles" if median >= steps else f"settles by step {round(median) + 1} of {steps}"


def quality(q: QualityResult) -> str:
    space = q.feature_space
    fid, floor = q.space_value("fid"), q.space_value("fid_floor")
    ratio = f", {fmt_num(fid / floor)}x" if floor and floor > 0 else ""
    out = (
        f"FID {fmt_num(fid)} in the {space} feature space{ratio} its real-vs-real floor of {fmt_num(floor)} "
        f"(n={q.n_images} per side); precision {fmt_num(q.precision)} and recall {fmt_num(q.recall)} against "
        f"floors of {fmt_num(q.precision_floor)} and {fmt_num(q.recall_floor)}"
    )
    if q.conditional_accuracy is not None:
        ci = "" if q.conditional_accuracy_ci is None else _ci(q.conditional_accuracy_ci)
        out += (
            f"; the evaluator reads the conditioning class in {fmt_num(q.conditional_accuracy)}{ci} of the "
            f"images (it reads real test images right {fmt_num(q.conditional_accuracy_floor)} of the time)"
        )
    elif "conditional_accuracy" in q.not_applicable:
        out += "; conditional accuracy does not apply (unconditional model)"
    return out + "."


def kid_note(q: QualityResult) -> str:
    """Why a KID can be negative (the unbiased MMD estimator), when one is."""
    negative = [
        n for n, v in (("KID", q.space_value("kid")), ("its floor", q.space_value("kid_floor"))) if v < 0
    ]
    if not negative:
        return ""
    return (
        f"{' and '.join(negative)} below zero: KID is an unbiased estimate of a squared distance, so when "
        "the two sets are as alike as two samples of one distribution it scatters around 0 and can go "
        "negative; read it as 0 within its interval."
    )


def sampler_study(s: SamplerStudyResult) -> str:
    """The study's result: which samplers reach the target, at how few network evaluations. Samplers that
    reach it at the same NFE tie: seconds at one NFE differ by noise, so they do not pick a winner."""
    t = s.target
    target = f"FID within {fmt_num(t.fid_over_floor_max)}x its floor"
    if t.conditional_accuracy_min is not None:
        target += f" and conditional accuracy >= {fmt_num(t.conditional_accuracy_min)}"
    reached = {name: n for name, n in s.fewest_nfe_to_target.items() if n is not None}
    if not reached:
        tried = ", ".join(f"{name} up to {max(int(k) for k in pts)}" for name, pts in s.nfe_sweep.items())
        return f"No sampler reaches the target ({target}) within the NFE tried ({tried})."
    fewest = min(reached.values())
    best = sorted(name for name, n in reached.items() if n == fewest)
    rest = [f"{name} at {n}" for name, n in sorted(reached.items(), key=lambda kv: kv[1]) if n != fewest]
    never = [name for name, n in s.fewest_nfe_to_target.items() if n is None]
    out = f"{' and '.join(best)} reach{'es' if len(best) == 1 else ''} the target ({target}) at {fewest} NFE"
    if len(best) > 1:
        out += " (a tie: their times at that NFE differ by noise)"
    if rest:
        out += f"; {', '.join(rest)}"
    if never:
        out += f"; {', '.join(never)} never within the NFE tried"
    return out + f" (n={s.n_images} images per point, {s.feature_space} features)."


def explain(e: ExplainMetrics) -> str:
    heads = e.commitment.per_head
    steps = e.sampler.steps
    parts = [
        f"{'the class' if h == 'class' else h} {_settles(c.median, steps)} (median over images)"
        for h, c in heads.items()
    ]
    out = "Along the sampling trajectory, " + "; ".join(parts)
    for attr, o in e.commitment.attribute_vs_class.items():
        first = "before" if o.mean_step_difference < 0 else "after" if o.mean_step_difference > 0 else "with"
        out += (
            f"; {attr} settles {first} the class on average (mean difference "
            f"{fmt_num(o.mean_step_difference)} steps; first in {_pct(o.share_attribute_first)} of images, "
            f"together in {_pct(o.share_same_step)})"
        )
    d = e.attribution.ig_convergence_delta
    out += f". Integrated Gradients' completeness error is at most {fmt_num(d.max_relative)} of the logit gap"
    r = e.attribution.randomization_spearman
    if r is not None:
        out += (
            f"; maps from a re-initialised UNet correlate {fmt_num(r.integrated_gradients)} (IG) with the "
            "trained model's (near 1 would mean they explain the evaluator, not the model)"
        )
    return out + "."


def fairness(f: FairnessResult) -> str:
    h = f.headline
    est = h.estimate
    fd, ba, gap = h.fairness_discrepancy, h.bias_amplification, h.worst_group_gap

    def fig(x: object, what: str) -> str:
        v = x.estimate if x.estimate is not None else x.value  # type: ignore[attr-defined]
        ci = "" if x.ci is None else _ci(list(x.ci))  # type: ignore[attr-defined]
        where = f" ({x.where})" if x.where else ""  # type: ignore[attr-defined]
        return f"{what} {fmt_num(v)}{ci}{where}"

    return (
        f"Over {f.n_generated} generated images ({est} shares): worst "
        + "; ".join(
            (
                fig(fd, "fairness discrepancy"),
                fig(ba, "bias amplification"),
                fig(gap, "per-group quality gap"),
            )
        )
        + "."
    )


def privacy(p: PrivacyResult) -> str:
    parts = []
    for space, m in p.memorization.items():
        parts.append(
            f"{_pct(m.fraction)} of generated images memorized in {space} space "
            f"(d1/d2 < {fmt_num(p.ratio)}), against {_pct(m.real_test_floor.fraction)} of held-out real "
            "images"
        )
    for space, n in p.near_copies.items():
        parts.append(
            f"{_pct(n.fraction.value)} [{_pct(n.fraction.ci[0])}, {_pct(n.fraction.ci[1])}] near copies in "
            f"{space} space, against a held-out false alarm of {_pct(n.heldout.false_alarm.value)}"
        )
    if (mia := p.membership) is not None:
        h = mia.headline
        ci = "" if h.auc.ci is None else _ci(list(h.auc.ci))
        parts.append(f"membership inference AUC {fmt_num(h.auc.value)}{ci} (0.5: chance)")
    return ("; ".join(parts) or "Nothing measured") + "."


FINDINGS: dict[str, tuple[type, Callable]] = {
    "quality": (QualityResult, quality),
    "sampler_study": (SamplerStudyResult, sampler_study),
    "explain": (ExplainMetrics, explain),
    "fairness": (FairnessResult, fairness),
    "privacy": (PrivacyResult, privacy),
}


def finding(key: str, content: RunContent) -> str:
    """The section's finding in one sentence ("" for a section without one or whose file is absent)."""
    if key == "samples":
        s = content.samples
        if s is None:
            return ""
        n = len(s["labels"])
        return (
            f"{n} generated images; each row shows the first ones of a class, and a grid of real training "
            "images follows for comparison."
        )
    kind = FINDINGS.get(key)
    data = content.section_data(key)
    if kind is None or not isinstance(data, kind[0]):
        return ""
    return kind[1](data)


# What each figure shows, by file stem (plots/**/<stem>.png|gif): the report captions every figure with it.
FIGURE_CAPTIONS: dict[str, str] = {
    "real_grid": "Real training images, one row per class.",
    "mitigated_grid": (
        "The generated set after balanced selection (audit.mitigation): extra images drawn with the run's "
        "own sampler and kept towards the target attribute shares; informative only."
    ),
    "memorization_gallery": (
        "Pairs, smallest distance first: left a generated image, right its nearest training image; under "
        "each pair their distance (DCR) against the near-copy threshold, d1/d2 against its threshold, and "
        "whether either test flags it."
    ),
    "quality_vs_nfe": (
        "Each sampler over network evaluations per image (NFE): FID over its real-vs-real floor (dashed: "
        "the target), KID with its floor, conditional accuracy."
    ),
    "precision_recall_guidance": (
        "Precision against recall at each guidance scale w (star: real training images, the floor)."
    ),
    "filmstrip": (
        "Per image: the noisy state x_t (top row) and the sampler's x0-prediction (bottom row) at each "
        "step, then the final image."
    ),
    "emergence": (
        "Probability the evaluator gives the final class (and attribute value) on the x0-prediction at "
        "each step, per class: mean with a quantile band."
    ),
    "commitment": "Distribution of the step after which the evaluator's reading no longer changes, per head.",
    "attributions": (
        "Which pixels of x_t drive the final class's logit at three steps: Integrated Gradients (red +, "
        "blue -) and SmoothGrad, then the same with a re-initialised UNet (sanity check: maps that barely "
        "change explain the evaluator, not the model)."
    ),
    "guidance_maps": "Where the label acts: |eps_cond - eps_uncond| per pixel and step, one row per image.",
    "guidance_profile": "How strongly guidance pushes at each step (mean |eps_cond - eps_uncond|, band).",
    "loss_by_timestep": "Validation loss and x0 error per timestep bin: where along the noise levels the "
    "denoiser is good or poor.",
    "spectrum": "Power of the x0-prediction per spatial-frequency band over the steps (coarse to fine).",
}


def figure_caption(stem: str, content: RunContent) -> str:
    """The caption of a figure: what it shows (the mitigated grid: what was mitigated and how)."""
    f = content.results.fairness
    if stem == "mitigated_grid" and f is not None and f.mitigation is not None:
        m = f.mitigation
        target = ", ".join(fmt_num(t) for t in m.target)
        return (
            f"The generated set after balanced selection on {m.attribute}: extra images were drawn with the "
            f"run's own sampler ({m.selection.extra_draws} extra draws) and kept so that each class's "
            f"{m.attribute} shares approach the target ({target}); fairness discrepancy "
            f"{fmt_num(m.before.fd_l2.value)} before, {fmt_num(m.after.fd_l2.value)} after. Informative "
            "only: the release is judged on the model's plain samples."
        )
    # The longest known stem the file's starts with (filmstrip_0 is a filmstrip).
    known = sorted((k for k in FIGURE_CAPTIONS if stem.startswith(k)), key=len, reverse=True)
    return FIGURE_CAPTIONS[known[0]] if known else ""
