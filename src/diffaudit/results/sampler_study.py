"""metrics/sampler_study.json (metrics/sampler_study.py `run_study`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import model_validator

from diffaudit.results.base import FieldError, ResultFile, ResultModel
from diffaudit.results.quality import FeatureSpace, SpaceKeyed, space_of


class FidKid(SpaceKeyed):
    """FID and KID of one image set in the keys of the study's feature space (the points and the floor)."""

    SPACE_QUANTITIES: ClassVar[tuple[str, ...]] = ("fid", "kid")

    fid_evaluator: float | None = None
    fid_inception: float | None = None
    kid_evaluator: float | None = None
    kid_inception: float | None = None


class PointScore(FidKid):
    """One (sampler, NFE, guidance) point against the real test images, in the study's feature space."""

    SPACE_QUANTITIES: ClassVar[tuple[str, ...]] = ("fid", "kid", "kid_std")

    kid_evaluator_std: float | None = None
    kid_inception_std: float | None = None
    precision: float
    recall: float
    conditional_accuracy: float | None  # null: not applicable (an unconditional model has no label)
    fid_over_floor: float  # FID / its real-vs-real floor (inf when the floor is not positive)
    nfe: int
    unet_evals: int
    guidance_scale: float
    seconds: float
    reaches_target: bool


class StudyFloor(FidKid):
    """Real train vs real test images of the points' count."""

    precision: float
    recall: float
    n_images: int


class StudyTarget(ResultModel):
    fid_over_floor_max: float
    conditional_accuracy_min: float | None  # null: not applicable (unconditional model)


class GuidanceSweep(ResultModel):
    sampler: str
    nfe: int
    points: dict[str, PointScore]  # guidance scale as written by str(float) -> point


class BestPoint(ResultModel):
    """The sampler that reaches the target at the fewest NFE; `ties`: the others that reach it at as few."""

    sampler: str
    nfe: int
    seconds: float
    ties: list[str] = []


class SamplerStudyResult(ResultFile):
    FILE: ClassVar[str] = "sampler_study.json"
    HEADLINE: ClassVar[tuple[str, ...]] = (
        "feature_space",
        "n_images",
        "num_per_class",
        "guidance_scale",
        "target",
        "fewest_nfe_to_target",
        "best",
        "seconds",
    )

    feature_space: FeatureSpace
    n_images: int
    num_per_class: int
    guidance_scale: float | None  # of the NFE sweep; null when it has no point
    floor: StudyFloor
    target: StudyTarget
    nfe_sweep: dict[str, dict[str, PointScore]]  # sampler -> NFE (as a string) -> point
    guidance_sweep: GuidanceSweep
    fewest_nfe_to_target: dict[str, int | None]  # sampler -> fewest NFE reaching the target, null: none does
    best: BestPoint | None
    seconds: float

    @model_validator(mode="after")
    def _one_space(self) -> SamplerStudyResult:
        where: dict[str, SpaceKeyed] = {"floor": self.floor}
        where |= {f"nfe_sweep.{s}.{n}": p for s, pts in self.nfe_sweep.items() for n, p in pts.items()}
        where |= {f"guidance_sweep.points.{w}": p for w, p in self.guidance_sweep.points.items()}
        for path, entry in where.items():
            if entry.space() != self.feature_space:
                key = next(k for k in entry.model_fields_set if space_of(k))
                raise FieldError(
                    f"{path}.{key}",
                    f"a key of the {entry.space()} feature space in a study of "
                    f"feature_space {self.feature_space!r}",
                )
        return self
