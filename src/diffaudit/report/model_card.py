"""reports/MODEL_CARD.md in the sections of Mitchell et al. (2019), "Model Cards for Model
Reporting", filled from the run's own files so the card cannot drift from the model it describes.
Anything the pipeline did not measure is said to be unmeasured, never left blank."""

from __future__ import annotations

import re
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
from diffaudit.report.findings import finding
from diffaudit.results import ReleaseRecord
from diffaudit.utils.format import fmt_num


def _no_html(s: str) -> str:
    """Text from the data (class and group names) made inert: Markdown renders raw HTML, so every `<` that
    could open a tag or comment is escaped (a plain `<=` stays readable)."""
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", s)


def _md_cell(s: str) -> str:
    return _no_html(s).replace("|", "\\|").replace("\n", " ")


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
            _diffusion_line(cfg)
            if cfg.diffusion.is_edm
            else f"{cfg.diffusion.num_train_timesteps} steps, `{cfg.diffusion.beta_schedule}` schedule, "
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
    out += _judges(content)
    if record is not None and not record.promoted:
        out.append("Release refused: " + "; ".join(record.reasons))
    return out


def _judges(content: RunContent) -> list[str]:
    """Who reads the class and each attribute, with its held-out accuracy: the evaluator classifier, or a
    pixel rule (audit.derived_attributes=definition) for an attribute the data defines by its pixels."""
    ev, f = content.results.evaluator, content.results.fairness
    accs = {k: v.accuracy for k, v in ev.heads.items()} if ev else {}
    if not accs:
        return []
    measures = f.attribute_measure if f is not None else {}
    rule = {a: m for a, m in measures.items() if m.measured_by == "definition"}
    by_eval = [f"{k} {fmt_num(v)}" for k, v in accs.items() if k not in rule]
    out = [
        "The evaluator classifier reads "
        + ", ".join(k for k in accs if k not in rule)
        + f" on generated images, with its own errors (held-out accuracy: {', '.join(by_eval)}); the audit "
        "corrects group shares for them where it reports corrected values."
    ]
    for a, m in rule.items():
        out.append(
            f"`{a}` is read by its definition, a pixel rule (not the evaluator), which reproduces "
            f"{100 * m.definition_test_accuracy:.1f} % of the real test labels."
        )
    return out


def _front_matter(content: RunContent) -> str:
    """Hugging Face model card metadata (YAML between --- lines)."""
    cfg = content.cfg
    kind = "unconditional" if content.conditioning == "none" else "class-conditional"
    tags = ["diffusion", "image-generation", kind, "diffaudit", "audited"]
    if content.model_source is not None and content.model_source.latent:
        tags.append("latent-diffusion")
    lines = [
        "---",
        "license: other  # the training data's terms apply; diffaudit sets no license of its own",
        "library_name: diffusers",
        "pipeline_tag: unconditional-image-generation",
        "tags:",
        *(f"  - {t}" for t in tags),
        "datasets:",
        f"  - {cfg.data.name}",
        "---",
    ]
    return "\n".join(lines) + "\n"


def _get_started(content: RunContent, record: ReleaseRecord | None) -> str:
    cfg = content.cfg
    name = cfg.tracking.registered_model_name
    version = record.candidate_version if record and record.candidate_version else "<version>"
    rows = '{"seed": 1}, {"seed": 2}' if content.conditioning == "none" else '{"label": 3, "seed": 1}'
    latent = content.model_source is not None and content.model_source.latent
    if latent:
        code = (
            "from diffusers import DiffusionPipeline\n"
            f'pipe = DiffusionPipeline.from_pretrained("{Layout.of(cfg).diffusion}")  # as imported\n'
            "images = pipe(batch_size=4).images"
        )
    else:
        labels = "" if content.conditioning == "none" else ", class_labels=labels"
        code = (
            "import torch\n"
            "from diffusers import DDIMScheduler, UNet2DModel\n"
            f'unet = UNet2DModel.from_pretrained("{Layout.of(cfg).diffusion}/unet")\n'
            f'scheduler = DDIMScheduler.from_pretrained("{Layout.of(cfg).diffusion}/scheduler")\n'
            f"scheduler.set_timesteps({cfg.sampler.steps})\n"
            "x = torch.randn(4, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)\n"
            + ("" if content.conditioning == "none" else "labels = torch.tensor([0, 1, 2, 3])\n")
            + "for t in scheduler.timesteps:\n"
            f"    x = scheduler.step(unet(x, t{labels}).sample, t, x).prev_sample\n"
            "images = (x.clamp(-1, 1) + 1) / 2  # in [0, 1]"
        )
    return (
        "## How to get started\n\n"
        f"Serve the registered model (`make serve` serves the `champion` alias; this is version {version} of "
        f"`{name}`) and ask for images over REST:\n\n"
        "```bash\nmake serve SERVE_ALIAS=champion   # http://127.0.0.1:5001\n"
        "curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\\n"
        f'  -d \'{{"dataframe_records": [{rows}], "params": {{"steps": {cfg.sampler.steps}}}}}\'\n```\n\n'
        "Or load the weights with diffusers alone (safetensors, diffusers format):\n\n"
        f"```python\n{code}\n```\n"
    )


