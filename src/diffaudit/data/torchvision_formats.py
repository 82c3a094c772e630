"""Readers for the on-disk layouts of torchvision's MNIST, FashionMNIST, CIFAR-10 and CelebA datasets.

torchvision cannot be installed beside this project's torch build, so these read its formats directly
with numpy and PIL. They only ever read a local root that already holds the files, in the layout
torchvision itself writes; this module has no network code, so runs stay offline and reproducible. Every
problem raises `DataError` naming the path and the layout that was expected.
"""

from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np

from diffaudit.data.image_folder import load_images
from diffaudit.data.types import RawDataset
from diffaudit.errors import DataError

Split = Literal["train", "test", "all"]

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049


def _check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root not found or not a directory: {root}")
    return root


def _check_split(split: str) -> None:
    if split not in ("train", "test", "all"):
        raise DataError(f"split must be 'train', 'test' or 'all', got {split!r}")


# --- MNIST / FashionMNIST ---------------------------------------------------------------------------


def _read_idx(raw_dir: Path, name: str, magic: int, layout: str) -> np.ndarray:
    """An IDX file (plain or .gz) as a uint8 array, its magic number and size checked against the header."""
    plain, gz = raw_dir / name, raw_dir / f"{name}.gz"
    if plain.is_file():
        path, data = plain, plain.read_bytes()
    elif gz.is_file():
        path = gz
        try:
            data = gzip.decompress(gz.read_bytes())
        except (OSError, EOFError) as exc:
            raise DataError(f"cannot decompress {gz}: {exc}") from exc
    else:
        raise DataError(f"missing file {plain} (or {gz.name}); expected layout {layout}")
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path}: bad IDX magic number {found}, expected {magic}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise DataError(
            f"{path}: header declares dims {dims} ({expected} bytes) but holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist(
    root: str | Path,
    variant: Literal["mnist", "fashion_mnist"] = "mnist",
    split: Split = "all",
) -> RawDataset:
    """MNIST or FashionMNIST from torchvision's `root/{MNIST,FashionMNIST}/raw/*-idx?-ubyte[.gz]` files.

    Images come back (N, 1, 28, 28); "all" is train then test. No attributes: the caller derives them.
    """
    _check_split(split)
    if variant not in ("mnist", "fashion_mnist"):
        raise DataError(f"variant must be 'mnist' or 'fashion_mnist', got {variant!r}")
    root = _check_root(root)
    folder = "MNIST" if variant == "mnist" else "FashionMNIST"
    raw_dir = root / folder / "raw"
    layout = f"{root}/{folder}/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]"
    prefixes = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]

    images, labels = [], []
    for prefix in prefixes:
        x = _read_idx(raw_dir, f"{prefix}-images-idx3-ubyte", _IDX_IMAGES_MAGIC, layout)
        y = _read_idx(raw_dir, f"{prefix}-labels-idx1-ubyte", _IDX_LABELS_MAGIC, layout)
        if x.ndim != 3 or y.ndim != 1:
            raise DataError(
                f"{raw_dir}: {prefix} images must be 3-d and labels 1-d, got {x.shape} and {y.shape}"
            )
        if len(x) != len(y):
            raise DataError(f"{raw_dir}: {prefix} has {len(x)} images but {len(y)} labels")
        if y.size and y.max() > 9:
            raise DataError(f"{raw_dir}: {prefix} labels must be 0..9, found {int(y.max())}")
        images.append(x)
        labels.append(y)

    class_names = [str(d) for d in range(10)] if variant == "mnist" else list(FASHION_MNIST_CLASSES)
    return RawDataset(
        images=(np.concatenate(images)[:, None].astype(np.float32) / 255.0),
        labels=np.concatenate(labels).astype(np.int64),
        class_names=class_names,
        source=f"{variant}:{root}:{split}",
    )


