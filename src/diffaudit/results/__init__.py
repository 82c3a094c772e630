"""Typed result files: one strict pydantic model per metrics/*.json (and reports/release.json).

Producers build the model and write it with `write_result`; readers use `read_result`, which raises
ResultFileError naming the file and the field for a missing, non-JSON or off-schema file.
"""

from diffaudit.results.base import ResultFile, ResultModel, parse_result, read_result, write_result
from diffaudit.results.data import DataResult
from diffaudit.results.evaluator import EvaluatorResult
from diffaudit.results.explain import ExplainMetrics
from diffaudit.results.fairness import FairnessReport, FairnessResult
from diffaudit.results.files import (
    METRICS_FILES,
    RunResults,
    load_results,
    measured_by_evaluator,
    metric_value,
)
from diffaudit.results.gates import GateEntry, GatesResult
from diffaudit.results.headline import HeadlineResult
from diffaudit.results.intervals import CI, Estimate, Interval
from diffaudit.results.privacy import PrivacyResult
from diffaudit.results.quality import QualityResult, space_key, space_keys, space_of
from diffaudit.results.release import Comparison, ReleaseRecord, ReleaseSummary
from diffaudit.results.sampler_study import SamplerStudyResult

__all__ = [
    "CI",
    "METRICS_FILES",
    "Comparison",
    "DataResult",
    "Estimate",
    "EvaluatorResult",
    "ExplainMetrics",
    "FairnessReport",
    "FairnessResult",
    "GateEntry",
    "GatesResult",
    "HeadlineResult",
    "Interval",
    "PrivacyResult",
    "QualityResult",
    "ReleaseRecord",
    "ReleaseSummary",
    "ResultFile",
    "ResultModel",
    "RunResults",
    "SamplerStudyResult",
    "load_results",
    "measured_by_evaluator",
    "metric_value",
    "parse_result",
    "read_result",
    "space_key",
    "space_keys",
    "space_of",
    "write_result",
]
