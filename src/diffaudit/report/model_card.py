"""reports/MODEL_CARD.md in the sections of Mitchell et al. (2019), "Model Cards for Model
Reporting", filled from the run's own files so the card cannot drift from the model it describes.
Anything the pipeline did not measure is said to be unmeasured, never left blank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffaudit.layout import Layout
from diffaudit.models.export import exported_unet_weights
from diffaudit.report.content import (
    SECTIONS,
    Lineage,
    RunContent,
    Table,
    fmt_quality_value,
    headline_of,
    quality_label,
    to_tables,
)
from diffaudit.results import ReleaseRecord
from diffaudit.utils.format import fmt_num


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def md_table(t: Table) -> str:
    lines = [f"**{_md_cell(t.title)}**", ""] if t.title else []
    lines += ["| " + " | ".join(_md_cell(h) or " " for h in t.headers) + " |", "|" + "---|" * len(t.headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    if t.more:
        lines.append(f"\n_{t.more} more rows in the JSON file._")
    return "\n".join(lines) + "\n"


def md_tables(obj: Any, skip: tuple[str, ...] = (), max_depth: int = 5) -> str:
    return "\n".join(md_table(t) for t in to_tables(obj, skip=skip, max_depth=max_depth))


def _not_run(content: RunContent, key: str) -> str:
    sec = next(s for s in SECTIONS if s.key == key)
    return (
        f"_Not measured for this run: `{Layout.of(content.cfg).metrics_dir / (sec.metrics_file or '')}` "
        f"was not produced (by the `{sec.stage}` stage)._\n"
    )


def _param_count(model_dir: Path) -> int | None:
    path = exported_unet_weights(model_dir)
    if not path.is_file():
        return None
    from math import prod

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return sum(prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (not a dict)


def _details(content: RunContent, lin: Lineage, record: ReleaseRecord | None) -> str:
    cfg = content.cfg
    u = content.unet_config
    n_params = _param_count(Layout.of(cfg).diffusion)
    status = "not registered"
    if record is not None:
        status = f"version {record.candidate_version}: " + (
            "champion (released)" if record.promoted else "candidate, not released"
        )
    src, conditioning = content.model_source, content.conditioning
    classes = {
        "class_cfg": f"{(u.get('num_class_embeds') or 1) - 1} classes + 1 null class",
        "class": f"{u.get('num_class_embeds')} classes, no null class",
        "none": "unconditional (no class embedding)",
    }[conditioning]
    guidance = (
        f"guidance scale {cfg.sampler.guidance_scale:g}" if conditioning == "class_cfg" else "no guidance"
    )
    if src is None:
        arch = (
            f"block_out_channels {u.get('block_out_channels', cfg.model.block_out_channels)}, "
            f"layers_per_block {cfg.model.layers_per_block}, attention {cfg.model.attention}, {classes}"
        )
        diffusion = (
            f"{cfg.diffusion.num_train_timesteps} steps, `{cfg.diffusion.beta_schedule}` schedule, "
            f"`{cfg.diffusion.prediction_type}` objective"
        )
        training = (
            f"{cfg.train.max_steps} steps, batch {cfg.train.batch_size}, lr {cfg.train.lr:g}, EMA decay "
            f"{cfg.train.ema_decay:g}, condition dropout {cfg.train.cond_drop_prob:g}, seed {cfg.seed}"
        )
    else:
        arch = (
            f"`{src.unet_class}`, block_out_channels {u.get('block_out_channels')}, layers_per_block "
            f"{u.get('layers_per_block')}, {classes}" + (f", decoder `{src.vae_class}`" if src.latent else "")
        )
        diffusion = f"`{src.scheduler_class}` config, `{src.prediction_type}` objective"
        training = f"not trained by diffaudit: imported from `{src.path}` (content hash `{src.md5}`)"
    serving = (
        "MLflow pyfunc: input rows `seed` (one image per row; an unconditional model takes no label); "
        "output uint8 images (N, H, W, C); `make serve` serves the champion"
        if conditioning == "none"
        else "MLflow pyfunc: input rows `label` (class id), `guidance_scale`, `seed`; output uint8 images "
        "(N, H, W, C); `make serve` serves the champion"
    )
    rows = [
        ("Name", f"`{cfg.tracking.registered_model_name}` ({status})"),
        ("Type", content.model_kind()),
        ("Architecture", arch + (f", {n_params:,} parameters" if n_params else "")),
        ("Diffusion", diffusion),
        ("Training", training),
        ("Sampling (as evaluated)", f"`{cfg.sampler.name}`, {cfg.sampler.steps} steps, {guidance}"),
        ("Code", f"git commit `{lin.git_commit}`"),
        (
            "MLflow",
            f"report run `{lin.run_id or '–'}`, pipeline run `{lin.pipeline_run_id or '–'}` "
            f"({lin.tracking_uri})",
        ),
        ("Serving", serving),
        ("Card generated", lin.generated_at),
    ]
    return md_table(Table("", ["", ""], [[k, v] for k, v in rows]))


def _headline(content: RunContent) -> str:
    q = content.results.quality
    if q is None:
        return _not_run(content, "quality")
    rows = [
        [
            quality_label(r.quantity, q.feature_space),
            fmt_quality_value(r),
            fmt_num(r.floor),
            f"± {fmt_num(r.spread)} (std)" if r.spread is not None else "",
        ]
        for r in q.rows()
        if r.quantity in ("fid", "kid", "conditional_accuracy")
    ]
    rows += [
        [quality_label(k, q.feature_space), "not applicable", "–", why] for k, why in q.not_applicable.items()
    ]
    return md_table(Table("", ["metric", "value [95% CI]", "real-vs-real floor", "spread"], rows))


def _caveats(content: RunContent, record: ReleaseRecord | None) -> list[str]:
    out = content.model_notes()
    g = content.gates
    if g is None:
        out.append("The release gates were not evaluated for this run: do not deploy it.")
    elif g.failed:
        out.append(
            "Failed gates: "
            + ", ".join(
                f"{name} ({fmt_num(x.value)} vs {fmt_num(x.threshold)})"
                for name, x in g.failed_gates().items()
            )
            + "."
        )
    if g is not None:
        out += [f"Gate {name}: {x.crossing_note}." for name, x in g.gates.items() if x.crossing_note]
        out += [
            f"Gate {name}: {x.not_applicable}; neither passed nor failed, so it does not block the release."
            for name, x in g.gates.items()
            if x.not_applicable
        ]
    missing = [s.title for s in SECTIONS if not content.section_ran(s.key)]
    if missing:
        out.append("Not measured for this run: " + ", ".join(missing) + ".")
    q = content.results.quality
    if q is not None and q.feature_space == "evaluator":
        out.append(
            "FID/KID are measured in the project's own evaluator feature space (not InceptionV3): compare "
            "them only with runs that share the evaluator, never with published FID numbers."
        )
    if q is not None and q.n_images < 1000:
        out.append(
            f"FID/KID use {q.n_images} images per side: biased upward at this size; read them against "
            "the real-vs-real floor of the same size."
        )
    ev = content.results.evaluator
    accs = {k: v.accuracy for k, v in ev.heads.items()} if ev else {}
    if accs:
        out.append(
            "Fairness and conditional accuracy are judged by an evaluator classifier with its own errors "
            f"(held-out accuracy: {', '.join(f'{k} {fmt_num(v)}' for k, v in accs.items())}); the audit "
            "corrects group shares for them where it reports corrected values."
        )
    if record is not None and not record.promoted:
        out.append("Release refused: " + "; ".join(record.reasons))
    return out


def render_model_card(content: RunContent, lineage: Lineage, record: ReleaseRecord | None = None) -> str:
    """The card as Markdown, every number read from this run's files."""
    cfg = content.cfg
    data = content.results.data
    splits = data.splits if data else {}
    groups = content.attribute_groups
    classes = ", ".join(content.class_names) or "–"
    parts = [
        f"# Model card: {cfg.tracking.registered_model_name}\n",
        "_Generated by the `report` stage from this run's metrics; edit the pipeline, not this file._\n",
        "## Model details\n",
        _details(content, lineage, record),
    ]
    parts += [
        "## Intended use\n",
        f"- Research and teaching on training, evaluating and auditing diffusion models (this one: "
        f"{content.conditioning_phrase()}) on `{cfg.data.name}` ({classes}).\n"
        "- Producing sample sets to test measurement code (quality, explainability, fairness, privacy "
        "metrics).\n",
        "## Out-of-scope uses\n",
        "- Any decision about a person, or data used to make one.\n"
        f"- Images outside the `{cfg.data.name}` domain, or presented as real data.\n"
        "- Training a production model on its samples without auditing that model in turn.\n"
        "- Deployment of a version that is not the registry's `champion` (its gates did not all pass).\n",
        "## Training data\n",
        f"Source: `{data.source if data else cfg.data.name}`, image size "
        f"{data.image_size if data else cfg.data.image_size}, data md5 `{lineage.data_md5 or '–'}`."
        + (f" Deliberately skewed: `{data.bias.model_dump()}`." if data and data.bias else "")
        + "\n",
    ]
    train = splits.get("train")
    if train:
        parts.append(md_tables(train))
    parts += ["## Evaluation data\n"]
    parts.append(
        "Held-out splits of the same source: "
        + ", ".join(f"{k} {v.n} images" for k, v in splits.items() if k != "train")
        + ". Samples are judged by an evaluator classifier trained on the training split "
        "(`metrics/evaluator.json`).\n"
        if splits
        else "_No data card (metrics/data.json) found._\n"
    )
    parts += [
        "## Factors\n",
        f"Classes: {classes}.\n\n"
        + (
            "Audited groups: " + "; ".join(f"`{a}` ({', '.join(v)})" for a, v in groups.items()) + ".\n"
            if groups
            else "No attribute groups in this dataset: only per-class factors are audited.\n"
        ),
    ]
    parts += [
        "## Metrics\n",
        "- FID and KID between generated and real test images, beside the real-vs-real floor (real train vs "
        "real test of the same count).\n"
        "- Conditional accuracy: the evaluator's agreement with the conditioning label.\n"
        "- Fairness discrepancy, bias amplification and per-group quality over the audited groups, with "
        "bootstrap intervals where the audit reports them.\n"
        "- Memorization: share of samples much closer to one training image than to any other.\n",
        _headline(content),
    ]
    parts += ["## Quantitative analyses\n", "### Quality\n"]
    r = content.results
    parts.append(md_tables(r.quality, skip=("sampler",)) if r.quality else _not_run(content, "quality"))
    parts.append("### Sampler study\n")
    parts.append(md_tables(r.sampler_study) if r.sampler_study else _not_run(content, "sampler_study"))
    parts.append("### Disaggregated by group (fairness)\n")
    parts.append(md_tables(r.fairness) if r.fairness else _not_run(content, "fairness"))
    parts += ["## Model examination\n"]
    parts.append(
        md_tables(headline_of(r.explain), max_depth=2) + "\nAll numbers and figures: the "
        "Explainability section of `reports/audit.html` and `metrics/explain.json`.\n"
        if r.explain
        else _not_run(content, "explain")
    )
    parts += [
        "## Ethical considerations\n",
        "The model reproduces its training distribution, including its skews; the fairness section measures "
        "how far generated group shares drift from it. Memorization (below) measures copying of training "
        "images, which matters as soon as the training data is personal.\n\n",
    ]
    parts.append(md_tables(r.privacy) if r.privacy else _not_run(content, "privacy"))
    parts += ["## Caveats and recommendations\n"]
    parts.append("".join(f"- {c}\n" for c in _caveats(content, record)) or "- None recorded.\n")
    parts.append("\nThe full audit with figures: `reports/audit.html`.\n")
    return "\n".join(parts)
