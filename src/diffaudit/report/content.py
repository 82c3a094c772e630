"""What the report and model card are made of: the run's result files (read strictly through their
models in diffaudit.results), images, samples and config. A section whose stage has not run (its file
is absent) says "not run" instead of failing the report; a file that exists and is malformed is a
ResultFileError naming the file and the field.

The tables below walk a typed model (its present keys, in the file's order) and render the two interval
types by type: `Interval` as [low, high], `Estimate` as value [lo, hi].
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffaudit.config.schema import Config
from diffaudit.data.store import META_FILE
from diffaudit.layout import Layout
from diffaudit.models.export import exported_unet_config
from diffaudit.models.imported import SOURCE_RECORD
from diffaudit.results import (
    ExplainMetrics,
    FairnessResult,
    GatesResult,
    PrivacyResult,
    QualityResult,
    ResultFile,
    ResultModel,
    RunResults,
    SamplerStudyResult,
    load_results,
)
from diffaudit.results.applicability import Conditioning, not_applicable
from diffaudit.results.base import read_result
from diffaudit.results.intervals import Estimate, Interval
from diffaudit.results.model_source import ModelSource
from diffaudit.results.quality import QualityRow
from diffaudit.utils.format import fmt_num

IMAGE_SUFFIXES = (".png", ".gif", ".jpg", ".jpeg", ".webp", ".svg")
CONDITIONING_TEXT: dict[Conditioning, str] = {
    "class_cfg": "class-conditional (with a null class: classifier-free guidance)",
    "class": "class-conditional (no null class, so no guidance)",
    "none": "unconditional",
}
NOT_APPLICABLE_LABEL = {"conditional_accuracy": "Conditional accuracy", "cas": "CAS", "guidance": "Guidance"}
MAX_IMAGE_BYTES = 4 << 20


@dataclass(frozen=True)
class Section:
    """A report section fed by one result file and the images matching `plot_globs` under plots/."""

    key: str
    title: str
    model: type[ResultFile] | None
    plot_globs: tuple[str, ...] = ()
    stage: str = ""  # the stage that writes it, named in "not run" messages

    @property
    def metrics_file(self) -> str | None:
        return self.model.FILE if self.model else None


# Where each stage puts its figures (plots/explain/, plots/sampler_study/, plots/audit/).
SECTIONS: tuple[Section, ...] = (
    Section("samples", "Samples per class", None, stage="sample"),
    Section("quality", "Quality", QualityResult, ("quality/**/*",), "evaluate"),
    Section("sampler_study", "Sampler study", SamplerStudyResult, ("sampler_study/**/*",), "sampler_study"),
    Section("explain", "Explainability", ExplainMetrics, ("explain/**/*",), "explain"),
    Section(
        "fairness",
        "Fairness",
        FairnessResult,
        ("fairness/**/*", "audit/*mitigat*", "audit/*fairness*", "audit/*group*", "audit/*bias*"),
        "audit",
    ),
    Section(
        "privacy", "Privacy", PrivacyResult, ("privacy/**/*", "audit/*memoriz*", "audit/*privacy*"), "audit"
    ),
)


@dataclass
class RunContent:
    """Everything the report and the model card read, loaded once."""

    cfg: Config
    results: RunResults  # the typed metrics files (None where a stage has not run)
    images: dict[str, list[Path]]  # section key -> image files
    samples: dict[str, Any] | None  # images/labels/seeds tensors of the sample stage
    class_names: list[str]
    attribute_groups: dict[str, list[str]]
    unet_config: dict[str, Any]
    params_text: str
    model_source: ModelSource | None = None  # models/diffusion/source.json: an imported model's origin

    @property
    def conditioning(self) -> Conditioning:
        """How the audited model is conditioned (diffaudit trains with a null class: `class_cfg`)."""
        return self.model_source.conditioning if self.model_source else "class_cfg"

    def conditioning_phrase(self) -> str:
        return CONDITIONING_TEXT[self.conditioning]

    def model_kind(self) -> str:
        """What the model is, in one phrase (the card's Type row, the report's model section)."""
        how = CONDITIONING_TEXT[self.conditioning]
        if self.model_source is None:
            return f"{how} image diffusion model (diffusers `UNet2DModel`), trained by diffaudit"
        s = self.model_source
        return f"{how} {'latent ' if s.latent else ''}diffusion model trained elsewhere: {s.description}"

    def model_notes(self) -> list[str]:
        """Sentences a reviewer must read about the model: where an imported one came from, whether the
        dataset was resized to it, and which parts of the audit do not apply to it."""
        out = []
        if (s := self.model_source) is not None:
            out.append(
                f"Imported model: {s.path}, content hash {s.md5} (DVC's hash of model.path, as dvc.lock "
                "records it). Not trained by diffaudit: the train stage copied its configs and safetensors "
                "weights."
            )
            if s.latent:
                out.append(
                    f"Latent model: the UNet denoises latents and its {s.vae_class} decodes them; every "
                    "metric is measured on the decoded images, membership inference on the latents."
                )
        d = self.cfg.data
        if d.requested_image_size is not None and d.requested_image_size != d.image_size:
            out.append(
                f"Dataset resized: conf/data asked for {d.requested_image_size}x{d.requested_image_size} "
                f"images; they are brought to the model's {d.image_size}x{d.image_size}."
            )
        out += [f"{NOT_APPLICABLE_LABEL[k]}: {why}." for k, why in not_applicable(self.conditioning).items()]
        return out

    @property
    def gates(self) -> GatesResult | None:
        """The gate verdicts; None: the audit has not run (the one "not run" state of the verdict)."""
        return self.results.gates

    def gates_missing_note(self) -> str:
        return f"{Layout.of(self.cfg).gates} not found: the audit stage has not run"

    def section_data(self, key: str) -> ResultFile | None:
        sec = next(s for s in SECTIONS if s.key == key)
        return self.results.get(sec.model.stem()) if sec.model else None

    def section_ran(self, key: str) -> bool:
        sec = next(s for s in SECTIONS if s.key == key)
        if sec.model is None:
            return self.samples is not None
        return self.section_data(key) is not None or bool(self.images.get(key))


@dataclass
class Lineage:
    """Where the numbers came from: code, data, model, and the MLflow runs that hold them."""

    git_commit: str
    data_md5: str | None
    model_md5: str | None
    samples_md5: str | None
    tracking_uri: str
    experiment_id: str | None = None
    run_id: str | None = None
    run_url: str | None = None
    pipeline_run_id: str | None = None
    pipeline_url: str | None = None
    model_url: str | None = None
    generated_at: str = ""
    git_note: str = ""  # what differs from the commit, in words (utils/lineage.py git_note)


def _read_json(path: Path) -> Any | None:
    """Data and model metadata (not result files): absent or unreadable reads as None."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def find_images(cfg: Config, sec: Section) -> list[Path]:
    """Images of a section: those matching its globs under plots/ (small enough to embed)."""
    plots = Layout.of(cfg).plots_dir
    found: list[Path] = []
    for pattern in sec.plot_globs:
        found += sorted(p for p in plots.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES)
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen and p.is_file() and p.stat().st_size <= MAX_IMAGE_BYTES:
            seen.add(key)
            unique.append(p)
    return unique