def _gates_table(content: RunContent) -> str:
    g = content.gates
    if g is None:
        return "_The release gates were not evaluated for this run._\n"
    rows = []
    for name, x in g.gates.items():
        value = "–" if not x.measured else fmt_num(x.value)
        if x.ci is not None:
            value += f" [{fmt_num(x.ci[0])}, {fmt_num(x.ci[1])}]"
        rows.append([name, value, f"{x.op} {fmt_num(x.threshold)}", x.verdict, x.not_applicable or x.source])
    return md_table(Table("", ["gate", "value [CI]", "must be", "verdict", "what was measured"], rows))


def _environment(content: RunContent) -> str:
    """Hardware and software the run used (training time is the train run's duration in MLflow)."""
    import os
    import platform
    from importlib import metadata

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    t = content.cfg.trainer
    pkgs = ("torch", "diffusers", "lightning", "mlflow", "dvc", "torchmetrics", "fairlearn", "captum")
    return (
        f"- Hardware: `{t.accelerator}` x {t.devices} device(s) on {t.num_nodes} node(s), precision "
        f"`{t.precision}`; this machine: {platform.machine()}, {os.cpu_count()} CPU cores.\n"
        "- Training time and energy: not metered by diffaudit; the `train` run in MLflow records its "
        "duration. On the default CPU config training is minutes, so its footprint is small.\n"
        f"- Software: Python {platform.python_version()}, "
        + ", ".join(f"{p} {version(p)}" for p in pkgs)
        + ".\n"
    )


def _training(content: RunContent) -> str:
    cfg, data = content.cfg, content.results.data
    d = cfg.data
    resized = (
        f" (conf/data asked for {d.requested_image_size}x{d.requested_image_size}; brought to the imported "
        "model's size)"
        if d.requested_image_size is not None and d.requested_image_size != d.image_size
        else ""
    )
    prep = (
        f"Images resized to {d.image_size}x{d.image_size}{resized}, {d.channels} channel(s), scaled to "
        f"[-1, 1]; stratified seeded split (val {d.val_fraction:g}, test {d.test_fraction:g}, "
        f"seed {cfg.seed})"
        + (f"; at most {d.max_per_class} images per class" if d.max_per_class else "")
        + (f"; deliberately skewed: `{data.bias.model_dump()}`" if data and data.bias else "")
        + "."
    )
    if content.model_source is not None:
        proc = f"Not trained by diffaudit: imported from `{content.model_source.path}`."
    else:
        tr = cfg.train
        proc = (
            f"{tr.max_steps} steps of AdamW (lr {tr.lr:g}, weight decay {tr.weight_decay:g}, "
            f"{tr.warmup_steps} warm-up steps, cosine decay), batch {tr.batch_size}, gradient clipping "
            f"{tr.grad_clip:g}, EMA decay "
            f"{tr.ema_decay:g}, condition dropout {tr.cond_drop_prob:g} (classifier-free guidance), "
            f"{_diffusion_line(cfg)}, seed {cfg.seed}."
        )
    return f"### Preprocessing\n\n{prep}\n\n### Training procedure\n\n{proc}\n"


