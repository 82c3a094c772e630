"""Data preparation: the embedded digits, the derived attribute, splits, the bias option, bad data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffaudit.config.schema import BiasCfg, DataCfg
from diffaudit.data.attributes import add_derived_attributes
from diffaudit.data.digits import load_digits
from diffaudit.data.prepare import (
    apply_bias,
    cap_per_class,
    data_card,
    load_raw,
    stratified_split,
    validate,
)
from diffaudit.data.store import load_meta, load_split, save_prepared, to_model_tensor
from diffaudit.data.types import RawDataset
from diffaudit.errors import DataError

DIGITS = DataCfg(
    name="digits", image_size=16, channels=1, val_fraction=0.1, test_fraction=0.2, attributes=["thickness"]
)


@pytest.fixture(scope="module")
def digits() -> RawDataset:
    return load_raw(DIGITS)


def test_digits_loads_with_thickness(digits: RawDataset) -> None:
    assert digits.images.shape == (1797, 1, 8, 8)
    assert digits.images.min() >= 0.0 and digits.images.max() <= 1.0
    assert digits.attribute_groups["thickness"] == ["thin", "thick"]
    ink = digits.images.reshape(len(digits), -1).sum(1)
    for c in range(10):
        idx = digits.labels == c
        thick = digits.attributes["thickness"][idx] == 1
        # a median split: about half of each class, and the thick half carries more ink
        assert abs(thick.mean() - 0.5) < 0.06
        assert ink[idx][thick].min() >= ink[idx][~thick].max()


def test_split_is_deterministic_stratified_and_disjoint(digits: RawDataset) -> None:
    a = stratified_split(digits, 0.1, 0.2, seed=7)
    b = stratified_split(digits, 0.1, 0.2, seed=7)
    c = stratified_split(digits, 0.1, 0.2, seed=8)
    assert all(np.array_equal(a[k].images, b[k].images) for k in a)
    assert not np.array_equal(a["test"].labels, c["test"].labels)
    sizes = {k: len(v) for k, v in a.items()}
    assert sum(sizes.values()) == len(digits) and abs(sizes["test"] - 0.2 * len(digits)) <= 2
    keys = {k: {v.images[i].tobytes() for i in range(len(v))} for k, v in a.items()}
    assert not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    share = np.bincount(a["test"].labels) / len(a["test"])
    assert np.allclose(share, np.bincount(digits.labels) / len(digits), atol=0.01)


def test_bias_keeps_a_fraction_of_one_group_in_chosen_classes(digits: RawDataset) -> None:
    bias = BiasCfg(attribute="thickness", group=1, keep_fraction=0.2, classes=[1, 7])
    skewed = apply_bias(digits, bias, seed=0)
    for c in range(10):
        before = (digits.labels == c) & (digits.attributes["thickness"] == 1)
        after = (skewed.labels == c) & (skewed.attributes["thickness"] == 1)
        if c in (1, 7):
            assert after.sum() == round(0.2 * before.sum())
        else:
            assert after.sum() == before.sum()
    with pytest.raises(DataError, match="not an attribute"):
        apply_bias(digits, bias.model_copy(update={"attribute": "colour"}), seed=0)
    with pytest.raises(DataError, match="class ids"):
        apply_bias(digits, bias.model_copy(update={"classes": [12]}), seed=0)


def test_resize_and_store_round_trip(tmp_path, digits: RawDataset) -> None:
    x = to_model_tensor(digits.images[:5], 16)
    assert x.shape == (5, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    splits = stratified_split(cap_per_class(digits, 20, seed=0), 0.1, 0.2, seed=0)
    save_prepared(tmp_path, splits, 16)
    meta = load_meta(tmp_path)
    train = load_split(tmp_path, "train")
    assert meta.class_names == [str(i) for i in range(10)] and meta.channels == 1
    assert train.images.shape[1:] == (1, 16, 16) and train.labels.dtype == torch.int64
    assert torch.equal(
        train.attributes["thickness"], torch.from_numpy(splits["train"].attributes["thickness"])
    )
    card = data_card(splits)
    assert card["train"]["n"] == len(splits["train"])
    assert sum(card["test"]["per_class"].values()) == card["test"]["n"]
    assert sum(card["train"]["per_attribute"]["thickness"].values()) == card["train"]["n"]


def _tiny(labels: list[int]) -> RawDataset:
    n = len(labels)
    return RawDataset(
        images=np.full((n, 1, 4, 4), 0.5, np.float32),
        labels=np.array(labels, np.int64),
        class_names=["a", "b"],
        source="tiny",
    )


def test_bad_data_is_rejected_with_the_reason() -> None:
    with pytest.raises(DataError, match="empty"):
        validate(_tiny([]), channels=1)
    with pytest.raises(DataError, match="at least 2 classes"):
        validate(_tiny([0, 0, 0]), channels=1)
    with pytest.raises(DataError, match="data.channels=3"):
        validate(_tiny([0, 1]), channels=3)
    bad = _tiny([0, 1])
    bad.images[0, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        validate(bad, channels=1)
    with pytest.raises(DataError, match="neither in the dataset"):
        add_derived_attributes(_tiny([0, 1]), ["hair_colour"])
    with pytest.raises(DataError, match="too few images"):
        stratified_split(_tiny([0, 1, 0, 1]), 0.1, 0.2, seed=0)


def test_missing_root_for_a_real_dataset_names_the_path(tmp_path) -> None:
    cfg = DataCfg(
        name="mnist",
        root=str(tmp_path / "nowhere"),
        image_size=16,
        channels=1,
        val_fraction=0.1,
        test_fraction=0.2,
    )
    with pytest.raises(DataError, match="nowhere"):
        load_raw(cfg)


def test_digits_source_is_sklearn() -> None:
    assert load_digits().source == "sklearn.datasets.load_digits"
