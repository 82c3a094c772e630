"""metrics/evaluator.json (the evaluator stage: pipelines/evaluator.py, from training/evaluator_training.py
`held_out_report`): one entry per head ("class" and every attribute) beside `split` and `n`."""

from __future__ import annotations

from typing import ClassVar

from pydantic import ConfigDict

from diffaudit.results.base import ResultFile, ResultModel


class HeadReport(ResultModel):
    accuracy: float
    labels: list[str]
    confusion: list[list[int]]  # rows: true label, columns: predicted


class EvaluatorResult(ResultFile):
    """The heads are top-level keys named after the head: extra keys, each validated as a HeadReport."""

    FILE: ClassVar[str] = "evaluator.json"
    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, HeadReport]

    split: str
    n: int

    @property
    def heads(self) -> dict[str, HeadReport]:
        return dict(self.model_extra or {})
