"""Sensitive attributes derived from the images themselves, for datasets that carry none.

Each splits every class at its own median, so the two groups are equally common in every class of
the unskewed data: any skew the audit later finds comes from the model or from a deliberate bias.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from diffaudit.data.types import RawDataset
from diffaudit.errors import DataError

# name -> (per-image score, group names low/high)
_SCORES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], list[str]]] = {
    # Ink mass: thick strokes put more ink on the page than thin ones of the same digit.
    "thickness": (lambda x: x.reshape(len(x), -1).sum(axis=1), ["thin", "thick"]),
    "brightness": (lambda x: x.reshape(len(x), -1).mean(axis=1), ["dark", "bright"]),
}

DERIVABLE = sorted(_SCORES)


def attribute_score(name: str, images: np.ndarray) -> np.ndarray:
    """The per-image score that defines a derived attribute, for (N, C, H, W) images in [0, 1]."""
    if name not in _SCORES:
        raise DataError(f"attribute {name!r} is not derivable ({DERIVABLE})")
    return _SCORES[name][0](np.asarray(images, dtype=np.float64))


def median_split_by_class(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1 where a score is above the median of its class, else 0."""
    groups = np.zeros(len(scores), dtype=np.int64)
    for c in np.unique(labels):
        idx = labels == c
        groups[idx] = (scores[idx] > np.median(scores[idx])).astype(np.int64)
    return groups


def add_derived_attributes(ds: RawDataset, names: list[str]) -> RawDataset:
    """Add each attribute in `names` that the dataset lacks, derived from its images."""
    for name in names:
        if name in ds.attributes:
            continue
        if name not in _SCORES:
            have = sorted(ds.attributes)
            raise DataError(
                f"attribute {name!r} is neither in the dataset ({have or 'none'}) nor derivable ({DERIVABLE})"
            )
        score, group_names = _SCORES[name]
        ds.attributes[name] = median_split_by_class(score(ds.images), ds.labels)
        ds.attribute_groups[name] = list(group_names)
        ds.derived_attributes.append(name)
    return ds
