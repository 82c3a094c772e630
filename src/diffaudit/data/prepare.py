"""Preparation: load a dataset, validate it, split it (stratified, seeded), skew it on request, resize it."""

from __future__ import annotations

import numpy as np

from diffaudit.config.schema import BiasCfg, DataCfg
from diffaudit.data.attributes import add_derived_attributes
from diffaudit.data.types import RawDataset
from diffaudit.errors import DataError


def load_raw(cfg: DataCfg) -> RawDataset:
    """Load the configured dataset from its source; never downloads."""
    if cfg.name == "digits":
        from diffaudit.data.digits import load_digits

        ds = load_digits()
    elif cfg.name in ("mnist", "fashion_mnist"):
        from diffaudit.data.torchvision_formats import load_mnist

        ds = load_mnist(cfg.root, variant=cfg.name)
    elif cfg.name == "cifar10":
        from diffaudit.data.torchvision_formats import load_cifar10

        ds = load_cifar10(cfg.root)
    elif cfg.name == "celeba":
        from diffaudit.data.torchvision_formats import load_celeba

        if not cfg.label_attribute:
            raise DataError("data.label_attribute must name the CelebA attribute used as the class")
        ds = load_celeba(cfg.root, cfg.label_attribute, list(cfg.attributes or []), image_size=cfg.image_size)
    elif cfg.name == "image_folder":
        from diffaudit.data.image_folder import load_image_folder

        ds = load_image_folder(
            cfg.root,
            csv=cfg.csv,
            label_column=cfg.label_attribute or "label",
            attribute_columns=cfg.attributes,
            channels=cfg.channels,
            image_size=cfg.image_size,
        )
    else:  # the schema forbids this; kept for direct library use
        raise DataError(f"unknown dataset {cfg.name!r}")
    if cfg.attributes:
        add_derived_attributes(ds, list(cfg.attributes))
    return ds


def validate(ds: RawDataset, channels: int) -> None:
    """Reject data the pipeline cannot learn from, naming the problem."""
    if len(ds) == 0:
        raise DataError(f"{ds.source}: the dataset is empty")
    if ds.images.shape[1] != channels:
        raise DataError(f"{ds.source}: images have {ds.images.shape[1]} channels, data.channels={channels}")
    if not np.isfinite(ds.images).all():
        raise DataError(f"{ds.source}: images contain NaN or infinite values")
    if ds.images.min() < 0.0 or ds.images.max() > 1.0:
        raise DataError(f"{ds.source}: image values must lie in [0, 1]")
    counts = np.bincount(ds.labels, minlength=len(ds.class_names))
    if len(ds.class_names) < 2 or (counts > 0).sum() < 2:
        raise DataError(f"{ds.source}: needs at least 2 classes with images, found {(counts > 0).sum()}")
    empty = [ds.class_names[i] for i, n in enumerate(counts) if n == 0]
    if empty:
        raise DataError(f"{ds.source}: class(es) {empty} have no images")


def cap_per_class(ds: RawDataset, max_per_class: int | None, seed: int) -> RawDataset:
    """Keep at most `max_per_class` images of each class (seeded), to bound a large dataset's cost."""
    if max_per_class is None:
        return ds
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(len(ds.class_names)):
        idx = np.flatnonzero(ds.labels == c)
        keep.append(idx if len(idx) <= max_per_class else rng.choice(idx, max_per_class, replace=False))
    return ds.subset(np.sort(np.concatenate(keep)))


def stratified_split(
    ds: RawDataset, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, RawDataset]:
    """Deterministic train/val/test split, stratified by class (and first attribute where possible)."""
    from sklearn.model_selection import train_test_split  # lazily: a heavy import only this needs

    idx = np.arange(len(ds))
    strata = ds.labels.copy()
    if ds.attributes:
        first = next(iter(ds.attributes.values()))
        joint = ds.labels * (first.max() + 1) + first
        if np.bincount(joint).min(initial=0) >= 0 and min(np.unique(joint, return_counts=True)[1]) >= 3:
            strata = joint
    try:
        rest, test = train_test_split(idx, test_size=test_fraction, stratify=strata, random_state=seed)
        train, val = train_test_split(
            rest, test_size=val_fraction / (1 - test_fraction), stratify=strata[rest], random_state=seed
        )
    except ValueError as err:
        raise DataError(
            f"{ds.source}: cannot make a stratified split ({err}); too few images per class"
        ) from None
    return {
        "train": ds.subset(np.sort(train)),
        "val": ds.subset(np.sort(val)),
        "test": ds.subset(np.sort(test)),
    }


def apply_bias(ds: RawDataset, bias: BiasCfg, seed: int) -> RawDataset:
    """Keep only `keep_fraction` of group `bias.group` of `bias.attribute` within `bias.classes`."""
    if bias.attribute not in ds.attributes:
        raise DataError(
            f"data.bias.attribute {bias.attribute!r} is not an attribute ({sorted(ds.attributes)})"
        )
    n_groups = len(ds.attribute_groups[bias.attribute])
    if bias.group >= n_groups:
        raise DataError(f"data.bias.group={bias.group} but {bias.attribute!r} has {n_groups} groups")
    bad = [c for c in bias.classes if not 0 <= c < len(ds.class_names)]
    if bad:
        raise DataError(f"data.bias.classes {bad} are not class ids (0..{len(ds.class_names) - 1})")
    rng = np.random.default_rng(seed)
    hit = np.isin(ds.labels, bias.classes) & (ds.attributes[bias.attribute] == bias.group)
    hit_idx = np.flatnonzero(hit)
    n_keep = int(round(bias.keep_fraction * len(hit_idx)))
    kept = rng.choice(hit_idx, n_keep, replace=False) if n_keep else np.array([], dtype=np.int64)
    keep = np.sort(np.concatenate([np.flatnonzero(~hit), kept]))
    return ds.subset(keep)


def data_card(splits: dict[str, RawDataset]) -> dict:
    """Counts per class and per attribute group in each split: what the model is trained and judged on."""
    card: dict = {}
    for name, ds in splits.items():
        entry = {
            "n": len(ds),
            "per_class": {c: int((ds.labels == i).sum()) for i, c in enumerate(ds.class_names)},
            "per_attribute": {
                a: {g: int((v == j).sum()) for j, g in enumerate(ds.attribute_groups[a])}
                for a, v in ds.attributes.items()
            },
        }
        card[name] = entry
    return card