def load_content(cfg: Config, params_path: str | Path = "params.yaml") -> RunContent:
    """Read every result file (strictly), images, samples and model config of the run."""
    layout = Layout.of(cfg)
    results = load_results(layout.metrics_dir)
    images = {s.key: find_images(cfg, s) for s in SECTIONS if s.model}
    samples_path = layout.samples
    samples = None
    if samples_path.is_file():
        from diffaudit.utils.io import load_tensors

        samples = load_tensors(samples_path)
    meta = _read_json(layout.prepared / META_FILE) or {}
    unet_config = _read_json(exported_unet_config(layout.diffusion)) or {}
    source_path = layout.diffusion / SOURCE_RECORD
    model_source = read_result(source_path, ModelSource) if source_path.is_file() else None
    params_file = Path(params_path)
    if not params_file.is_file():
        import yaml

        params_text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    else:
        params_text = params_file.read_text()
    return RunContent(
        cfg=cfg,
        results=results,
        images=images,
        samples=samples,
        class_names=list(meta.get("class_names", [])),
        attribute_groups=dict(meta.get("attribute_groups", {})),
        unet_config=unet_config,
        params_text=params_text,
        model_source=model_source,
    )


def headline_of(result: ResultFile) -> dict[str, Any]:
    """A section's headline: the model's HEADLINE keys (dotted) with their typed values, else its
    top-level cells."""
    if not result.HEADLINE:
        return {k: v for k, v in result.entries() if is_cell(v)}
    picked: dict[str, Any] = {}
    for dotted in result.HEADLINE:
        node: Any = result
        for part in dotted.split("."):
            node = dict(node.entries()).get(part) if isinstance(node, ResultModel) else None
        if node is not None:
            picked[dotted] = node
    return picked


