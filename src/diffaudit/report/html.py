"""reports/audit.html: one self-contained page (inline CSS, base64 images, no script, no network)
that a reviewer reads top to bottom: the verdict first, then the evidence, then where it came from.
A section whose stage has not run says so instead of disappearing, so a gap is visible."""

from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path
from typing import Any

from PIL import Image

from diffaudit.layout import Layout
from diffaudit.report.content import (
    SECTIONS,
    Lineage,
    RunContent,
    Section,
    Table,
    fmt_cell,
    fmt_quality_value,
    headline_of,
    quality_label,
    to_tables,
)
from diffaudit.report.findings import figure_caption, finding, kid_note
from diffaudit.results import FairnessResult, PrivacyResult, QualityResult, ReleaseRecord, ResultFile
from diffaudit.results.applicability import LABELS_FROM_EVALUATOR, not_applicable
from diffaudit.utils.format import fmt_num
from diffaudit.utils.images import grid

MIME = {
    ".png": "image/png",
    ".gif": "image/gif",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
}

CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232a;
background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{margin:0 0 4px}h2{border-bottom:2px solid #d8dde3;padding-bottom:4px;margin-top:36px}
section{background:#fff;border:1px solid #e1e5ea;border-radius:8px;padding:4px 20px 16px;margin:18px 0}
nav a{margin-right:12px}nav .notrun{color:#8a94a0}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}
th,td{border:1px solid #dfe3e8;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5}caption{text-align:left;font-weight:600;padding:4px 0;white-space:nowrap}
.banner{padding:12px 16px;border-radius:6px;font-size:17px;font-weight:600;margin:12px 0}
.pass{background:#e3f6e8;color:#14532d}.fail{background:#fde8e8;color:#7f1d1d}.warn{background:#fff4d6;color:#713f12}.na{background:#eef0f3;color:#374151}
td.pass,td.fail,td.warn,td.na{font-weight:600}
.notrun-box{background:#f3f4f6;color:#4b5563;padding:10px 14px;border-radius:6px}
figure{display:inline-block;margin:6px 10px 10px 0;vertical-align:top}
figcaption{font-size:12px;color:#555;max-width:640px;overflow-wrap:anywhere}
img{image-rendering:pixelated;max-width:100%}
.strip td{vertical-align:middle}
pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12px;max-height:480px}
.muted{color:#6b7280;font-size:13px}
.finding{font-size:15px;border-left:4px solid #4c78a8;padding:6px 12px;background:#f5f8fc}
"""


def data_uri(path: Path) -> str:
    mime = MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def pil_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


def _figure(src: str, caption: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return (
        f'<figure><img src="{src}" alt="{escape(caption)}"{w}>'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _table_html(t: Table) -> str:
    cap = f"<caption>{escape(t.title)}</caption>" if t.title else ""
    head = "".join(f"<th>{escape(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    more = f'<p class="muted">… {t.more} more rows in the JSON file</p>' if t.more else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def tables_html(obj: Any, skip: tuple[str, ...] = (), max_depth: int = 5) -> str:
    return "".join(_table_html(t) for t in to_tables(obj, skip=skip, max_depth=max_depth))


def _images_html(paths: list[Path], root: Path, limit: int, content: RunContent) -> str:
    out = []
    for p in paths[:limit]:
        try:
            where = str(p.resolve().relative_to(root.resolve()))
        except ValueError:
            where = p.name
        what = figure_caption(p.stem, content)
        out.append(_figure(data_uri(p), f"{what} ({where})" if what else where))
    if len(paths) > limit:
        out.append(f'<p class="muted">{len(paths) - limit} more images under plots/ (not embedded)</p>')
    return "".join(out)


def _not_run(sec: Section, content: RunContent) -> str:
    where = Layout.of(content.cfg).metrics_dir / (sec.metrics_file or "")
    what = f"{where} not found" if sec.metrics_file else "no samples found"
    return (
        f'<div class="notrun-box" data-status="not-run"><strong>Not run.</strong> {escape(what)}: '
        f"the <code>{escape(sec.stage)}</code> stage has not produced it for this run.</div>"
    )


def _verdict(content: RunContent, record: ReleaseRecord | None) -> str:
    g = content.gates
    if record is not None and record.promoted:
        banner = ("pass", f"RELEASED: {record.model_name} v{record.candidate_version} is the champion")
    elif record is not None:
        keep = f"champion stays v{record.champion_version}" if record.champion_version else "no champion"
        banner = (
            "fail",
            f"REFUSED: {record.model_name} v{record.candidate_version} stays candidate ({keep})",
        )
    elif g is None:
        banner = ("warn", "NOT AUDITED: gates not run, model not registered")
    else:
        banner = ("pass" if g.passed else "fail", "GATES PASS" if g.passed else "GATES FAIL")
    parts = [f'<div class="banner {banner[0]}" id="verdict-banner">{escape(banner[1])}</div>']
    if record is not None:
        parts.append("<ul>" + "".join(f"<li>{escape(r)}</li>" for r in record.reasons) + "</ul>")
    if g is not None:
        applicable = g.applicable()
        summary = (
            f"{len(applicable) - len(g.failed)} of {len(applicable)} applicable gates pass"
            + (f"; {len(g.not_applicable)} not applicable" if g.not_applicable else "")
            if g.gates
            else "no gates configured"
        )
        rows = []
        for name, gate in g.gates.items():
            if gate.not_applicable is not None:
                rows.append(
                    f"<tr><td>{escape(name)}</td><td>–</td><td>{escape(fmt_num(gate.threshold))}</td>"
                    f"<td class='na'>n/a</td><td>{escape(gate.not_applicable)}: neither passed nor failed"
                    "</td></tr>"
                )
                continue
            cls, word = ("pass", "pass") if gate.passed else ("fail", "FAIL")
            mitigated = g.with_mitigation.get(name) if g.with_mitigation else None
            after = "" if mitigated is None else f"; with mitigation: {'pass' if mitigated else 'FAIL'}"
            crossing = f"; {gate.crossing_note}" if gate.crossing_note else ""
            interval = "" if gate.ci is None else f" [{fmt_num(gate.ci[0])}, {fmt_num(gate.ci[1])}]"
            detail = f"must be {gate.op} {fmt_num(gate.threshold)}; {gate.source}{crossing}{after}"
            rows.append(
                f"<tr><td>{escape(name)}</td><td>{escape(fmt_num(gate.value) + interval)}</td>"
                f"<td>{escape(fmt_num(gate.threshold))}</td><td class='{cls}'>{word}</td>"
                f"<td>{escape(detail)}</td></tr>"
            )
        parts.append(
            f"<h3>Gates ({escape(summary)})</h3><table id='gates'><thead><tr><th>gate</th><th>value</th>"
            f"<th>threshold</th><th>verdict</th><th>detail</th></tr></thead><tbody>{''.join(rows)}"
            "</tbody></table>"
        )
    else:
        parts.append(
            f'<div class="notrun-box" data-status="not-run"><strong>Gates not run.</strong> '
            f"{escape(content.gates_missing_note())}</div>"
        )
    if record is not None and record.comparisons:
        rows = "".join(
            f"<tr><td>{escape(c.metric)}</td><td>{escape(fmt_num(c.candidate))}</td>"
            f"<td>{escape(fmt_num(c.reference))}</td><td>{escape(c.mode)}</td>"
            f"<td>{c.tolerance:g}{' (relative)' if c.relative else ''}</td>"
            f"<td class='{'pass' if c.ok else 'fail'}'>{'ok' if c.ok else 'REGRESSED'}</td></tr>"
            for c in record.comparisons
        )
        parts.append(
            f"<h3>Against the champion (v{escape(str(record.previous_champion_version))})</h3>"
            "<table id='comparison'><thead><tr><th>metric</th><th>candidate</th><th>champion</th>"
            f"<th>better</th><th>tolerance</th><th>verdict</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    return "".join(parts)


def _samples(content: RunContent) -> str:
    s = content.samples or {}
    images, labels = s["images"], s["labels"]
    quality = content.results.quality
    per_class = quality.conditional_accuracy_per_class if quality else {}
    names = content.class_names or [str(c) for c in range(int(labels.max()) + 1)]
    rows = []
    for c, name in enumerate(names):
        sel = images[labels == c][:10]
        if not len(sel):
            continue
        acc = per_class.get(name)
        acc_txt = f"conditional accuracy {fmt_num(acc)}" if acc is not None else ""
        rows.append(
            f"<tr><th>{escape(name)}</th><td><img src='{pil_uri(grid(sel, ncol=10, scale=3))}' "
            f"alt='samples of class {escape(name)}'></td><td class='muted'>{escape(acc_txt)}</td></tr>"
        )
    cfg = content.cfg.sampler
    unconditional = quality is not None and quality.labels == LABELS_FROM_EVALUATOR
    rows_are = (
        "the first 10 images the evaluator reads as that class (an unconditional model: no label "
        "conditioned them)"
        if unconditional
        else "the first 10 images conditioned on that class"
    )
    guidance = (
        f"guidance scale {cfg.guidance_scale:g}"
        if "guidance" not in not_applicable(content.conditioning)
        else "no guidance"
    )
    head = (
        f"<p>{len(labels)} images, {escape(cfg.name)} sampler, {cfg.steps} steps, {guidance}; each row: "
        f"{rows_are}.</p>"
    )
    real = Layout.of(content.cfg).real_grid
    real_cap = f"{figure_caption(real.stem, content)} ({real.name})"
    real_html = (
        f"<h3>Real training images, for comparison</h3>{_figure(data_uri(real), real_cap, 420)}"
        if real.is_file()
        else ""
    )
    return f"{head}<table class='strip'><tbody>{''.join(rows)}</tbody></table>{real_html}"


def _fig_uri(fig: Any) -> str:
    """A matplotlib figure as an inline PNG (closed afterwards: reports render many)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


def _bar_chart(values: dict[str, float], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=100)
    ax.bar(list(values), list(values.values()), color="#4c78a8")
    # Zoomed to the bars (a 0-1 axis hides differences between classes at 0.95 and 0.99), axis marked.
    low = min(values.values(), default=0.0)
    ax.set_ylim(max(0.0, low - 0.1 * (1 - low) - 0.02), 1.0)
    ax.set_ylabel("share (axis zoomed)", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)
    return _figure(_fig_uri(fig), title)


def _quality(q: QualityResult) -> str:
    rows = []
    for r in q.rows():
        gap = "" if r.value is None or r.floor is None else f"{r.value - r.floor:+.4g} over the floor"
        spread = "" if r.spread is None else f"± {fmt_num(r.spread)} (std over subsets)"
        note = {
            "fid": gap,
            "kid": spread,
            "conditional_accuracy": "evaluator agrees with the conditioning label",
        }.get(r.quantity, "")
        rows.append(
            f"<tr><td>{escape(quality_label(r.quantity, q.feature_space))}</td>"
            f"<td>{escape(fmt_quality_value(r))}</td><td>{escape(fmt_num(r.floor))}</td>"
            f"<td>{escape(fmt_num(r.n))}</td><td>{escape(note)}</td></tr>"
        )
    for key, why in q.not_applicable.items():
        rows.append(
            f"<tr data-status='not-applicable'><td>{escape(quality_label(key, q.feature_space))}</td>"
            f"<td>not applicable</td><td>–</td><td>–</td><td>{escape(why)}</td></tr>"
        )
    head = (
        "<p>Floor: the same metric between real training and real test images of the same count, "
        "the best a generator can expect in this feature space.</p>"
        "<table id='quality-headline'><thead><tr><th>metric</th><th>value [95% CI]</th>"
        "<th>real-vs-real floor</th><th>n</th><th>note</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    per_class = q.conditional_accuracy_per_class
    chart = _bar_chart(dict(per_class), "conditional accuracy per class") if per_class else ""
    note = f"<p class='muted' id='kid-note'>{escape(kid_note(q))}</p>" if kid_note(q) else ""
    return head + note + _vendi(q) + chart


def _vendi(q: QualityResult) -> str:
    """The per-class Vendi scores beside their floors in one line, the lowest ratio named."""
    gen, real = q.vendi_per_class, q.vendi_floor_per_class
    shared = [c for c in gen if c in real and real[c] > 0]
    if not shared:
        return ""
    worst = min(shared, key=lambda c: gen[c] / real[c])
    return (
        "<p id='vendi'>Vendi score per class (the effective number of distinct images; floor: as many real "
        f"training images of the class): generated {fmt_num(min(gen[c] for c in shared))} to "
        f"{fmt_num(max(gen[c] for c in shared))}, real {fmt_num(min(real[c] for c in shared))} to "
        f"{fmt_num(max(real[c] for c in shared))}; lowest against its floor: class {escape(worst)} "
        f"({fmt_num(gen[worst])} vs {fmt_num(real[worst])}). A collapsed class scores far below its "
        "floor.</p>"
    )


def _model(content: RunContent) -> str:
    """What was audited: the model's kind, an imported model's origin and configs, what does not apply."""
    notes = "".join(f"<li>{escape(n)}</li>" for n in content.model_notes())
    parts = [f"<p id='model-kind'>{escape(content.model_kind())}.</p>"]
    if notes:
        parts.append(f"<ul id='model-notes'>{notes}</ul>")
    if (s := content.model_source) is not None:
        for title, cfg in (("model_index.json", s.model_index), ("unet/config.json", s.unet_config)):
            if cfg is not None:
                parts.append(
                    f"<details><summary>{escape(title)} of the imported model</summary>"
                    f"<pre>{escape(json.dumps(cfg, indent=2))}</pre></details>"
                )
    return "".join(parts)


def _lineage(content: RunContent, lin: Lineage, record: ReleaseRecord | None) -> str:
    def link(url: str | None, text: str | None) -> str:
        if not text:
            return "–"
        return f"<a href='{escape(url)}'>{escape(text)}</a>" if url else escape(text)

    rows = [
        ("git commit", escape(lin.git_commit + (f" ({lin.git_note})" if lin.git_note else ""))),
        ("data md5 (data/prepared, as dvc.lock)", escape(lin.data_md5 or "–")),
        ("model md5 (models/diffusion, as dvc.lock)", escape(lin.model_md5 or "–")),
        ("samples md5 (samples/, as dvc.lock)", escape(lin.samples_md5 or "–")),
        ("MLflow tracking", escape(lin.tracking_uri)),
        ("MLflow report run", link(lin.run_url, lin.run_id)),
        ("MLflow pipeline run", link(lin.pipeline_url, lin.pipeline_run_id)),
        (
            "registered model",
            link(
                lin.model_url,
                f"{record.model_name} v{record.candidate_version}"
                if record and record.candidate_version
                else None,
            ),
        ),
        ("generated", escape(lin.generated_at)),
    ]
    body = "".join(f"<tr><th>{k}</th><td id='lineage-{i}'>{v}</td></tr>" for i, (k, v) in enumerate(rows))
    data = content.results.data
    data_html = f"<h3>Data card</h3>{tables_html(data)}" if data else ""
    return (
        f"<table id='lineage'><tbody>{body}</tbody></table>{data_html}"
        f"<details><summary>Composed config (params.yaml)</summary><pre>{escape(content.params_text)}</pre>"
        "</details>"
    )


def _error_bar_chart(
    groups: list[str], series: dict[str, tuple[list[float], list[list[float]] | None]], title: str
) -> str:
    """Grouped bars with interval whiskers (the distributions the fairness audit compares)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(min(9.0, max(4.0, 0.3 * len(groups) * len(series))), 2.8), dpi=100)
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (name, (vals, ci)) in enumerate(series.items()):
        yerr = None
        if ci:
            lo = [max(0.0, v - c[0]) for v, c in zip(vals, ci, strict=False)]
            hi = [max(0.0, c[1] - v) for v, c in zip(vals, ci, strict=False)]
            yerr = [lo, hi]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, yerr=yerr, capsize=2, label=name)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _figure(_fig_uri(fig), title)


def _fairness_distributions(f: FairnessResult) -> str:
    """Per attribute: reference vs generated shares (raw and error-corrected) with their intervals."""
    out = []
    estimates = ("raw", "corrected")
    for attr, rep in f.representation.items():
        series: dict[str, tuple[list[float], list[list[float]] | None]] = {"reference": (rep.p_ref, None)}
        series |= {f"generated ({est})": (rep.p_gen(est), rep.p_gen_ci(est)) for est in estimates}
        cols = ["group", "p_ref", *(f"p_gen {est} [CI]" for est in estimates)]
        rows = [
            [
                g,
                fmt_num(rep.p_ref[i]),
                *(f"{fmt_num(rep.p_gen(est)[i])} {fmt_cell(rep.p_gen_ci(est)[i])}" for est in estimates),
            ]
            for i, g in enumerate(rep.groups)
        ]
        fd_txt = "; ".join(
            f"FD ({est}) {fmt_cell(rep.discrepancies(est).fd_l2.estimate())}" for est in estimates
        )
        out.append(_table_html(Table(f"{attr}: generated vs reference shares ({fd_txt})", cols, rows)))
        out.append(_error_bar_chart(rep.groups, series, f"{attr}: group shares with intervals"))
    return "".join(out)


def _section_body(sec: Section, data: ResultFile | None, content: RunContent, max_images: int) -> str:
    root = Layout.of(content.cfg).metrics_dir.parent
    body = ""
    if data is None:
        body += f'<p class="muted">{escape(sec.metrics_file or "")} not found; figures only.</p>'
    elif isinstance(data, QualityResult):
        body += _quality(data)
    else:
        head = headline_of(data)
        if isinstance(data, PrivacyResult):
            head = {}
            for space, m in data.memorization.items():
                head[space] = {k: v for k, v in m.entries() if k != "closest_pairs"}
                if (n := data.near_copies.get(space)) is not None:
                    head[space]["near copies (DCR)"] = {
                        "threshold": n.threshold,
                        "percentile": n.percentile,
                        "flagged": n.fraction,
                        "held-out false alarm": n.heldout.false_alarm,
                    }
            body += (
                f"<p>Memorized: generated images whose nearest training image is much closer than the "
                f"second nearest (d1/d2 &lt; {fmt_num(data.ratio)}). Near copies: generated images closer "
                f"to a training image than all but the closest held-out real images are (DCR below the "
                f"threshold; the false alarm is measured on held-out images left out of it).</p>"
            )
            if (mia := data.membership) is not None:
                h = mia.headline
                head["membership inference"] = {
                    "attack": f"{h.attack}{' (reversed)' if h.reversed else ''} at t={h.timestep}",
                    "AUC": h.auc,
                    "TPR at 1% FPR": h.tpr_at_1pct_fpr,
                    "members / non-members": f"{h.n_members} / {h.n_nonmembers} (held-out half)",
                }
                body += (
                    f"<p>Membership inference: can an attacker tell the {mia.n_members} training images "
                    f"from as many held-out ones by the model's denoising error? AUC "
                    f"{escape(fmt_cell(h.auc))} (0.5: no better than chance), the strongest attack chosen "
                    "on one half of each set and measured on the other.</p>"
                )
        if head:
            body += f"<h3>Headline</h3>{tables_html(head, max_depth=2)}"
        if isinstance(data, FairnessResult):
            body += "<h3>Distributions</h3>" + _fairness_distributions(data)
    imgs = content.images.get(sec.key, [])
    if imgs:
        body += f"<h3>Figures</h3>{_images_html(imgs, root, max_images, content)}"
    if data is not None:
        skip = ("sampler",) if sec.key == "quality" else ()
        body += (
            f"<details><summary>All numbers ({escape(sec.metrics_file or '')})</summary>"
            f"{tables_html(data, skip=skip)}</details>"
        )
    return body


def render_html(
    content: RunContent, lineage: Lineage, record: ReleaseRecord | None = None, max_images: int = 24
) -> str:
    """The whole page as a string; every image inline, so the file can be mailed or archived alone."""
    sections: list[tuple[str, str, bool, str]] = [("verdict", "Verdict", True, _verdict(content, record))]
    for sec in SECTIONS:
        ran = content.section_ran(sec.key)
        if not ran:
            body = _not_run(sec, content)
        elif sec.key == "samples":
            body = _samples(content)
        else:
            body = _section_body(sec, content.section_data(sec.key), content, max_images)
        if ran and (said := finding(sec.key, content)):
            body = f"<p class='finding' id='finding-{sec.key}'>{escape(said)}</p>{body}"
        sections.append((sec.key, sec.title, ran, body))
    sections.insert(1, ("model", "Model", True, _model(content)))
    sections.append(("lineage", "Config and lineage", True, _lineage(content, lineage, record)))
    nav = "".join(
        f"<a href='#{k}' class='{'' if ran else 'notrun'}'>{escape(t)}{'' if ran else ' (not run)'}</a>"
        for k, t, ran, _ in sections
    )
    body = "".join(
        f"<section id='{k}' data-status='{'ok' if ran else 'not-run'}'><h2>{escape(t)}</h2>{b}</section>"
        for k, t, ran, b in sections
    )
    name = content.cfg.tracking.registered_model_name
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        "<link rel='icon' href='data:,'>"
        f"<title>diffaudit audit report: {escape(name)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>Audit report: {escape(name)}</h1>"
        f"<p class='muted'>{escape(content.cfg.data.name)} · commit {escape(lineage.git_commit[:12])} · "
        f"{escape(lineage.generated_at)}</p><nav>{nav}</nav>{body}</main></body></html>\n"
    )


def mark_revoked(page: str, reasons: list[str]) -> str:
    """Put a revocation banner above the verdict of an already written report."""
    items = "".join(f"<li>{escape(r)}</li>" for r in reasons)
    note = (
        f"<div class='banner fail' id='revoked'>REVOKED after the report: not the champion</div>"
        f"<ul>{items}</ul>"
    )
    return page.replace("<section id='verdict'", note + "<section id='verdict'", 1)
