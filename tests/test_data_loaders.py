"""Loaders for torchvision's on-disk formats and for image folders, on tiny fakes written in their layouts."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffaudit.data.image_folder import load_image_folder
from diffaudit.data.torchvision_formats import FASHION_MNIST_CLASSES, load_celeba, load_cifar10, load_mnist
from diffaudit.errors import DataError

# --- MNIST ------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return (
        struct.pack(">I", magic)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )


def _write_mnist(
    root: Path, folder: str = "MNIST", gz: bool = False, n_train: int = 5, n_test: int = 3
) -> dict:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": (rng.integers(0, 256, (n_train, 28, 28)), 2051),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10, 2049),
        "t10k-images-idx3-ubyte": (rng.integers(0, 256, (n_test, 28, 28)), 2051),
        "t10k-labels-idx1-ubyte": ((np.arange(n_test) + 7) % 10, 2049),
    }
    for name, (array, magic) in arrays.items():
        data = _idx_bytes(array, magic)
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (raw / name).write_bytes(data)
    return {name: array for name, (array, _) in arrays.items()}


def test_mnist_all_split_is_train_then_test(tmp_path: Path) -> None:
    arrays = _write_mnist(tmp_path)
    ds = load_mnist(tmp_path)
    assert ds.images.shape == (8, 1, 28, 28) and ds.images.dtype == np.float32
    assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
    expected = np.concatenate([arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]])
    np.testing.assert_allclose(ds.images[:, 0] * 255, expected, atol=1e-3)
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [0, 1, 2, 3, 4, 7, 8, 9]
    assert ds.class_names == [str(d) for d in range(10)]
    assert ds.attributes == {} and ds.attribute_groups == {}


def test_mnist_splits_select_files(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    assert load_mnist(tmp_path, split="train").labels.tolist() == [0, 1, 2, 3, 4]
    assert load_mnist(tmp_path, split="test").labels.tolist() == [7, 8, 9]


def test_fashion_mnist_reads_gzip_and_names_classes(tmp_path: Path) -> None:
    _write_mnist(tmp_path, folder="FashionMNIST", gz=True)
    ds = load_mnist(tmp_path, variant="fashion_mnist", split="test")
    assert ds.images.shape == (3, 1, 28, 28)
    assert ds.class_names == FASHION_MNIST_CLASSES and ds.class_names[9] == "Ankle boot"


def test_mnist_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        load_mnist(tmp_path / "nowhere")


def test_mnist_missing_file_names_it_and_the_layout(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*expected layout"):
        load_mnist(tmp_path)
    load_mnist(tmp_path, split="train")  # the train files alone still suffice


def test_mnist_wrong_variant_folder_is_missing(tmp_path: Path) -> None:
    _write_mnist(tmp_path, folder="MNIST")
    with pytest.raises(DataError, match="FashionMNIST"):
        load_mnist(tmp_path, variant="fashion_mnist")


def test_mnist_bad_magic(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(_idx_bytes(np.zeros(5), 2051))  # images magic on a labels file
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.*magic number 2051, expected 2049"):
        load_mnist(tmp_path, split="train")


def test_mnist_truncated_data_mismatches_header(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*header declares"):
        load_mnist(tmp_path, split="train")


def test_mnist_image_and_label_counts_must_match(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(2), 2049))
    with pytest.raises(DataError, match="3 images but 2 labels"):
        load_mnist(tmp_path, split="test")


# --- CIFAR-10 ---------------------------------------------------------------------------------------

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_cifar(root: Path, per_batch: int = 2) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR_NAMES], b"num_vis": 3072}, f)
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data = np.full((per_batch, 3072), 10 * i, dtype=np.uint8)
        data[:, 1024:2048] = 255  # green plane, to check the channel order
        labels = [i] * per_batch  # a list of ints, as in the real files
        with open(folder / name, "wb") as f:  # protocol 2, like the real (Python 2) files
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, f, protocol=2)


def test_cifar_all_split(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    ds = load_cifar10(tmp_path)
    assert ds.images.shape == (12, 3, 32, 32) and ds.images.dtype == np.float32
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert ds.class_names == CIFAR_NAMES
    assert np.all(ds.images[:, 1] == 1.0)
    np.testing.assert_allclose(ds.images[-1, 0], 50 / 255)
    assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0


def test_cifar_train_and_test_splits(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    assert len(load_cifar10(tmp_path, split="train")) == 10
    test = load_cifar10(tmp_path, split="test")
    assert test.labels.tolist() == [5, 5]


def test_cifar_missing_batch(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3.*expected layout"):
        load_cifar10(tmp_path, split="train")
    assert len(load_cifar10(tmp_path, split="test")) == 2


def test_cifar_missing_root_and_meta(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="absent"):
        load_cifar10(tmp_path / "absent")
    with pytest.raises(DataError, match="batches.meta"):
        load_cifar10(tmp_path)


def test_cifar_refuses_pickled_code(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": os.system, b"labels": []}, f)
    with pytest.raises(DataError, match="test_batch.*refusing"):
        load_cifar10(tmp_path, split="test")


def test_cifar_bad_shape_and_counts(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(path, "wb") as f:
        pickle.dump({b"labels": [0, 1], b"data": np.zeros((2, 100), dtype=np.uint8)}, f)
    with pytest.raises(DataError, match=r"test_batch.*\(N, 3072\)"):
        load_cifar10(tmp_path, split="test")
    with open(path, "wb") as f:
        pickle.dump({b"labels": [0], b"data": np.zeros((2, 3072), dtype=np.uint8)}, f)
    with pytest.raises(DataError, match="test_batch.*2 images but 1 labels"):
        load_cifar10(tmp_path, split="test")


# --- CelebA -----------------------------------------------------------------------------------------

CELEBA_ATTRS = ["Male", "Smiling", "Young"]
# filename, Male, Smiling, Young, partition
CELEBA_ROWS = [
    ("000001.jpg", 1, -1, 1, 0),
    ("000002.jpg", -1, 1, 1, 0),
    ("000003.jpg", -1, -1, -1, 1),
    ("000004.jpg", 1, 1, -1, 2),
    ("000005.jpg", -1, 1, 1, 2),
]


def _write_celeba(root: Path, size: tuple[int, int] = (8, 8)) -> Path:
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    for i, (name, *_rest) in enumerate(CELEBA_ROWS):
        Image.new("RGB", size, (40 * i, 100, 200)).save(folder / "img_align_celeba" / name, quality=95)
    lines = [str(len(CELEBA_ROWS)), " ".join(CELEBA_ATTRS)]
    lines += [f"{name}  {m:2d} {s:2d} {y:2d}" for name, m, s, y, _ in CELEBA_ROWS]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text("".join(f"{r[0]} {r[4]}\n" for r in CELEBA_ROWS))
    return folder


def test_celeba_all_split_labels_and_attributes(tmp_path: Path) -> None:
    _write_celeba(tmp_path)
    ds = load_celeba(tmp_path, "Smiling", ["Male", "Young"])
    assert ds.images.shape == (5, 3, 8, 8) and ds.images.dtype == np.float32
    assert ds.images.min() >= 0.0 and ds.images.max() <= 1.0
    assert ds.labels.tolist() == [0, 1, 0, 1, 1]
    assert ds.class_names == ["not Smiling", "Smiling"]
    assert ds.attributes["Male"].tolist() == [1, 0, 0, 1, 0]
    assert ds.attributes["Young"].tolist() == [1, 1, 0, 0, 1]
    assert ds.attributes["Male"].dtype == np.int64
    assert ds.attribute_groups == {"Male": ["not Male", "Male"], "Young": ["not Young", "Young"]}
    # JPEG is lossy but a flat colour survives: blue channel of every image is ~200/255
    np.testing.assert_allclose(ds.images[:, 2], 200 / 255, atol=0.03)


def test_celeba_splits_use_partition(tmp_path: Path) -> None:
    _write_celeba(tmp_path)
    train = load_celeba(tmp_path, "Male", [], split="train")
    test = load_celeba(tmp_path, "Male", [], split="test")
    assert train.labels.tolist() == [1, 0] and test.labels.tolist() == [1, 0]
    assert len(train) + len(test) == 4  # the valid image (partition 1) is in neither
    np.testing.assert_allclose(test.images[0, 0], 120 / 255, atol=0.03)  # it is the 4th image


def test_celeba_image_size_resizes(tmp_path: Path) -> None:
    _write_celeba(tmp_path, size=(10, 12))
    ds = load_celeba(tmp_path, "Male", ["Young"], image_size=4)
    assert ds.images.shape == (5, 3, 4, 4)


def test_celeba_unknown_attribute_lists_available(tmp_path: Path) -> None:
    _write_celeba(tmp_path)
    with pytest.raises(DataError, match="'Bald'.*Male, Smiling, Young"):
        load_celeba(tmp_path, "Smiling", ["Bald"])
    with pytest.raises(DataError, match="'Blond'"):
        load_celeba(tmp_path, "Blond", [])


def test_celeba_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="gone"):
        load_celeba(tmp_path / "gone", "Male", [])
    folder = _write_celeba(tmp_path)
    (folder / "img_align_celeba" / "000004.jpg").unlink()
    with pytest.raises(DataError, match="000004.jpg"):
        load_celeba(tmp_path, "Male", [])
    (folder / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError, match="list_eval_partition.txt.*expected layout"):
        load_celeba(tmp_path, "Male", [], split="train")
    (folder / "list_attr_celeba.txt").unlink()
    with pytest.raises(DataError, match="list_attr_celeba.txt.*expected layout"):
        load_celeba(tmp_path, "Male", [])


def test_celeba_count_line_must_match_rows(tmp_path: Path) -> None:
    folder = _write_celeba(tmp_path)
    path = folder / "list_attr_celeba.txt"
    path.write_text("7\n" + path.read_text().split("\n", 1)[1])
    with pytest.raises(DataError, match="list_attr_celeba.txt.*says 7 images but 5"):
        load_celeba(tmp_path, "Male", [])


# --- image folder -----------------------------------------------------------------------------------


def _write_folder(
    root: Path, rows: list[dict] | None = None, mode: str = "L", size: tuple[int, int] = (6, 5)
) -> Path:
    rows = rows or [
        {"filename": "a.png", "label": "cat", "sex": "f", "age": 30},
        {"filename": "sub/b.png", "label": "dog", "sex": "m", "age": 4},
        {"filename": "c.png", "label": "cat", "sex": "m", "age": 30},
    ]
    root.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        path = root / row["filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        colour = 50 * i if mode == "L" else (50 * i, 0, 255)
        Image.new(mode, size, colour).save(path)
    pd.DataFrame(rows).to_csv(root / "attributes.csv", index=False)
    return root


def test_image_folder_loads_rows_in_csv_order(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "data")
    ds = load_image_folder(root)
    assert ds.images.shape == (3, 1, 5, 6) and ds.images.dtype == np.float32
    np.testing.assert_allclose(ds.images[:, 0, 0, 0], [0, 50 / 255, 100 / 255])
    assert ds.labels.tolist() == [0, 1, 0] and ds.class_names == ["cat", "dog"]
    assert ds.attributes["sex"].tolist() == [0, 1, 1] and ds.attribute_groups["sex"] == ["f", "m"]
    # integer columns sort numerically (4 before 30), names are the values as text
    assert ds.attributes["age"].tolist() == [1, 0, 1] and ds.attribute_groups["age"] == ["4", "30"]
    assert ds.attributes["age"].dtype == np.int64 and ds.labels.dtype == np.int64


def test_image_folder_channels(tmp_path: Path) -> None:
    rgb = _write_folder(tmp_path / "rgb", mode="RGB")
    ds = load_image_folder(rgb)
    assert ds.images.shape == (3, 3, 5, 6)
    np.testing.assert_allclose(ds.images[:, 2], 1.0)
    assert load_image_folder(rgb, channels=1).images.shape == (3, 1, 5, 6)
    gray = _write_folder(tmp_path / "gray")
    assert load_image_folder(gray, channels=3).images.shape == (3, 3, 5, 6)


def test_image_folder_column_selection(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "data")
    ds = load_image_folder(root, label_column="sex", attribute_columns=["label"])
    assert ds.class_names == ["f", "m"] and list(ds.attributes) == ["label"]
    assert load_image_folder(root, attribute_columns=[]).attributes == {}


def test_image_folder_missing_root_and_csv(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing_dir"):
        load_image_folder(tmp_path / "missing_dir")
    root = _write_folder(tmp_path / "data")
    with pytest.raises(DataError, match="other.csv"):
        load_image_folder(root, csv="other.csv")


def test_image_folder_missing_columns_lists_present(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "data")
    with pytest.raises(DataError, match=r"\['class'\].*present.*'filename', 'label', 'sex', 'age'"):
        load_image_folder(root, label_column="class")
    with pytest.raises(DataError, match="'race'"):
        load_image_folder(root, attribute_columns=["race"])
    pd.DataFrame({"file": ["a.png"], "label": [1]}).to_csv(root / "attributes.csv", index=False)
    with pytest.raises(DataError, match="'filename'"):
        load_image_folder(root)


@pytest.mark.parametrize("bad", ["../outside.png", "sub/../../outside.png"])
def test_image_folder_rejects_paths_escaping_root(tmp_path: Path, bad: str) -> None:
    root = _write_folder(tmp_path / "data")
    Image.new("L", (6, 5)).save(tmp_path / "outside.png")
    table = pd.read_csv(root / "attributes.csv")
    table.loc[1, "filename"] = bad
    table.to_csv(root / "attributes.csv", index=False)
    with pytest.raises(DataError, match="outside the root"):
        load_image_folder(root)


def test_image_folder_rejects_absolute_path(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "data")
    table = pd.read_csv(root / "attributes.csv")
    table.loc[0, "filename"] = str(root / "a.png")  # inside root, but absolute
    table.to_csv(root / "attributes.csv", index=False)
    with pytest.raises(DataError, match="is absolute"):
        load_image_folder(root)


def test_image_folder_rejects_symlink_out_of_root(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "data")
    Image.new("L", (6, 5)).save(tmp_path / "secret.png")
    (root / "c.png").unlink()
    (root / "c.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(DataError, match="'c.png'.*outside the root"):
        load_image_folder(root)


def test_image_folder_allows_symlink_within_root(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "data")
    (root / "c.png").rename(root / "elsewhere.png")  # a file no row lists
    (root / "c.png").symlink_to(root / "elsewhere.png")
    ds = load_image_folder(root)
    assert len(ds) == 3 and ds.images[2, 0, 0, 0] == pytest.approx(100 / 255)


def test_image_folder_missing_and_corrupt_image(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "data")
    (root / "sub" / "b.png").unlink()
    with pytest.raises(DataError, match="b.png"):
        load_image_folder(root)
    (root / "sub" / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"cannot read image .*b\.png"):
        load_image_folder(root)
    (root / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # first image: used to infer channels
    with pytest.raises(DataError, match=r"a\.png"):
        load_image_folder(root)


def test_image_folder_truncated_image(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "data", size=(40, 40))
    path = root / "c.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"c\.png"):
        load_image_folder(root)


def test_image_folder_size_mismatch_names_file_and_sizes(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "data")
    Image.new("L", (7, 5)).save(root / "c.png")
    with pytest.raises(DataError, match=r"c\.png has size 7x5.*a\.png has 6x5"):
        load_image_folder(root)


def test_image_folder_empty_csv(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "data")
    (root / "attributes.csv").write_text("")
    with pytest.raises(DataError, match="attributes.csv is empty"):
        load_image_folder(root)
    (root / "attributes.csv").write_text("filename,label\n")
    with pytest.raises(DataError, match="attributes.csv has no rows"):
        load_image_folder(root)


def test_image_folder_needs_two_classes(tmp_path: Path) -> None:
    rows = [{"filename": "a.png", "label": 1}, {"filename": "b.png", "label": 1}]
    root = _write_folder(tmp_path / "data", rows=rows)
    with pytest.raises(DataError, match="'label'.*needs at least 2 classes"):
        load_image_folder(root)


def test_image_folder_missing_label_value(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "data")
    (root / "attributes.csv").write_text("filename,label\na.png,cat\nsub/b.png,\nc.png,dog\n")
    with pytest.raises(DataError, match="'label' has a missing value"):
        load_image_folder(root)


def test_image_folder_drops_repeated_images_and_counts_them(tmp_path: Path) -> None:
    """Red team: the same image listed twice landed in train and test alike. Repeats with the same labels
    (the same file, or a byte-identical copy) are dropped and counted; the first row is kept."""
    root = _write_folder(tmp_path / "data")
    (root / "copy.png").write_bytes((root / "a.png").read_bytes())
    table = pd.read_csv(root / "attributes.csv", dtype=str)
    extra = pd.DataFrame(
        [
            {"filename": "a.png", "label": "cat", "sex": "f", "age": "30"},
            {"filename": "copy.png", "label": "cat", "sex": "f", "age": "30"},
        ]
    )
    pd.concat([table, extra]).to_csv(root / "attributes.csv", index=False)
    ds = load_image_folder(root)
    assert len(ds) == 3 and ds.duplicates_removed == 2
    assert ds.labels.tolist() == [0, 1, 0]


@pytest.mark.parametrize("row", ["a.png,dog,f,30", "copy.png,cat,m,30"])
def test_image_folder_refuses_one_image_with_two_labels(tmp_path: Path, row: str) -> None:
    root = _write_folder(tmp_path / "data")
    (root / "copy.png").write_bytes((root / "a.png").read_bytes())
    with open(root / "attributes.csv", "a") as f:
        f.write(row + "\n")
    with pytest.raises(DataError, match=r"data row 4.*data row 1 says .*one image needs one label"):
        load_image_folder(root)


def test_image_folder_class_named_na_or_null_is_a_name(tmp_path: Path) -> None:
    """Red team: a class literally named NA, None or null was read as a missing value."""
    rows = [
        {"filename": "a.png", "label": "NA"},
        {"filename": "b.png", "label": "None"},
        {"filename": "c.png", "label": "null"},
    ]
    root = _write_folder(tmp_path / "data", rows=rows)
    ds = load_image_folder(root)
    assert ds.class_names == ["NA", "None", "null"] and ds.labels.tolist() == [0, 1, 2]


def test_image_folder_resizes_each_image_as_it_reads(tmp_path: Path) -> None:
    """Red team: a huge first image was stacked at native size before any resizing."""
    root = _write_folder(tmp_path / "data")
    Image.new("L", (3000, 3000), 200).save(root / "a.png")  # 9 MP: 36 MB as float32 if kept
    ds = load_image_folder(root, image_size=8)
    assert ds.images.shape == (3, 1, 8, 8)
    np.testing.assert_allclose(ds.images[0], 200 / 255, atol=1e-6)
