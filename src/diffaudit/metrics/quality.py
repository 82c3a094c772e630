"""The quality report of a generated image set: FID/KID against real held-out images with the
real-vs-real floor, and conditional accuracy, every number named by its feature space."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from diffaudit.config.schema import ConfigError, EvalCfg
from diffaudit.data.store import DataMeta, Split
from diffaudit.metrics.features import EvaluatorFeatures
from diffaudit.metrics.fid import fid, kid
from diffaudit.models.evaluator import Evaluator
from diffaudit.training.evaluator_training import predict


def feature_module(cfg: EvalCfg, evaluator: Evaluator) -> nn.Module:
    """The feature space the config names; inception only from a local weights file, never a download."""
    if cfg.feature == "evaluator":
        return EvaluatorFeatures(evaluator)
    weights = cfg.inception_weights
    if not weights or not Path(weights).is_file():
        raise ConfigError(
            "eval.feature=inception needs eval.inception_weights: the path of a local FID InceptionV3 "
            "weights file (torch-fidelity's pt_inception-2015-12-05-6726825d.pth); nothing is downloaded. "
            f"Got {weights!r}. Use eval.feature=evaluator to measure in the evaluator's feature space."
        )
    from diffaudit.metrics.inception import InceptionFeatures

    return InceptionFeatures(weights)


def conditional_accuracy(evaluator: Evaluator, images: torch.Tensor, labels: torch.Tensor,
                         class_names: list[str]) -> tuple[float, dict[str, float]]:
    """Share of generated images the evaluator assigns to their conditioning class (overall, per class)."""
    pred = predict(evaluator, images)["class"].argmax(-1)
    hit = (pred == labels).float()
    per_class = {name: float(hit[labels == c].mean()) for c, name in enumerate(class_names) if (labels == c).any()}
    return float(hit.mean()), per_class


def evaluate_quality(
    cfg: EvalCfg, evaluator: Evaluator, meta: DataMeta, train: Split, test: Split,
    gen_images: torch.Tensor, gen_labels: torch.Tensor, seed: int,
) -> dict:
    """FID/KID of n generated vs the n real test images, beside the floor: n real train vs the same test."""
    feature = feature_module(cfg, evaluator)
    space = feature.space
    n = min(len(test), len(gen_images), len(train))
    gen = torch.Generator().manual_seed(seed)
    gen_pick = gen_images[torch.randperm(len(gen_images), generator=gen)[:n]]
    train_pick = train.images[torch.randperm(len(train), generator=gen)[:n]]
    ref = test.images[:n]
    kid_gen = kid(feature, ref, gen_pick, cfg.kid_subset_size, seed=seed)
    kid_floor = kid(feature, ref, train_pick, cfg.kid_subset_size, seed=seed)
    acc, per_class = conditional_accuracy(evaluator, gen_images, gen_labels, meta.class_names)
    return {
        "feature_space": space,
        "n_images": n,
        f"fid_{space}": fid(feature, ref, gen_pick),
        f"fid_{space}_floor": fid(feature, ref, train_pick),
        f"kid_{space}": kid_gen[0],
        f"kid_{space}_std": kid_gen[1],
        f"kid_{space}_floor": kid_floor[0],
        "conditional_accuracy": acc,
        "conditional_accuracy_per_class": per_class,
        "n_generated": len(gen_images),
    }
