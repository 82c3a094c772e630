"""The prepared dataset on disk: one safetensors file per split plus meta.json (names, sizes, source)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffaudit.data.types import RawDataset
from diffaudit.utils.io import load_tensors, read_json, save_tensors, write_json

SPLITS = ("train", "val", "test")
META_FILE = "meta.json"  # names, sizes and source, beside one safetensors file per split


def to_model_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """[0, 1] images -> float32 tensor resized to size x size (antialiased bilinear) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()


@dataclass
class Split:
    """One split at model resolution: images in [-1, 1], labels, attribute group ids."""

    images: torch.Tensor
    labels: torch.Tensor
    attributes: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataMeta:
    class_names: list[str]
    attribute_groups: dict[str, list[str]]
    image_size: int
    channels: int
    source: str
    derived_attributes: list[str] = field(default_factory=list)  # defined by the pixels (data/attributes.py)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def save_prepared(out_dir: str | Path, splits: dict[str, RawDataset], image_size: int) -> None:
    out_dir = Path(out_dir)
    first = splits["train"]
    for name, ds in splits.items():
        tensors = {"images": to_model_tensor(ds.images, image_size), "labels": torch.from_numpy(ds.labels)}
        tensors |= {f"attr.{a}": torch.from_numpy(v) for a, v in ds.attributes.items()}
        save_tensors(out_dir / f"{name}.safetensors", tensors)
    write_json(
        out_dir / META_FILE,
        {
            "class_names": first.class_names,
            "attribute_groups": first.attribute_groups,
            "image_size": image_size,
            "channels": int(first.images.shape[1]),
            "source": first.source,
            "derived_attributes": list(first.derived_attributes),
        },
    )


def load_meta(data_dir: str | Path) -> DataMeta:
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the prepare stage first (dvc repro prepare)")
    return DataMeta(**read_json(path))


def load_split(data_dir: str | Path, name: str) -> Split:
    t = load_tensors(Path(data_dir) / f"{name}.safetensors")
    attrs = {k.removeprefix("attr."): v for k, v in t.items() if k.startswith("attr.")}
    return Split(images=t["images"], labels=t["labels"], attributes=attrs)