def render_model_card(content: RunContent, lineage: Lineage, record: ReleaseRecord | None = None) -> str:
    """The card as Markdown in the Hugging Face layout (YAML metadata, then the sections), every number read
    from this run's files; the long tables go to the appendix (`render_model_card_appendix`)."""
    cfg = content.cfg
    data = content.results.data
    splits = data.splits if data else {}
    # Names come from the data (a CSV): escaped, since Markdown renders raw HTML.
    groups = {_no_html(a): [_no_html(g) for g in v] for a, v in content.attribute_groups.items()}
    classes = ", ".join(_no_html(c) for c in content.class_names) or "–"
    appendix = Layout.of(cfg).model_card_appendix.name
    parts = [
        _front_matter(content),
        f"# Model card: {cfg.tracking.registered_model_name}\n",
        "_Generated by the `report` stage from this run's metrics; edit the pipeline, not this file._\n",
        "## Model details\n",
        _details(content, lineage, record),
        "## Uses\n",
        "### Direct use\n",
        f"- Research and teaching on training, evaluating and auditing diffusion models (this one: "
        f"{content.conditioning_phrase()}) on `{cfg.data.name}` ({classes}).\n"
        "- Producing sample sets to test measurement code (quality, explainability, fairness, privacy "
        "metrics).\n",
        "### Out-of-scope use\n",
        "- Any decision about a person, or data used to make one.\n"
        f"- Images outside the `{cfg.data.name}` domain, or presented as real data.\n"
        "- Training a production model on its samples without auditing that model in turn.\n"
        "- Deployment of a version that is not the registry's `champion` (its gates did not all pass).\n",
        "## Bias, risks, and limitations\n",
        "The model reproduces its training distribution, including its skews; the fairness audit measures "
        "how far generated group shares drift from it. Memorization measures copying of training images, "
        "which matters as soon as the training data is personal.\n",
        "".join(f"- {c}\n" for c in _caveats(content, record)) or "- None recorded.\n",
        _get_started(content, record),
        "## Training details\n",
        "### Training data\n",
        f"Source: `{data.source if data else cfg.data.name}`, data md5 `{lineage.data_md5 or '–'}`. "
        + (
            "Splits: " + ", ".join(f"{k} {v.n} images" for k, v in splits.items()) + "."
            if splits
            else "_No data card (metrics/data.json) found._"
        )
        + "\n",
        _training(content),
        "## Evaluation\n",
        "### Testing data, factors and metrics\n",
        f"Held-out splits of the same source; samples are judged by an evaluator classifier trained on the "
        f"training split (`metrics/evaluator.json`). Factors: classes ({classes})"
        + (
            "; audited groups " + "; ".join(f"`{a}` ({', '.join(v)})" for a, v in groups.items())
            if groups
            else "; no attribute groups in this dataset"
        )
        + ". Metrics: FID and KID against real test images beside the real-vs-real floor, conditional "
        "accuracy where it applies, fairness discrepancy, bias amplification and per-group quality with "
        "bootstrap intervals, memorization and membership inference.\n",
        "### Results\n",
        _headline(content),
        "".join(
            f"- {s}\n"
            for key in ("quality", "sampler_study", "explain", "fairness", "privacy")
            if (s := finding(key, content))
        ),
        "### Release gates\n",
        _gates_table(content),
        "## Environmental impact\n",
        _environment(content),
        "## Technical specifications\n",
        f"Code: git commit `{lineage.git_commit}`"
        + (f" ({lineage.git_note})" if lineage.git_note else "")
        + f"; model md5 `{lineage.model_md5 or '–'}` (models/diffusion, as dvc.lock records it).\n",
        "## More information\n",
        f"Every table behind these numbers: [{appendix}]({appendix}). The full audit with figures: "
        "`reports/audit.html`.\n",
    ]
    return "\n".join(parts)


def render_model_card_appendix(content: RunContent) -> str:
    """The card's long tables: every quality, sampler-study, fairness, explainability and privacy number."""
    r = content.results
    parts = [
        f"# Model card appendix: {content.cfg.tracking.registered_model_name}\n",
        "_The tables behind MODEL_CARD.md, generated from this run's metrics files._\n",
        "## Quality\n",
        md_tables(r.quality, skip=("sampler",)) if r.quality else _not_run(content, "quality"),
        "## Sampler study\n",
        md_tables(r.sampler_study) if r.sampler_study else _not_run(content, "sampler_study"),
        "## Disaggregated by group (fairness)\n",
        md_tables(r.fairness) if r.fairness else _not_run(content, "fairness"),
        "## Model examination (explainability)\n",
        md_tables(headline_of(r.explain), max_depth=2) if r.explain else _not_run(content, "explain"),
        "## Privacy\n",
        md_tables(r.privacy) if r.privacy else _not_run(content, "privacy"),
    ]
    data = r.data
    train = data.splits.get("train") if data else None
    if train:
        parts += ["## Training data\n", md_tables(train)]
    return "\n".join(parts)


def _diffusion_line(cfg: Any) -> str:
    """The diffusion family and its settings, in words."""
    d = cfg.diffusion
    if d.is_edm:
        return (
            f"EDM (Karras et al. 2022): preconditioned denoiser, sigma_data {d.sigma_data:g}, "
            f"training sigmas log-normal (P_mean {d.p_mean:g}, P_std {d.p_std:g}), "
            f"sampling sigmas {d.sigma_min:g} to {d.sigma_max:g} (rho {d.rho:g})"
        )
    return (
        f"`{d.prediction_type}` objective on a `{d.beta_schedule}` schedule of {d.num_train_timesteps} steps"
    )
