"""The quality report of a generated image set, every number beside its real-vs-real floor.

FID/KID/precision/recall compare n generated images with n real test images; their floor compares
n real train images with the same test images. Conditional accuracy is judged by the evaluator
(floor: its accuracy on real test images). CAS trains a classifier of the evaluator's architecture
on the generated images and tests it on real test images (floor: the same recipe on as many real
train images). Features are computed once per image set; floors and bootstrap intervals reuse them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from diffaudit.config.schema import EvalCfg, EvaluatorCfg
from diffaudit.data.store import DataMeta, Split
from diffaudit.distributed.world import World
from diffaudit.errors import ConfigError
from diffaudit.metrics.bootstrap import LEVEL, half_sample_ci, mean_ci
from diffaudit.metrics.features import EvaluatorFeatures, FeatureCache, single_thread
from diffaudit.metrics.fid import fid_features, kid_features, kid_half_samples
from diffaudit.metrics.precision_recall import density_coverage_indicators, precision_recall_indicators
from diffaudit.metrics.vendi import vendi_per_class
from diffaudit.models.evaluator import Evaluator
from diffaudit.results.applicability import (
    LABELS_FROM_CONDITION,
    LabelSource,
    conditioning_of_labels,
    not_applicable,
)
from diffaudit.results.intervals import Interval
from diffaudit.results.quality import BootstrapSetting, QualityResult, space_keys
from diffaudit.training.evaluator_training import predict, train_evaluator
from diffaudit.utils import intervals


def feature_module(cfg: EvalCfg, evaluator: Evaluator) -> nn.Module:
    """The feature space the config names; inception only from a local weights file, never a download."""
    if cfg.feature == "evaluator":
        return EvaluatorFeatures(evaluator)
    from diffaudit.metrics.inception import HOW_TO, InceptionFeatures

    if not cfg.inception_weights:
        raise ConfigError(HOW_TO)
    return InceptionFeatures(cfg.inception_weights)


def class_hits(
    evaluator: Evaluator, images: Any, labels: torch.Tensor, world: World | None = None, batch_size: int = 512
) -> torch.Tensor:
    """1.0 where the evaluator's class argmax equals the label, else 0.0; `images` a tensor or a lazy row
    reader, the batches spread over the ranks of `world`."""
    read = (world or World()).map_batches(
        lambda x: predict(evaluator, x)["class"].argmax(-1), images, batch_size
    )
    return (read == labels).float()


@dataclass(frozen=True)
class AccuracyReport:
    """Accuracy of per-image hits overall and per class, each with its bootstrap interval and n."""

    value: float
    ci: Interval | None
    per_class: dict[str, float]
    per_class_ci: dict[str, Interval | None]
    per_class_n: dict[str, int]


def _accuracy_report(
    hits: torch.Tensor, labels: torch.Tensor, class_names: list[str], reps: int, seed: int
) -> AccuracyReport:
    per = {name: labels == c for c, name in enumerate(class_names) if (labels == c).any()}
    return AccuracyReport(
        value=float(hits.double().mean()),
        ci=mean_ci(hits, reps, seed),
        per_class={name: float(hits[m].double().mean()) for name, m in per.items()},
        per_class_ci={name: mean_ci(hits[m], reps, seed + i) for i, (name, m) in enumerate(per.items())},
        per_class_n={name: int(m.sum()) for name, m in per.items()},
    )


def _kid_ci(ref: torch.Tensor, gen: torch.Tensor, kid: float, reps: int, seed: int) -> Interval | None:
    """KID's interval: the spread of the full-set unbiased MMD^2 over half-samples (no duplicated
    images), placed around KID's own (unbiased) estimate, in bounded memory."""
    if reps <= 0:
        return None
    lo, hi = intervals.centred(kid, kid_half_samples(ref, gen, reps, seed).numpy(), LEVEL)
    return Interval(low=lo, high=hi, method=intervals.HALF_SAMPLE)


@dataclass(frozen=True)
class SetMetrics:
    """FID, KID (mean and std over subsets), precision, recall, density and coverage of one feature set
    against a reference, in the feature space of the features. FID's plug-in is biased upward (more so
    at small n), so beside it stands its half-sample bias correction, which the interval belongs to.
    The intervals (and the correction) are None without `with_ci` (or with 0 resamples)."""

    fid: float
    kid: float
    kid_std: float
    precision: float
    recall: float
    density: float
    coverage: float
    fid_debiased: float | None = None
    fid_debiased_ci: Interval | None = None
    kid_ci: Interval | None = None
    precision_ci: Interval | None = None
    recall_ci: Interval | None = None
    density_ci: Interval | None = None
    coverage_ci: Interval | None = None


