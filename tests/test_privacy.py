"""The memorization detector: it must flag training images planted among generated ones, and not fresh
images of the same kind it never saw."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffaudit.audit.privacy import (
    closest_pairs,
    gallery,
    memorization,
    nn_ratio,
    privacy_report,
    two_nearest,
)
from diffaudit.data.digits import load_digits
from diffaudit.data.store import to_model_tensor


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Real digits at model resolution, split into a 'training' set and fresh images."""
    ds = load_digits()
    x = to_model_tensor(ds.images, 16)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:1200]], x[perm[1200:1500]]


def test_two_nearest_and_ratio() -> None:
    ref = torch.tensor([[0.0], [1.0], [3.0]])
    d1, d2, idx = two_nearest(torch.tensor([[0.9], [3.0]]), ref)
    np.testing.assert_allclose(d1, [0.1, 0.0], atol=1e-6)
    np.testing.assert_allclose(d2, [0.9, 2.0], atol=1e-6)
    assert idx.tolist() == [1, 2]
    np.testing.assert_allclose(
        nn_ratio(np.array([0.0, 1.0, 0.0]), np.array([0.0, 2.0, 1.0])), [0.0, 0.5, 0.0]
    )


def test_flags_planted_training_images_not_fresh_ones(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    train, fresh = digits
    planted_idx = torch.arange(0, 1200, 120)  # 10 training images, one slightly noised
    planted = train[planted_idx].clone()
    planted[0] += 0.02 * torch.randn(planted[0].shape, generator=torch.Generator().manual_seed(1))
    generated = torch.cat([fresh[:100], planted])
    m = memorization(generated, train, 1 / 3)
    assert m["flagged"][100:].all(), "every planted training image is flagged"
    assert not m["flagged"][:100].any(), "no fresh image is flagged"
    assert m["fraction"] == pytest.approx(10 / 110)
    assert (m["nearest"][100:] == planted_idx.numpy()).all()
    pairs = closest_pairs(m, 10)
    assert {i for i, _, _ in pairs} == set(range(100, 110))


def test_privacy_report_has_floor_and_gallery(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    train, fresh = digits
    generated = torch.cat([fresh[:50], train[:3]])
    report, raw = privacy_report({"pixel": generated}, {"pixel": train}, {"pixel": fresh[50:]}, 1 / 3, 4)
    mem = report.memorization["pixel"]
    assert mem.n_flagged == 3 and mem.real_test_floor.fraction == 0.0
    assert [p.generated for p in mem.closest_pairs][:3] == [50, 51, 52]
    pairs = [(p.generated, p.train, p.ratio) for p in mem.closest_pairs]
    g = gallery(generated, train, pairs)
    assert g.shape == (8, *generated.shape[1:])
    assert torch.equal(g[0], generated[50]) and torch.equal(g[1], train[0])
    assert raw["pixel"]["flagged"].sum() == 3
