"""The in-memory form every loader returns, and the error every loader raises on bad data."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffaudit.errors import DataError


@dataclass
class RawDataset:
    """Images with labels and sensitive attributes, before splitting and resizing.

    images: float32 array (N, C, H, W) with values in [0, 1].
    labels: int64 array (N,) of class ids in [0, len(class_names)).
    attributes: attribute name -> int64 array (N,) of group ids in [0, len(attribute_groups[name])).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    attribute_groups: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""
    # Attributes computed from the pixels (data/attributes.py), which the audit can measure exactly.
    derived_attributes: list[str] = field(default_factory=list)
    # Rows dropped at load as repeats of an earlier row's image (same file content, same labels).
    duplicates_removed: int = 0

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4:
            raise DataError(f"{self.source}: images must be (N, C, H, W), got shape {self.images.shape}")
        if len(self.labels) != n:
            raise DataError(f"{self.source}: {n} images but {len(self.labels)} labels")
        for name, values in self.attributes.items():
            if len(values) != n:
                raise DataError(f"{self.source}: attribute {name!r} has {len(values)} values for {n} images")
            if name not in self.attribute_groups:
                raise DataError(f"{self.source}: attribute {name!r} has no group names")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> RawDataset:
        """The rows at `index`, as a new dataset with the same names."""
        return RawDataset(
            images=self.images[index],
            labels=self.labels[index],
            class_names=list(self.class_names),
            attributes={k: v[index] for k, v in self.attributes.items()},
            attribute_groups={k: list(v) for k, v in self.attribute_groups.items()},
            source=self.source,
            derived_attributes=list(self.derived_attributes),
            duplicates_removed=self.duplicates_removed,
        )
