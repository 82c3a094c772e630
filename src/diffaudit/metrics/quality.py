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
from diffaudit.errors import ConfigError
from diffaudit.metrics.bootstrap import LEVEL, bootstrap_ci, interval, mean_ci
from diffaudit.metrics.features import EvaluatorFeatures, FeatureCache, single_thread
from diffaudit.metrics.fid import fid_features, kid_bootstrap, kid_features
from diffaudit.metrics.precision_recall import precision_recall_indicators
from diffaudit.models.evaluator import Evaluator
from diffaudit.results.intervals import Interval
from diffaudit.results.quality import BootstrapSetting, QualityResult, space_keys
from diffaudit.training.evaluator_training import predict, train_evaluator


def feature_module(cfg: EvalCfg, evaluator: Evaluator) -> nn.Module:
    """The feature space the config names; inception only from a local weights file, never a download."""
    if cfg.feature == "evaluator":
        return EvaluatorFeatures(evaluator)
    from diffaudit.metrics.inception import HOW_TO, InceptionFeatures

    if not cfg.inception_weights:
        raise ConfigError(HOW_TO)
    return InceptionFeatures(cfg.inception_weights)


def class_hits(evaluator: Evaluator, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 where the evaluator's class argmax equals the label, else 0.0."""
    return (predict(evaluator, images)["class"].argmax(-1) == labels).float()


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


def _kid_full_ci(ref: torch.Tensor, gen: torch.Tensor, reps: int, seed: int) -> Interval | None:
    """Bootstrap interval of the unbiased MMD^2 (KID's kernel) over the full sets, in bounded memory."""
    if reps <= 0:
        return None
    return interval(kid_bootstrap(ref, gen, reps, seed))


@dataclass(frozen=True)
class SetMetrics:
    """FID, KID (mean and std over subsets), precision and recall of one feature set against a reference,
    in the feature space of the features; the intervals are None without `with_ci` (or with 0 resamples)."""

    fid: float
    kid: float
    kid_std: float
    precision: float
    recall: float
    fid_ci: Interval | None = None
    kid_ci: Interval | None = None
    precision_ci: Interval | None = None
    recall_ci: Interval | None = None


def set_metrics(
    ref: torch.Tensor, gen: torch.Tensor, cfg: EvalCfg, seed: int, with_ci: bool = True
) -> SetMetrics:
    """FID, KID, precision and recall of feature set `gen` against `ref`, with bootstrap intervals."""
    with single_thread():
        return _set_metrics(ref, gen, cfg, seed, with_ci)


def _set_metrics(ref: torch.Tensor, gen: torch.Tensor, cfg: EvalCfg, seed: int, with_ci: bool) -> SetMetrics:
    kid_mean, kid_std = kid_features(ref, gen, cfg.kid_subset_size, cfg.kid_subsets, seed)
    in_ref, in_gen = precision_recall_indicators(ref, gen, cfg.pr_k)
    point = SetMetrics(
        fid=fid_features(ref, gen),
        kid=kid_mean,
        kid_std=kid_std,
        precision=float(in_ref.double().mean()),
        recall=float(in_gen.double().mean()),
    )
    if not with_ci:
        return point
    reps = cfg.bootstrap
    return replace(
        point,
        fid_ci=bootstrap_ci(fid_features, ref, gen, reps=reps, seed=seed),
        kid_ci=_kid_full_ci(ref, gen, reps, seed),
        precision_ci=mean_ci(in_ref, reps, seed),
        recall_ci=mean_ci(in_gen, reps, seed + 1),
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


def evaluate_quality(
    cfg: EvalCfg,
    evaluator: Evaluator,
    meta: DataMeta,
    train: Split,
    test: Split,
    gen_images: torch.Tensor,
    gen_labels: torch.Tensor,
    seed: int,
    val: Split | None = None,
    cache: FeatureCache | None = None,
) -> QualityResult:
    """Every quality metric with its floor, 95 % bootstrap interval and n (CAS only when `val` is given)."""
    cache = cache or FeatureCache(feature_module(cfg, evaluator))
    space = cache.space
    f_test, f_train, f_gen = cache(test.images), cache(train.images), cache(gen_images)
    n = min(len(test), len(gen_images), len(train))
    gen = torch.Generator().manual_seed(seed)
    pick_gen = torch.randperm(len(gen_images), generator=gen)[:n]
    pick_train = torch.randperm(len(train), generator=gen)[:n]
    ref = f_test[:n]
    g = set_metrics(ref, f_gen[pick_gen], cfg, seed)
    r = set_metrics(ref, f_train[pick_train], cfg, seed)  # the floor: real train images
    reps = cfg.bootstrap
    names = meta.class_names
    acc = _accuracy_report(class_hits(evaluator, gen_images, gen_labels), gen_labels, names, reps, seed)
    real = _accuracy_report(class_hits(evaluator, test.images, test.labels), test.labels, names, reps, seed)
    cas: dict[str, Any] = {}
    if cfg.cas and val is not None:
        ecfg = cfg.evaluator
        n_real = min(len(gen_images), len(train))
        real_pick = torch.randperm(len(train), generator=gen)[:n_real]
        score, hits = cas_score(_class_only(gen_images, gen_labels), val, test, meta, ecfg, seed)
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
            fid_ci=g.fid_ci,
            kid_ci=g.kid_ci,
            fid_floor=r.fid,
            kid_floor=r.kid,
            kid_floor_std=r.kid_std,
            fid_floor_ci=r.fid_ci,
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
        conditional_accuracy=acc.value,
        conditional_accuracy_ci=acc.ci,
        conditional_accuracy_per_class=acc.per_class,
        conditional_accuracy_per_class_ci=acc.per_class_ci,
        conditional_accuracy_per_class_n=acc.per_class_n,
        conditional_accuracy_floor=real.value,
        conditional_accuracy_floor_ci=real.ci,
        conditional_accuracy_floor_per_class=real.per_class,
        conditional_accuracy_floor_per_class_ci=real.per_class_ci,
        conditional_accuracy_floor_per_class_n=real.per_class_n,
        **cas,
    )
