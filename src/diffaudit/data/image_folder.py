"""Load a folder of images described by a CSV of filenames, labels and sensitive attributes.

This is the format for bringing your own data: no code, just images and one table. Every problem with
the input raises `DataError` naming the file or column at fault, because a silently skipped image or a
misread column would bias every audit run on top of it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from diffaudit.data.types import RawDataset
from diffaudit.errors import DataError
from diffaudit.utils.lineage import file_md5

_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def _open_image(path: Path, mode: str, size: int | None) -> np.ndarray:
    """One image as float32 (C, H, W) in [0, 1]; DataError naming the file if it is missing or corrupt."""
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with warnings.catch_warnings():
            # Over PIL's MAX_IMAGE_PIXELS it only warns (over twice that it raises): refuse both before
            # decoding, since a small file can declare gigapixels (a decompression bomb).
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = img.convert(mode)
                if size is not None:
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                array = np.asarray(img, dtype=np.float32) / 255.0
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(
            f"image {path} declares more pixels than PIL's decompression-bomb limit "
            f"(MAX_IMAGE_PIXELS {Image.MAX_IMAGE_PIXELS:,}): refused unread ({exc})"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def infer_mode(path: Path) -> str:
    """'L' for a grayscale image, 'RGB' otherwise, judged from the file's own mode."""
    try:
        with Image.open(path) as img:
            return "L" if img.mode in _GRAYSCALE_MODES else "RGB"
    except FileNotFoundError as exc:
        raise DataError(f"image file not found: {path}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def load_images(paths: Sequence[Path], mode: str, size: int | None = None) -> np.ndarray:
    """Stack images into float32 (N, C, H, W), filled in place so peak memory is the result itself.

    Without `size` every image must have the first one's size; the error names the first that differs.
    """
    if not paths:
        raise DataError("no images to load")
    first = _open_image(paths[0], mode, size)
    out = np.empty((len(paths), *first.shape), dtype=np.float32)
    out[0] = first
    for i, path in enumerate(paths[1:], start=1):
        image = _open_image(path, mode, size)
        if image.shape != first.shape:
            raise DataError(
                f"image {path} has size {image.shape[2]}x{image.shape[1]} (WxH) but {paths[0]} has "
                f"{first.shape[2]}x{first.shape[1]}; all images must have the same size"
            )
        out[i] = image
    return out


def _encode(series: pd.Series, column: str, csv_path: Path) -> tuple[np.ndarray, list[str]]:
    """Map a column's sorted unique values to ids 0..K-1; names are the values as strings."""
    if series.isna().any():
        row = int(np.flatnonzero(series.isna().to_numpy())[0])
        raise DataError(f"{csv_path}: column {column!r} has a missing value (data row {row + 1})")
    uniques = list(series.unique())
    numeric = pd.to_numeric(pd.Series(uniques), errors="coerce")
    if numeric.notna().all():  # numbers sort as numbers ("2" before "10"), and keep their CSV spelling
        uniques = [u for _, u in sorted(zip(numeric.tolist(), uniques, strict=True))]
    else:
        uniques = sorted(str(u) for u in uniques)
        series = series.astype(str)
    ids = {value: i for i, value in enumerate(uniques)}
    codes = series.map(ids).to_numpy(dtype=np.int64)
    return codes, [str(value) for value in uniques]


def _resolve_inside(root: Path, filename: str, csv_path: Path) -> Path:
    """The image path for a CSV entry, refusing anything that points outside root (../, absolute,
    symlinks)."""
    if Path(filename).is_absolute():
        raise DataError(
            f"{csv_path}: filename {filename!r} is absolute; filenames must be relative to {root}"
        )
    path = (root / filename).resolve()
    if not path.is_relative_to(root):
        raise DataError(f"{csv_path}: filename {filename!r} resolves to {path}, outside the root {root}")
    return path


def load_image_folder(
    root: str | Path,
    csv: str = "attributes.csv",
    label_column: str = "label",
    attribute_columns: list[str] | None = None,
    channels: int | None = None,
    image_size: int | None = None,
) -> RawDataset:
    """Load every row of `root/csv`, in CSV order: images from its `filename` column, class from
    `label_column`.

    attribute_columns None means every column other than filename and the label. channels 1 or 3 forces
    grayscale or RGB; None takes the first image's kind. `image_size` resizes each image as it is read
    (memory is then bounded by the result, whatever the files' sizes).

    Only an empty cell is a missing value: a class named `NA`, `None` or `null` is a name. Rows whose image
    has the same content as an earlier row's (the same file listed twice, or a byte-identical copy) are
    dropped when their labels agree (`duplicates_removed` counts them) and refused when they do not.
    """
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None, got {channels!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder root not found or not a directory: {root}")
    root = root.resolve()
    csv_path = root / csv
    if not csv_path.is_file():
        raise DataError(
            f"CSV not found: {csv_path} (expected a table with columns filename, {label_column}, ...)"
        )
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"CSV {csv_path} is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse CSV {csv_path}: {exc}") from exc

    if attribute_columns is None:
        attribute_columns = [c for c in table.columns if c not in ("filename", label_column)]
    required = ["filename", label_column, *attribute_columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"CSV {csv_path} lacks column(s) {missing}; columns present: {list(table.columns)}")
    if table.empty:
        raise DataError(f"CSV {csv_path} has no rows")

    if table["filename"].isna().any():
        row = int(np.flatnonzero(table["filename"].isna().to_numpy())[0])
        raise DataError(f"{csv_path}: column 'filename' has a missing value (data row {row + 1})")
    paths = [_resolve_inside(root, name, csv_path) for name in table["filename"]]
    keep = _unique_rows(table, paths, [label_column, *attribute_columns], csv_path)
    removed = len(table) - len(keep)
    table, paths = table.iloc[keep].reset_index(drop=True), [paths[i] for i in keep]

    labels, class_names = _encode(table[label_column], label_column, csv_path)
    if len(class_names) < 2:
        raise DataError(
            f"{csv_path}: label column {label_column!r} has only the class {class_names}; "
            "needs at least 2 classes"
        )
    attributes: dict[str, np.ndarray] = {}
    groups: dict[str, list[str]] = {}
    for column in attribute_columns:
        attributes[column], groups[column] = _encode(table[column], column, csv_path)

    mode = {1: "L", 3: "RGB"}[channels] if channels is not None else infer_mode(paths[0])
    images = load_images(paths, mode, image_size)
    return RawDataset(
        images=images,
        labels=labels,
        class_names=class_names,
        attributes=attributes,
        attribute_groups=groups,
        source=f"image_folder:{root}",
        duplicates_removed=removed,
    )


def _unique_rows(table: pd.DataFrame, paths: list[Path], columns: list[str], csv_path: Path) -> list[int]:
    """Row positions to keep: the first row of each image content; a later row with the same content must
    carry the same labels (else DataError naming both rows and the differing column)."""
    first: dict[str, int] = {}
    keep = []
    for i, path in enumerate(paths):
        digest = file_md5(path) if path.is_file() else f"missing:{path}"
        j = first.setdefault(digest, i)
        if j == i:
            keep.append(i)
            continue
        name, earlier = table["filename"].iloc[i], table["filename"].iloc[j]
        for column in columns:
            a, b = table[column].iloc[j], table[column].iloc[i]
            if a != b:
                same = "is listed" if paths[j] == path else f"has the same content as {earlier!r},"
                raise DataError(
                    f"{csv_path}: {name!r} (data row {i + 1}) {same} with {column}={b!r} where data row "
                    f"{j + 1} says {column}={a!r}; one image needs one label"
                )
    return keep