# --- CIFAR-10 ---------------------------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches while refusing any class but numpy arrays, so a planted file can't run code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path, layout: str) -> dict[bytes, Any]:
    if not path.is_file():
        raise DataError(f"missing file {path}; expected layout {layout}")
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as exc:  # pickle raises many kinds on corrupt input
        raise DataError(f"cannot unpickle {path}: {exc}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def load_cifar10(root: str | Path, split: Split = "all") -> RawDataset:
    """CIFAR-10 from torchvision's `root/cifar-10-batches-py/` pickles; images (N, 3, 32, 32), train then
    test."""
    _check_split(split)
    root = _check_root(root)
    folder = root / "cifar-10-batches-py"
    layout = f"{folder}/{{data_batch_1..5,test_batch,batches.meta}}"
    meta = _read_cifar_pickle(folder / "batches.meta", layout)
    if b"label_names" not in meta:
        raise DataError(f"{folder / 'batches.meta'}: no b'label_names' key")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]

    names = {
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "all": [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"],
    }[split]
    images, labels = [], []
    for name in names:
        path = folder / name
        batch = _read_cifar_pickle(path, layout)
        if b"data" not in batch or b"labels" not in batch:
            raise DataError(f"{path}: expected keys b'data' and b'labels', found {sorted(batch)}")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        y = np.asarray(batch[b"labels"], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: data must be (N, 3072), got {data.shape}")
        if len(data) != len(y):
            raise DataError(f"{path}: {len(data)} images but {len(y)} labels")
        if y.size and (y.min() < 0 or y.max() >= len(class_names)):
            raise DataError(f"{path}: labels must be in 0..{len(class_names) - 1}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(y)
    return RawDataset(
        images=np.concatenate(images).astype(np.float32) / 255.0,
        labels=np.concatenate(labels),
        class_names=class_names,
        source=f"cifar10:{root}:{split}",
    )


# --- CelebA -----------------------------------------------------------------------------------------


def _read_celeba_attrs(path: Path, layout: str) -> tuple[list[str], list[str], np.ndarray]:
    """(filenames, attribute names, values as int8 -1/1 of shape (N, n_attributes)) from
    list_attr_celeba.txt."""
    if not path.is_file():
        raise DataError(f"missing file {path}; expected layout {layout}")
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < 2:
        raise DataError(f"{path}: expected a count line and an attribute-names line")
    try:
        count = int(lines[0][0])
    except (ValueError, IndexError) as exc:
        raise DataError(f"{path}: first line must be the image count, got {lines[0]}") from exc
    names, rows = lines[1], lines[2:]
    if len(rows) != count:
        raise DataError(f"{path}: first line says {count} images but {len(rows)} rows follow")
    filenames: list[str] = []
    values = np.empty((len(rows), len(names)), dtype=np.int8)
    for i, row in enumerate(rows):
        if len(row) != len(names) + 1:
            raise DataError(f"{path}: row for {row[0]} has {len(row) - 1} values, expected {len(names)}")
        filenames.append(row[0])
        try:
            values[i] = [int(v) for v in row[1:]]
        except ValueError as exc:
            raise DataError(f"{path}: row for {row[0]} has a non-integer value") from exc
    if not np.isin(values, (-1, 1)).all():
        raise DataError(f"{path}: attribute values must be -1 or 1")
    return filenames, names, values


def _read_celeba_partition(path: Path, layout: str) -> dict[str, int]:
    if not path.is_file():
        raise DataError(f"missing file {path}; expected layout {layout}")
    partition: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{path}: expected 'filename 0|1|2', got {line!r}")
        partition[parts[0]] = int(parts[1])
    return partition


def load_celeba(
    root: str | Path,
    label_attribute: str,
    attributes: list[str],
    split: Split = "all",
    image_size: int | None = None,
) -> RawDataset:
    """CelebA from torchvision's `root/celeba/` layout, classed by one binary attribute.

    Each name in `attributes` becomes a binary sensitive attribute. split "train" is partition 0, "test"
    partition 2, "all" every image (valid included). `image_size` resizes each image to a square of that
    side (bilinear, no crop) while loading, so the full set fits in memory.
    """
    _check_split(split)
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be positive, got {image_size}")
    root = _check_root(root)
    folder = root / "celeba"
    layout = f"{folder}/{{img_align_celeba/*.jpg,list_attr_celeba.txt,list_eval_partition.txt}}"
    filenames, names, values = _read_celeba_attrs(folder / "list_attr_celeba.txt", layout)
    for name in [label_attribute, *attributes]:
        if name not in names:
            raise DataError(f"unknown CelebA attribute {name!r}; available: {', '.join(names)}")

    keep = np.arange(len(filenames))
    if split != "all":
        partition_path = folder / "list_eval_partition.txt"
        partition = _read_celeba_partition(partition_path, layout)
        missing = [f for f in filenames if f not in partition]
        if missing:
            raise DataError(
                f"{partition_path}: no partition for {missing[0]} ({len(missing)} images missing)"
            )
        wanted = 0 if split == "train" else 2
        keep = np.array([i for i, f in enumerate(filenames) if partition[f] == wanted], dtype=np.int64)
        if keep.size == 0:
            raise DataError(f"{partition_path}: no images in the {split!r} split")
    if keep.size == 0:
        raise DataError(f"{folder / 'list_attr_celeba.txt'}: no images listed")

    image_dir = folder / "img_align_celeba"
    if not image_dir.is_dir():
        raise DataError(f"missing folder {image_dir}; expected layout {layout}")
    images = load_images([image_dir / filenames[i] for i in keep], "RGB", image_size)

    def binary(name: str) -> np.ndarray:
        return (values[keep, names.index(name)] == 1).astype(np.int64)

    return RawDataset(
        images=images,
        labels=binary(label_attribute),
        class_names=[f"not {label_attribute}", label_attribute],
        attributes={name: binary(name) for name in attributes},
        attribute_groups={name: [f"not {name}", name] for name in attributes},
        source=f"celeba:{root}:{split}",
    )