def set_metrics(
    ref: torch.Tensor, gen: torch.Tensor, cfg: EvalCfg, seed: int, with_ci: bool = True
) -> SetMetrics:
    """FID, KID, precision, recall, density and coverage of feature set `gen` against `ref`, with
    intervals."""
    with single_thread():
        return _set_metrics(ref, gen, cfg, seed, with_ci)


def _set_metrics(ref: torch.Tensor, gen: torch.Tensor, cfg: EvalCfg, seed: int, with_ci: bool) -> SetMetrics:
    kid_mean, kid_std = kid_features(ref, gen, cfg.kid_subset_size, cfg.kid_subsets, seed)
    in_ref, in_gen = precision_recall_indicators(ref, gen, cfg.pr_k)
    dens, covered = density_coverage_indicators(ref, gen, cfg.pr_k)
    point = SetMetrics(
        fid=fid_features(ref, gen),
        kid=kid_mean,
        kid_std=kid_std,
        precision=float(in_ref.double().mean()),
        recall=float(in_gen.double().mean()),
        density=float(dens.mean()),
        coverage=float(covered.mean()),
    )
    if not with_ci:
        return point
    reps = cfg.bootstrap
    fid_bc = half_sample_ci(fid_features, point.fid, ref, gen, reps=reps, seed=seed)
    return replace(
        point,
        fid_debiased=fid_bc[0] if fid_bc else None,
        fid_debiased_ci=fid_bc[1] if fid_bc else None,
        kid_ci=_kid_ci(ref, gen, kid_mean, reps, seed),
        precision_ci=mean_ci(in_ref, reps, seed),
        recall_ci=mean_ci(in_gen, reps, seed + 1),
        density_ci=mean_ci(dens, reps, seed + 2),
        coverage_ci=mean_ci(covered, reps, seed + 3),
    )


def cas_score(
    train: Split, val: Split, test: Split, meta: DataMeta, cfg: EvaluatorCfg, seed: int
) -> tuple[float, torch.Tensor]:
    """Classification accuracy score: train the evaluator's recipe on `train`, test on `test`; (accuracy,
    hits)."""
    model, _ = train_evaluator(train, val, meta, cfg, seed, progress=False)
    hits = class_hits(model, test.images, test.labels)
    return float(hits.double().mean()), hits


def _class_only(images: torch.Tensor, labels: torch.Tensor) -> Split:
    return Split(images=images, labels=labels, attributes={})


