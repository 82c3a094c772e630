"""Every result file of a run by its stem, loaded typed, and metric names resolved through the models.

A release metric is named `<file stem>.<dotted field>` (`quality.fid_evaluator`, release.compare in
params.yaml); `metric_value` checks the name against the model (a name no file can hold is a
ConfigError) and reads the value from the loaded file (absent file or key: None).
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from diffaudit.errors import ConfigError
from diffaudit.results.base import ResultFile, read_result
from diffaudit.results.data import DataResult
from diffaudit.results.evaluator import EvaluatorResult
from diffaudit.results.explain import ExplainMetrics
from diffaudit.results.fairness import FairnessResult
from diffaudit.results.gates import GatesResult
from diffaudit.results.privacy import PrivacyResult
from diffaudit.results.quality import QualityResult, space_of
from diffaudit.results.sampler_study import SamplerStudyResult

# The files of metrics/ (reports/release.json is the report stage's own output, not an input).
METRICS_FILES: tuple[type[ResultFile], ...] = (
    DataResult,
    EvaluatorResult,
    QualityResult,
    SamplerStudyResult,
    ExplainMetrics,
    FairnessResult,
    PrivacyResult,
    GatesResult,
)


@dataclass
class RunResults:
    """The metrics files of one run; None where the stage that writes one has not run."""

    data: DataResult | None = None
    evaluator: EvaluatorResult | None = None
    quality: QualityResult | None = None
    sampler_study: SamplerStudyResult | None = None
    explain: ExplainMetrics | None = None
    fairness: FairnessResult | None = None
    privacy: PrivacyResult | None = None
    gates: GatesResult | None = None

    def get(self, stem: str) -> ResultFile | None:
        return getattr(self, stem) if stem in {f.name for f in fields(self)} else None


def load_results(metrics_dir: str | Path) -> RunResults:
    """Read every metrics file that exists, strictly (a malformed one raises ResultFileError)."""
    d = Path(metrics_dir)
    present = [m for m in METRICS_FILES if (d / m.FILE).is_file()]
    return RunResults(**{m.stem(): read_result(d / m.FILE, m) for m in present})


def _members(tp: Any) -> list[Any]:
    """The alternatives of a type (X | None -> [X, NoneType]), Annotated metadata dropped."""
    if typing.get_origin(tp) is typing.Annotated:
        return _members(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(tp) for m in _members(a)]
    return [tp]


def _child_types(tp: Any, part: str) -> list[Any]:
    """The types a dotted part can lead to below `tp` (none: not a valid step)."""
    out = []
    for m in _members(tp):
        origin = typing.get_origin(m)
        if isinstance(m, type) and issubclass(m, BaseModel):
            by_key = {f.alias or name: f.annotation for name, f in m.model_fields.items()}
            if part in by_key:
                out.append(by_key[part])
            elif m.model_config.get("extra") == "allow":  # keys named after data (evaluator.json heads)
                extra = typing.get_type_hints(m).get("__pydantic_extra__", dict[str, Any])
                out.append(typing.get_args(extra)[1])
        elif origin is dict:
            out.append(typing.get_args(m)[1])
        elif origin is list and part.isdigit():
            out.append(typing.get_args(m)[0])
    return out


def _is_number_type(tp: Any) -> bool:
    return any(m in (int, float) for m in _members(tp))


def _model_of(name: str) -> tuple[type[ResultFile], list[str]]:
    stem, _, key = name.partition(".")
    model = next((m for m in METRICS_FILES if m.stem() == stem), None)
    if model is None:
        raise ConfigError(
            f"metric {name!r}: no metrics file {stem}.json (one of "
            f"{', '.join(m.stem() for m in METRICS_FILES)})"
        )
    parts = key.split(".")
    types_: list[Any] = [model]
    for part in parts:
        types_ = [c for t in types_ for c in _child_types(t, part)]
        if not types_:
            raise ConfigError(
                f"metric {name!r}: {model.FILE} has no field {key!r} ({part!r} is not a key there)"
            )
    if not any(_is_number_type(t) for t in types_):
        raise ConfigError(f"metric {name!r}: {model.FILE} field {key!r} is not a number")
    return model, parts


def metric_value(results: RunResults, name: str) -> float | None:
    """`quality.fid_evaluator` -> results.quality's fid_evaluator as a finite float; None when the file or
    the key is absent, or the value is null/NaN/inf. A name the file's model cannot hold: ConfigError."""
    model, parts = _model_of(name)
    node: Any = results.get(model.stem())
    for part in parts:
        if isinstance(node, BaseModel):
            node = dict(node.entries()).get(part)  # type: ignore[attr-defined]
        elif isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
        return None
    return float(node)


def metric_not_applicable(results: RunResults, name: str) -> str | None:
    """Why a metric does not apply to the run's model (its file's `not_applicable` names the metric's
    first key: `quality.conditional_accuracy` of an unconditional model), or None."""
    model, parts = _model_of(name)
    reasons = getattr(results.get(model.stem()), "not_applicable", None) or {}
    return reasons.get(parts[0]) if isinstance(reasons, dict) else None


def not_applicable_metrics(results: RunResults, names: list[str]) -> dict[str, str]:
    """metric name -> why it does not apply, for those of `names` that do not."""
    return {n: why for n in names if (why := metric_not_applicable(results, n)) is not None}


def measured_by_evaluator(name: str) -> bool:
    """Whether a metric's number depends on the evaluator classifier (its features or its judgement):
    everything but the quality keys named after InceptionV3's feature space. A champion measured by
    another evaluator cannot be compared on these."""
    stem, _, key = name.partition(".")
    return not (
        stem in (QualityResult.stem(), SamplerStudyResult.stem())
        and any(space_of(part) == "inception" for part in key.split("."))
    )
