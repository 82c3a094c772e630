"""metrics/quality.json (metrics/quality.py `evaluate_quality`, plus `sampler` from the evaluate stage).

FID and KID are named after the feature space they are measured in (`fid_evaluator`, `fid_inception`);
a file holds the keys of one space. `SPACE_KEYS` is the one table of those keys: producers and readers
turn a quantity ("fid_floor") into the file's key through it, and the models declare both spaces'
keys as optional fields (a validator checks that exactly one space's keys are there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, model_validator

from diffaudit.config.eval_schema import SamplerCfg
from diffaudit.results.applicability import LABELS_FROM_CONDITION, LabelSource
from diffaudit.results.base import FieldError, ResultFile, ResultModel
from diffaudit.results.intervals import Interval, check_beside

FeatureSpace = Literal["evaluator", "inception"]
SPACES: tuple[FeatureSpace, ...] = ("evaluator", "inception")

# (quantity, key in the evaluator's feature space, key in InceptionV3's): every space-named key.
SPACE_KEYS: tuple[tuple[str, str, str], ...] = (
    ("fid", "fid_evaluator", "fid_inception"),
    ("kid", "kid_evaluator", "kid_inception"),
    ("kid_std", "kid_evaluator_std", "kid_inception_std"),
    ("fid_debiased", "fid_evaluator_debiased", "fid_inception_debiased"),
    ("fid_debiased_ci", "fid_evaluator_debiased_ci", "fid_inception_debiased_ci"),
    ("kid_ci", "kid_evaluator_ci", "kid_inception_ci"),
    ("fid_floor", "fid_evaluator_floor", "fid_inception_floor"),
    ("kid_floor", "kid_evaluator_floor", "kid_inception_floor"),
    ("kid_floor_std", "kid_evaluator_floor_std", "kid_inception_floor_std"),
    ("fid_floor_debiased", "fid_evaluator_floor_debiased", "fid_inception_floor_debiased"),
    ("fid_floor_debiased_ci", "fid_evaluator_floor_debiased_ci", "fid_inception_floor_debiased_ci"),
    ("kid_floor_ci", "kid_evaluator_floor_ci", "kid_inception_floor_ci"),
)
_BY_QUANTITY = {q: dict(zip(SPACES, keys, strict=True)) for q, *keys in SPACE_KEYS}
_SPACE_OF = {key: space for keys in _BY_QUANTITY.values() for space, key in keys.items()}


def space_key(quantity: str, space: FeatureSpace) -> str:
    """The file key of a space-named quantity (space_key("fid_floor", "evaluator"): fid_evaluator_floor)."""
    return _BY_QUANTITY[quantity][space]


def space_keys(space: FeatureSpace, **quantities: Any) -> dict[str, Any]:
    """Keyword arguments for a model, quantity names turned into the space's keys."""
    return {space_key(q, space): v for q, v in quantities.items()}


def is_space_quantity(name: str) -> bool:
    return name in _BY_QUANTITY


def space_of(key: str) -> FeatureSpace | None:
    """The feature space a key is measured in, None for keys that do not name one (precision, cas ...)."""
    return _SPACE_OF.get(key)


class SpaceKeyed(ResultModel):
    """A model with space-named keys; SPACE_QUANTITIES lists those it must have (in its one space)."""

    SPACE_QUANTITIES: ClassVar[tuple[str, ...]]

    def space(self) -> FeatureSpace:
        """The space whose keys the model holds (the validator made sure there is exactly one)."""
        first = self.SPACE_QUANTITIES[0]
        return next((s for s in SPACES if space_key(first, s) in self.model_fields_set), "evaluator")

    def space_value(self, quantity: str) -> Any:
        return getattr(self, space_key(quantity, self.space()))

    def _declared_space(self) -> FeatureSpace | None:
        """The space the model says it is in (QualityResult: feature_space), None: whichever it holds."""
        return None

    @model_validator(mode="after")
    def _one_space(self) -> SpaceKeyed:
        space = self._declared_space() or self.space()
        stray = sorted(k for k in self.model_fields_set if space_of(k) not in (None, space))
        if stray:
            raise FieldError(
                stray[0], f"a key of the {space_of(stray[0])} feature space in {space}-space metrics"
            )
        for q in self.SPACE_QUANTITIES:
            if space_key(q, space) not in self.model_fields_set:
                raise FieldError(space_key(q, space), "Field required")
        return self