def _per_class_pick(pool: torch.Tensor, wanted: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Indices into `pool` labels: per class, a seeded random min(count in wanted, count in pool)."""
    picks = []
    for c in torch.unique(wanted):
        idx = torch.nonzero(pool == c).flatten()
        n = min(int((wanted == c).sum()), len(idx))
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:n]])
    return torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)


def evaluate_quality(
    cfg: EvalCfg,
    evaluator: Evaluator,
    meta: DataMeta,
    train: Split,
    test: Split,
    gen_images: Any,
    gen_labels: torch.Tensor,
    seed: int,
    val: Split | None = None,
    cache: FeatureCache | None = None,
    labels_from: LabelSource = LABELS_FROM_CONDITION,
    world: World | None = None,
) -> QualityResult | None:
    """Every quality metric with its floor, 95 % bootstrap interval and n (CAS only when `val` is given).

    `gen_images` (and the splits' images) may be lazy row readers: only features and class reads of
    them are held. Under a multi-process `world` the ranks share the feature extraction and the class
    reads; rank 0 computes the metrics from them and returns the result, the other ranks return None.

    `labels_from="evaluator"`: `gen_labels` are the evaluator's reads of an unconditional model's images, so
    conditional accuracy and CAS (both score images against the label that made them) are not applicable:
    null, with the reason in `not_applicable`; per-class Vendi is over the predicted classes.
    """
    na = {
        k: v
        for k, v in not_applicable(conditioning_of_labels(labels_from)).items()
        if k in ("conditional_accuracy", "cas")
    }
    world = world or World()
    cache = cache or FeatureCache(feature_module(cfg, evaluator).to(world.device), world=world)
    space = cache.space
    f_test, f_train, f_gen = cache(test.images), cache(train.images), cache(gen_images)
    acc_on = "conditional_accuracy" not in na
    gen_hits = class_hits(evaluator, gen_images, gen_labels, world) if acc_on else None
    test_hits = class_hits(evaluator, test.images, test.labels, world)
    if not world.is_zero:
        return None
    n = min(len(test), len(gen_images), len(train))
    gen = torch.Generator().manual_seed(seed)
    pick_gen = torch.randperm(len(gen_images), generator=gen)[:n]
    pick_train = torch.randperm(len(train), generator=gen)[:n]
    ref = f_test[:n]
    g = set_metrics(ref, f_gen[pick_gen], cfg, seed)
    r = set_metrics(ref, f_train[pick_train], cfg, seed)  # the floor: real train images
    reps = cfg.bootstrap
    names = meta.class_names
    # The Vendi floor: as many real train images per class as were generated for it (the score grows
    # with n, so it is compared at equal counts).
    pick_vendi = _per_class_pick(train.labels, gen_labels, gen)
    acc = None if gen_hits is None else _accuracy_report(gen_hits, gen_labels, names, reps, seed)
    real = _accuracy_report(test_hits, test.labels, names, reps, seed)
    cas: dict[str, Any] = {}
    if cfg.cas and val is not None and "cas" not in na:
        ecfg = cfg.evaluator
        n_real = min(len(gen_images), len(train))
        real_pick = torch.randperm(len(train), generator=gen)[:n_real]
        # CAS trains on the generated images themselves: they are read whole (eval.cas=false at 50k).
        score, hits = cas_score(_class_only(gen_images[:], gen_labels), val, test, meta, ecfg, seed)
        floor, floor_hits = cas_score(
            _class_only(train.images[real_pick], train.labels[real_pick]), val, test, meta, ecfg, seed
        )
        cas = dict(
            cas=score,
            cas_ci=mean_ci(hits, reps, seed),
            cas_n_train=len(gen_images),
            cas_floor=floor,
            cas_floor_ci=mean_ci(floor_hits, reps, seed),
            cas_floor_n_train=n_real,
            cas_n_test=len(test),
        )
    return QualityResult(
        feature_space=space,
        n_images=n,
        n_generated=len(gen_images),
        n_test=len(test),
        bootstrap=BootstrapSetting(reps=cfg.bootstrap, level=LEVEL),
        pr_k=cfg.pr_k,
        **space_keys(
            space,
            fid=g.fid,
            kid=g.kid,
            kid_std=g.kid_std,
            fid_debiased=g.fid_debiased,
            fid_debiased_ci=g.fid_debiased_ci,
            kid_ci=g.kid_ci,
            fid_floor=r.fid,
            kid_floor=r.kid,
            kid_floor_std=r.kid_std,
            fid_floor_debiased=r.fid_debiased,
            fid_floor_debiased_ci=r.fid_debiased_ci,
            kid_floor_ci=r.kid_ci,
        ),
        precision=g.precision,
        recall=g.recall,
        precision_ci=g.precision_ci,
        recall_ci=g.recall_ci,
        precision_floor=r.precision,
        recall_floor=r.recall,
        precision_floor_ci=r.precision_ci,
        recall_floor_ci=r.recall_ci,
        density=g.density,
        coverage=g.coverage,
        density_ci=g.density_ci,
        coverage_ci=g.coverage_ci,
        density_floor=r.density,
        coverage_floor=r.coverage,
        density_floor_ci=r.density_ci,
        coverage_floor_ci=r.coverage_ci,
        vendi_per_class=vendi_per_class(f_gen, gen_labels, names),
        vendi_floor_per_class=vendi_per_class(f_train[pick_vendi], train.labels[pick_vendi], names),
        labels=labels_from,
        not_applicable=na,
        conditional_accuracy=None if acc is None else acc.value,
        conditional_accuracy_ci=None if acc is None else acc.ci,
        conditional_accuracy_per_class={} if acc is None else acc.per_class,
        conditional_accuracy_per_class_ci={} if acc is None else acc.per_class_ci,
        conditional_accuracy_per_class_n={} if acc is None else acc.per_class_n,
        conditional_accuracy_floor=real.value,
        conditional_accuracy_floor_ci=real.ci,
        conditional_accuracy_floor_per_class=real.per_class,
        conditional_accuracy_floor_per_class_ci=real.per_class_ci,
        conditional_accuracy_floor_per_class_n=real.per_class_n,
        **cas,
    )