def fmt_quality_value(row: QualityRow) -> str:
    """A headline quality value with its interval; FID's interval goes with its bias correction."""
    if row.ci is None:
        return fmt_num(row.value)
    if row.corrected is None:
        return f"{fmt_num(row.value)} {fmt_cell(row.ci)}"
    return f"{fmt_num(row.value)} (bias-corrected {fmt_num(row.corrected)} {fmt_cell(row.ci)})"


def quality_label(quantity: str, space: str) -> str:
    """How the report names a quality headline metric (QualityRow.quantity)."""
    return {
        "fid": f"FID ({space} features)",
        "kid": f"KID ({space} features)",
        "conditional_accuracy": "conditional accuracy",
        "cas": "CAS (classifier trained on generated images)",
    }.get(quantity, quantity)


# ---- typed results -> tables, shared by the HTML report and the Markdown model card ----

MAX_ROWS = 60
SHORT_LIST = 16
ESTIMATE_COLUMN = "value [CI]"


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _scalar(x: Any) -> bool:
    return x is None or isinstance(x, (bool, int, float, str))


# How the report names each interval method (utils/intervals.py).
METHOD_LABELS = {
    "percentile": "percentile bootstrap",
    "percentile_widened": "percentile bootstrap, widened to its estimate",
    "wilson": "Wilson",
    "order_statistic": "order statistics",
    "half_sample": "half-sample",
    "inversion": "test inversion",
}


def fmt_cell(x: Any) -> str:
    if isinstance(x, Interval):
        return f"[{fmt_num(x.low)}, {fmt_num(x.high)}] ({METHOD_LABELS[x.method]})"
    if isinstance(x, Estimate):
        if x.method is None:  # no interval could be made
            return fmt_num(x.value)
        return f"{fmt_num(x.value)} [{fmt_num(x.ci[0])}, {fmt_num(x.ci[1])}] ({METHOD_LABELS[x.method]})"
    if isinstance(x, list):
        if len(x) <= SHORT_LIST:
            return "[" + ", ".join(fmt_cell(v) for v in x) + "]"
        nums = [v for v in x if _num(v)]
        if len(nums) == len(x):
            lo, hi = fmt_num(min(nums)), fmt_num(max(nums))
            return f"{len(x)} values: {fmt_num(x[0])} → {fmt_num(x[-1])} (min {lo}, max {hi})"
        return f"{len(x)} items"
    if isinstance(x, str) and len(x) > 200:
        return x[:200] + "…"
    return fmt_num(x)


