"""What the report and model card are made of: the run's metrics files, gate verdicts and images,
read tolerantly so a section whose stage has not run says "not run" instead of failing the report.

The audit stages own their JSON layouts; this module only assumes JSON objects, reads gates in
the few shapes a verdict file plausibly takes, and turns any other JSON into plain tables.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffaudit.config.schema import Config
from diffaudit.utils.format import fmt_num

IMAGE_SUFFIXES = (".png", ".gif", ".jpg", ".jpeg", ".webp", ".svg")
MAX_IMAGE_BYTES = 4 << 20


@dataclass(frozen=True)
class Section:
    """A report section fed by one metrics file and the images matching `plot_globs` under plots/."""

    key: str
    title: str
    metrics_file: str | None
    plot_globs: tuple[str, ...] = ()
    stage: str = ""  # the stage that writes it, named in "not run" messages


# Where each stage puts its figures (plots/explain/, plots/sampler_study/, plots/audit/).
SECTIONS: tuple[Section, ...] = (
    Section("samples", "Samples per class", None, stage="sample"),
    Section("quality", "Quality", "quality.json", ("quality/**/*",), "evaluate"),
    Section("sampler_study", "Sampler study", "sampler_study.json", ("sampler_study/**/*",), "sampler_study"),
    Section("explain", "Explainability", "explain.json", ("explain/**/*",), "explain"),
    Section("fairness", "Fairness", "fairness.json",
            ("fairness/**/*", "audit/*mitigat*", "audit/*fairness*", "audit/*group*", "audit/*bias*"), "audit"),
    Section("privacy", "Privacy", "privacy.json", ("privacy/**/*", "audit/*memoriz*", "audit/*privacy*"), "audit"),
)


@dataclass
class Gate:
    name: str
    passed: bool | None  # None: no verdict
    value: Any = None
    threshold: Any = None
    detail: str = ""
    skipped: bool = False  # the audit said it could not judge (e.g. too few samples)


@dataclass
class GateVerdict:
    ran: bool
    passed: bool
    gates: list[Gate] = field(default_factory=list)
    note: str = ""

    @property
    def failed(self) -> list[Gate]:
        return [g for g in self.gates if g.passed is False]


_PASS_KEYS = ("passed", "pass", "ok", "success")
_VALUE_KEYS = ("value", "actual", "observed", "measured")
_THRESHOLD_KEYS = ("threshold", "limit", "max", "min", "bound")


def _gate_from(name: str, entry: Any) -> Gate | None:
    if isinstance(entry, bool):
        return Gate(name, entry)
    if not isinstance(entry, dict):
        return None
    passed: bool | None = next((entry[k] for k in _PASS_KEYS if isinstance(entry.get(k), bool)), None)
    status = str(entry.get("status", entry.get("verdict", ""))).lower()
    if passed is None and status in ("pass", "passed", "ok"):
        passed = True
    elif passed is None and status in ("fail", "failed"):
        passed = False
    if passed is None and status not in ("skip", "skipped", "not run") and not any(
        k in entry for k in (*_VALUE_KEYS, *_THRESHOLD_KEYS)
    ):
        return None  # not a gate entry (e.g. a config echo)
    value = next((entry[k] for k in _VALUE_KEYS if k in entry), None)
    threshold = next((entry[k] for k in _THRESHOLD_KEYS if k in entry), None)
    op = entry.get("op") or entry.get("comparison") or entry.get("direction")
    detail = "; ".join(str(x) for x in (f"must be {op} {fmt_num(threshold)}" if op else None,
                                        entry.get("source"), entry.get("reason"), entry.get("message")) if x)
    skipped = passed is None and status in ("skip", "skipped", "not run")
    if skipped:
        detail = (detail + f" ({status})").strip()
    return Gate(str(entry.get("name", entry.get("gate", name))), passed, value, threshold, detail, skipped)


def parse_gates(data: Any) -> GateVerdict:
    """A GateVerdict from metrics/gates.json in any of: {"passed", "gates": {name: entry}},
    {"gates": [entry with "name"]}, or {name: entry}; an entry holds passed/pass/status and
    value/threshold. An overall boolean in the file wins; otherwise every gate must pass, and a
    gate without a verdict does not count as passing."""
    if not isinstance(data, dict):
        return GateVerdict(True, False, note="gates file is not a JSON object")
    container = next((data[k] for k in ("gates", "verdicts", "results", "checks") if k in data), data)
    items = container.items() if isinstance(container, dict) else (
        (str(e.get("name", i)) if isinstance(e, dict) else str(i), e) for i, e in enumerate(container or [])
    )
    gates = [g for name, entry in items if name not in _PASS_KEYS and (g := _gate_from(name, entry))]
    overall = next((data[k] for k in ("passed", "all_passed", "pass", "ok") if isinstance(data.get(k), bool)), None)
    if overall is None:
        judged = [g for g in gates if not g.skipped]
        overall = bool(judged) and all(g.passed is True for g in judged)
    return GateVerdict(True, bool(overall), gates)


@dataclass
class RunContent:
    """Everything the report and the model card read, loaded once."""

    cfg: Config
    metrics: dict[str, Any]  # file stem -> parsed JSON (only the files that exist)
    gates: GateVerdict
    images: dict[str, list[Path]]  # section key -> image files
    samples: dict[str, Any] | None  # images/labels/seeds tensors of the sample stage
    class_names: list[str]
    attribute_groups: dict[str, list[str]]
    unet_config: dict[str, Any]
    params_text: str

    def section_ran(self, key: str) -> bool:
        sec = next(s for s in SECTIONS if s.key == key)
        if sec.metrics_file is None:
            return self.samples is not None
        return sec.metrics_file.removesuffix(".json") in self.metrics or bool(self.images.get(key))


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


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _root_of(cfg: Config) -> Path:
    return Path(cfg.paths.metrics).parent


def resolve_image(ref: str, cfg: Config) -> Path | None:
    """An image path named inside a metrics file, relative to the working directory or the run root."""
    if not ref.lower().endswith(IMAGE_SUFFIXES) or len(ref) > 500:
        return None
    for cand in (Path(ref), _root_of(cfg) / ref, Path(cfg.paths.plots) / ref):
        if cand.is_file():
            return cand
    return None


def _referenced_images(data: Any, cfg: Config, out: list[Path]) -> None:
    if isinstance(data, dict):
        for v in data.values():
            _referenced_images(v, cfg, out)
    elif isinstance(data, list):
        for v in data[:200]:
            _referenced_images(v, cfg, out)
    elif isinstance(data, str) and (p := resolve_image(data, cfg)):
        out.append(p)


def find_images(cfg: Config, sec: Section, data: Any) -> list[Path]:
    """Images of a section: those its metrics file names, then those matching its globs under plots/."""
    plots = Path(cfg.paths.plots)
    found: list[Path] = []
    _referenced_images(data, cfg, found)
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
    """Read every metrics file, the gate verdicts, images, samples and model config of the run."""
    metrics_dir = Path(cfg.paths.metrics)
    metrics = {p.stem: d for p in sorted(metrics_dir.glob("*.json")) if (d := _read_json(p)) is not None}
    gates_data = metrics.get("gates")
    gates = parse_gates(gates_data) if gates_data is not None else GateVerdict(
        False, False, note=f"{metrics_dir / 'gates.json'} not found: the audit stage has not run")
    images = {s.key: find_images(cfg, s, metrics.get((s.metrics_file or "").removesuffix(".json")))
              for s in SECTIONS if s.metrics_file}
    samples_path = Path(cfg.paths.samples) / "samples.safetensors"
    samples = None
    if samples_path.is_file():
        from diffaudit.utils.io import load_tensors

        samples = load_tensors(samples_path)
    meta = _read_json(Path(cfg.paths.data) / "prepared" / "meta.json") or {}
    unet_config = _read_json(Path(cfg.paths.models) / "diffusion" / "unet" / "config.json") or {}
    params_file = Path(params_path)
    if not params_file.is_file():
        import yaml

        params_text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    else:
        params_text = params_file.read_text()
    return RunContent(
        cfg=cfg, metrics=metrics, gates=gates, images=images, samples=samples,
        class_names=list(meta.get("class_names", [])), attribute_groups=dict(meta.get("attribute_groups", {})),
        unet_config=unet_config, params_text=params_text,
    )


# What a section shows before its figures when its file has no "headline"/"summary" of its own.
HEADLINE_KEYS: dict[str, tuple[str, ...]] = {
    "explain": ("commitment", "emergence", "guidance", "attribution.ig_convergence_delta", "spectrum"),
}


def headline_of(key: str, data: Any) -> Any:
    """A section's headline: the file's own headline/summary, its configured keys, else top-level scalars."""
    if not isinstance(data, dict):
        return data
    for k in ("headline", "summary", "findings"):
        if k in data:
            return data[k]
    picked: dict[str, Any] = {}
    for dotted in HEADLINE_KEYS.get(key, ()):
        node: Any = data
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            picked[dotted] = node
    return picked or {k: v for k, v in data.items() if is_cell(v)} or None


def metric_value(metrics: dict[str, Any], name: str) -> float | None:
    """`quality.fid_evaluator` -> metrics["quality"]["fid_evaluator"] as a finite float, else None."""
    stem, _, key = name.partition(".")
    node: Any = metrics.get(stem)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
        return None
    return float(node)


# ---- JSON -> tables, shared by the HTML report and the Markdown model card ----

_CENTRAL = ("value", "mean", "estimate", "point", "median")
_LOWER = ("lo", "low", "lower", "ci_low", "ci_lo", "lower_95", "ci_lower")
_UPPER = ("hi", "high", "upper", "ci_high", "ci_hi", "upper_95", "ci_upper")
_INTERVAL_LISTS = ("ci", "ci95", "interval", "ci_95")
_INTERVAL_EXTRAS = ("n", "level", "alpha", "std")
MAX_ROWS = 60
SHORT_LIST = 16


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def as_interval(x: Any) -> tuple[Any, Any, Any] | None:
    """(value, lo, hi) when x is a point estimate with an interval, in any common spelling."""
    if not isinstance(x, dict):
        return None
    central = next((k for k in _CENTRAL if _num(x.get(k))), None)
    if central is None:
        return None
    lo_k = next((k for k in _LOWER if _num(x.get(k))), None)
    hi_k = next((k for k in _UPPER if _num(x.get(k))), None)
    lst = next((k for k in _INTERVAL_LISTS if isinstance(x.get(k), list) and len(x[k]) == 2), None)
    if lo_k and hi_k:
        used = {central, lo_k, hi_k}
        lo, hi = x[lo_k], x[hi_k]
    elif lst:
        used = {central, lst}
        lo, hi = x[lst]
    else:
        return None
    if set(x) - used - set(_INTERVAL_EXTRAS):
        return None
    return x[central], lo, hi


def fmt_cell(x: Any) -> str:
    iv = as_interval(x)
    if iv:
        return f"{fmt_num(iv[0])} [{fmt_num(iv[1])}, {fmt_num(iv[2])}]"
    if isinstance(x, list):
        if len(x) <= SHORT_LIST:
            return "[" + ", ".join(fmt_cell(v) for v in x) + "]"
        nums = [v for v in x if _num(v)]
        if len(nums) == len(x):
            return f"{len(x)} values: {fmt_num(x[0])} → {fmt_num(x[-1])} (min {fmt_num(min(nums))}, max {fmt_num(max(nums))})"
        return f"{len(x)} items"
    if isinstance(x, str) and len(x) > 200:
        return x[:200] + "…"
    return fmt_num(x)


def is_cell(x: Any) -> bool:
    """True for what fits in one table cell: scalars, intervals, lists of scalars."""
    if x is None or isinstance(x, (bool, int, float, str)):
        return True
    if as_interval(x):
        return True
    return isinstance(x, list) and all(v is None or isinstance(v, (bool, int, float, str)) for v in x)


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    more: int = 0  # rows left out


def _merge_ci(scalars: dict[str, Any]) -> dict[str, Any]:
    """{"fd": 0.1, "fd_ci": [0.05, 0.2]} -> {"fd": {"value": 0.1, "ci": [...]}}."""
    out = dict(scalars)
    for k, v in scalars.items():
        for suffix in ("_ci", "_ci95", "_interval"):
            base = k.removesuffix(suffix)
            if k.endswith(suffix) and base in out and _num(out[base]) and isinstance(v, list) and len(v) == 2:
                out[base] = {"value": out[base], "ci": v}
                out.pop(k)
    return out


def _table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
    return Table(title, headers, rows[:MAX_ROWS], max(0, len(rows) - MAX_ROWS))


def to_tables(obj: Any, title: str = "", depth: int = 0, skip: tuple[str, ...] = (),
              max_depth: int = 5) -> list[Table]:
    """Any JSON as tables: scalars as key/value rows, sibling flat mappings with the same keys as one
    matrix, lists of flat mappings as one table, anything deeper recursively under a dotted title
    (down to `max_depth` levels; deeper parts are left out, as in a headline)."""
    if depth > max_depth:
        return []
    if is_cell(obj):
        return [Table(title, ["value"], [[fmt_cell(obj)]])]
    out: list[Table] = []
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k not in skip}
        scalars = _merge_ci({k: v for k, v in obj.items() if is_cell(v)})
        flat = {k: _merge_ci(v) for k, v in obj.items() if isinstance(v, dict) and not is_cell(v)
                and v and all(is_cell(x) for x in v.values())}
        if scalars:
            out.append(_table(title, ["key", "value"], [[str(k), fmt_cell(v)] for k, v in scalars.items()]))
        groups: dict[tuple[str, ...], list[str]] = {}
        for k, v in flat.items():
            groups.setdefault(tuple(str(c) for c in v), []).append(k)
        for cols, keys in groups.items():
            if len(keys) == 1 and len(flat) > 1:
                sub = f"{title}.{keys[0]}" if title else str(keys[0])
                out.append(_table(sub, ["key", "value"], [[str(c), fmt_cell(x)] for c, x in flat[keys[0]].items()]))
                continue
            rows = [[str(k)] + [fmt_cell(x) for x in flat[k].values()] for k in keys]
            out.append(_table(title, ["", *cols], rows))
        for k, v in obj.items():
            if not is_cell(v) and k not in flat:
                out += to_tables(v, f"{title}.{k}" if title else str(k), depth + 1, max_depth=max_depth)
        return out
    if isinstance(obj, list):
        if obj and all(isinstance(v, dict) and all(is_cell(x) for x in v.values()) for v in obj):
            cols = []
            for v in obj:
                cols += [str(c) for c in v if str(c) not in cols]
            rows = [[fmt_cell(v.get(c)) if c in v else "" for c in cols] for v in obj]
            return [_table(title, cols, rows)]
        for i, v in enumerate(obj[:20]):
            out += to_tables(v, f"{title}[{i}]", depth + 1, max_depth=max_depth)
        return out
    return [Table(title, ["value"], [[fmt_cell(str(obj))]])]
