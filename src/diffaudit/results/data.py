"""metrics/data.json (the prepare stage: pipelines/prepare.py, counts from data/prepare.py `data_card`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import ConfigDict

from diffaudit.config.schema import BiasCfg
from diffaudit.results.base import ResultFile, ResultModel


class BiasRun(BiasCfg):
    """The `data.bias` config the training split was skewed with (its own schema, read strictly)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SplitCard(ResultModel):
    n: int
    per_class: dict[str, int]  # class name -> images
    per_attribute: dict[str, dict[str, int]]  # attribute -> group -> images


class DataResult(ResultFile):
    FILE: ClassVar[str] = "data.json"

    source: str
    image_size: int
    data_md5: str
    bias: BiasRun | None
    # CSV rows dropped as repeats of an earlier row's image (identical file content and labels): a repeated
    # image would otherwise land in train and test alike.
    duplicates_removed: int = 0
    splits: dict[str, SplitCard]  # "train", "val", "test"
