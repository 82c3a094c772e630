"""scikit-learn's digits: the embedded default dataset (ships inside scikit-learn, no download)."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits as _sk_load_digits

from diffaudit.data.types import RawDataset


def load_digits() -> RawDataset:
    """1,797 grey 8x8 digits, values scaled from 0..16 to [0, 1]."""
    bunch = _sk_load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return RawDataset(
        images=images,
        labels=bunch.target.astype(np.int64),
        class_names=[str(c) for c in bunch.target_names],
        source="sklearn.datasets.load_digits",
    )