def is_cell(x: Any) -> bool:
    """True for what fits in one table cell: scalars, the two interval types, lists of scalars."""
    if _scalar(x) or type(x) in (Interval, Estimate):
        return True
    return isinstance(x, list) and all(_scalar(v) for v in x)


def entries(obj: Any) -> list[tuple[str, Any]] | None:
    """The (key, value) pairs of a mapping-like value: a model's present keys (an estimate with more
    fields: the estimate and its interval as one cell, then the rest), or a dict's items; None otherwise."""
    if isinstance(obj, Estimate) and type(obj) is not Estimate:
        rest = [(k, v) for k, v in obj.entries() if k not in ("value", "ci", "method")]
        return [(ESTIMATE_COLUMN, obj.estimate()), *rest]
    if isinstance(obj, ResultModel):
        return obj.entries()
    if isinstance(obj, dict):
        return [(str(k), v) for k, v in obj.items()]
    return None


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    more: int = 0  # rows left out


def _table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
    return Table(title, headers, rows[:MAX_ROWS], max(0, len(rows) - MAX_ROWS))


def _flat(v: Any) -> list[tuple[str, Any]] | None:
    """The entries of a mapping whose values are all cells (a table row), else None."""
    sub = None if is_cell(v) else entries(v)
    return sub if sub and all(is_cell(x) for _, x in sub) else None


def to_tables(
    obj: Any, title: str = "", depth: int = 0, skip: tuple[str, ...] = (), max_depth: int = 5
) -> list[Table]:
    """A typed result (or any part of it) as tables: cells as key/value rows, sibling flat mappings
    with the same keys as one matrix, lists of flat mappings and lists of lists as one table each,
    anything deeper recursively under a dotted title (down to `max_depth` levels)."""
    if depth > max_depth:
        return []
    if is_cell(obj):
        return [Table(title, ["value"], [[fmt_cell(obj)]])]
    out: list[Table] = []
    items = entries(obj)
    if items is not None:
        items = [(k, v) for k, v in items if k not in skip]
        scalars = [(k, v) for k, v in items if is_cell(v)]
        flat = {k: sub for k, v in items if (sub := _flat(v)) is not None}
        if scalars:
            out.append(_table(title, ["key", "value"], [[k, fmt_cell(v)] for k, v in scalars]))
        groups: dict[tuple[str, ...], list[str]] = {}
        for k, sub in flat.items():
            groups.setdefault(tuple(c for c, _ in sub), []).append(k)
        for cols, keys in groups.items():
            if len(keys) == 1 and len(flat) > 1:
                name = f"{title}.{keys[0]}" if title else keys[0]
                out.append(_table(name, ["key", "value"], [[c, fmt_cell(x)] for c, x in flat[keys[0]]]))
                continue
            out.append(_table(title, ["", *cols], [[k] + [fmt_cell(x) for _, x in flat[k]] for k in keys]))
        for k, v in items:
            if not is_cell(v) and k not in flat:
                out += to_tables(v, f"{title}.{k}" if title else k, depth + 1, max_depth=max_depth)
        return out
    if isinstance(obj, list):
        rows = [_flat(v) for v in obj]
        if obj and all(r is not None for r in rows):
            cols: list[str] = []
            for r in rows:
                cols += [c for c, _ in r or [] if c not in cols]
            cells = [dict(r or []) for r in rows]
            return [_table(title, cols, [[fmt_cell(c[k]) if k in c else "" for k in cols] for c in cells])]
        if obj and all(isinstance(v, list) and all(_scalar(x) for x in v) for v in obj):
            width = max(len(v) for v in obj)
            rows_ = [[str(i), *map(fmt_cell, v)] for i, v in enumerate(obj)]
            return [_table(title, ["", *map(str, range(width))], rows_)]
        for i, v in enumerate(obj[:20]):
            out += to_tables(v, f"{title}[{i}]", depth + 1, max_depth=max_depth)
        return out
    return [Table(title, ["value"], [[fmt_cell(str(obj))]])]