class SamplerRun(SamplerCfg):
    """The `sampler` config group as the samples were drawn (its own schema, read strictly)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class BootstrapSetting(ResultModel):
    reps: int
    level: float


@dataclass(frozen=True)
class QualityRow:
    """One headline metric of a quality file: its key, value, interval, real-vs-real floor and n."""

    quantity: str  # "fid", "kid", "precision", "recall", "density", "coverage", "conditional_accuracy", "cas"
    key: str  # its key in the file
    value: float | None
    ci: Interval | None
    floor: float | None
    n: int | None
    spread: float | None = None  # KID's std over subsets
    # The bias-corrected estimate `ci` belongs to (FID: its plug-in `value` is biased upward); None
    # where `ci` is the value's own interval.
    corrected: float | None = None

    @property
    def ci_estimate(self) -> float | None:
        """The estimate the interval contains."""
        return self.value if self.corrected is None else self.corrected


class QualityResult(SpaceKeyed, ResultFile):
    FILE: ClassVar[str] = "quality.json"
    SPACE_QUANTITIES: ClassVar[tuple[str, ...]] = tuple(q for q, *_ in SPACE_KEYS)

    feature_space: FeatureSpace
    n_images: int
    n_generated: int
    n_test: int
    bootstrap: BootstrapSetting
    pr_k: int
    # Generated vs real test images.
    fid_evaluator: float | None = None
    fid_inception: float | None = None
    kid_evaluator: float | None = None
    kid_inception: float | None = None
    kid_evaluator_std: float | None = None
    kid_inception_std: float | None = None
    precision: float
    recall: float
    # FID's half-sample bias correction and its interval (utils/intervals.py); null with 0 resamples.
    fid_evaluator_debiased: float | None = None
    fid_inception_debiased: float | None = None
    fid_evaluator_debiased_ci: Interval | None = None
    fid_inception_debiased_ci: Interval | None = None
    kid_evaluator_ci: Interval | None = None
    kid_inception_ci: Interval | None = None
    precision_ci: Interval | None
    recall_ci: Interval | None
    # Real train vs real test images of the same count: the floor.
    fid_evaluator_floor: float | None = None
    fid_inception_floor: float | None = None
    kid_evaluator_floor: float | None = None
    kid_inception_floor: float | None = None
    kid_evaluator_floor_std: float | None = None
    kid_inception_floor_std: float | None = None
    precision_floor: float
    recall_floor: float
    fid_evaluator_floor_debiased: float | None = None
    fid_inception_floor_debiased: float | None = None
    fid_evaluator_floor_debiased_ci: Interval | None = None
    fid_inception_floor_debiased_ci: Interval | None = None
    kid_evaluator_floor_ci: Interval | None = None
    kid_inception_floor_ci: Interval | None = None
    precision_floor_ci: Interval | None
    recall_floor_ci: Interval | None
    # Density and coverage (Naeem et al. 2020), from the real images' k-NN balls; floor as above.
    density: float
    coverage: float
    density_ci: Interval | None
    coverage_ci: Interval | None
    density_floor: float
    coverage_floor: float
    density_floor_ci: Interval | None
    coverage_floor_ci: Interval | None
    # Vendi score per class name (effective number of distinct images, metrics/vendi.py); the floor: as
    # many real train images of the class.
    vendi_per_class: dict[str, float]
    vendi_floor_per_class: dict[str, float]
    # What the generated images' labels are: the conditioning class, or (an unconditional model) the
    # evaluator's read; quantity -> why it does not apply (results/applicability.py), its keys then null.
    labels: LabelSource = LABELS_FROM_CONDITION
    not_applicable: dict[str, str] = {}
    # The evaluator's class on generated images (floor: on real test images); per class name.
    conditional_accuracy: float | None
    conditional_accuracy_ci: Interval | None
    conditional_accuracy_per_class: dict[str, float]
    conditional_accuracy_per_class_ci: dict[str, Interval | None]
    conditional_accuracy_per_class_n: dict[str, int]
    conditional_accuracy_floor: float
    conditional_accuracy_floor_ci: Interval | None
    conditional_accuracy_floor_per_class: dict[str, float]
    conditional_accuracy_floor_per_class_ci: dict[str, Interval | None]
    conditional_accuracy_floor_per_class_n: dict[str, int]
    # Classification accuracy score: absent when eval.cas is off.
    cas: float | None = None
    cas_ci: Interval | None = None
    cas_n_train: int | None = None
    cas_floor: float | None = None
    cas_floor_ci: Interval | None = None
    cas_floor_n_train: int | None = None
    cas_n_test: int | None = None
    # Added by the evaluate stage (absent from evaluate_quality's own result).
    sampler: SamplerRun | None = None

    CAS_KEYS: ClassVar[tuple[str, ...]] = (
        "cas",
        "cas_ci",
        "cas_n_train",
        "cas_floor",
        "cas_floor_ci",
        "cas_floor_n_train",
        "cas_n_test",
    )

    def _declared_space(self) -> FeatureSpace | None:
        return self.feature_space

    @model_validator(mode="after")
    def _all_of_cas(self) -> QualityResult:
        cas = [k for k in self.CAS_KEYS if k in self.model_fields_set]
        if cas and len(cas) != len(self.CAS_KEYS):
            missing = next(k for k in self.CAS_KEYS if k not in cas)
            raise FieldError(missing, "Field required (the CAS keys come all together or not at all)")
        return self

    @model_validator(mode="after")
    def _intervals_hold_estimates(self) -> QualityResult:
        check_beside(self)
        return self

    @model_validator(mode="after")
    def _null_where_not_applicable(self) -> QualityResult:
        if ("conditional_accuracy" in self.not_applicable) != (self.conditional_accuracy is None):
            raise FieldError(
                "conditional_accuracy", "null exactly when not_applicable names conditional_accuracy"
            )
        if "cas" in self.not_applicable and self.has_cas:
            raise FieldError("cas", "present although not_applicable names cas")
        return self

    @property
    def has_cas(self) -> bool:
        return "cas" in self.model_fields_set

    def rows(self) -> list[QualityRow]:
        """The headline metrics in reading order: FID, KID, precision, recall, density, coverage,
        conditional accuracy, CAS; a quantity that does not apply has no row (`not_applicable` says why)."""
        fs, n = self.feature_space, self.n_images
        v = self.space_value
        out = [
            QualityRow(
                "fid",
                space_key("fid", fs),
                v("fid"),
                v("fid_debiased_ci"),
                v("fid_floor"),
                n,
                corrected=v("fid_debiased"),
            ),
            QualityRow(
                "kid", space_key("kid", fs), v("kid"), v("kid_ci"), v("kid_floor"), n, spread=v("kid_std")
            ),
            QualityRow("precision", "precision", self.precision, self.precision_ci, self.precision_floor, n),
            QualityRow("recall", "recall", self.recall, self.recall_ci, self.recall_floor, n),
            QualityRow("density", "density", self.density, self.density_ci, self.density_floor, n),
            QualityRow("coverage", "coverage", self.coverage, self.coverage_ci, self.coverage_floor, n),
        ]
        if self.conditional_accuracy is not None:
            out.append(
                QualityRow(
                    "conditional_accuracy",
                    "conditional_accuracy",
                    self.conditional_accuracy,
                    self.conditional_accuracy_ci,
                    self.conditional_accuracy_floor,
                    self.n_generated,
                )
            )
        if self.has_cas:
            out.append(QualityRow("cas", "cas", self.cas, self.cas_ci, self.cas_floor, self.cas_n_test))
        return out
