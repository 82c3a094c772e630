"""Exact k-NN (metrics/knn.py): faiss's candidates re-ranked in float64 give the true neighbours."""

from __future__ import annotations

import pytest
import torch

from diffaudit.metrics.knn import nearest


def test_neighbours_on_a_line_are_known_exactly() -> None:
    ref = torch.arange(100.0)[:, None] * 2.0  # 0, 2, 4, ...
    q = torch.tensor([[10.9], [0.0], [199.0]])
    for backend in ("faiss", "torch"):
        d, i = nearest(q, ref, 3, backend=backend)
        assert i.tolist() == [[5, 6, 4], [0, 1, 2], [99, 98, 97]]
        assert torch.allclose(
            d, torch.tensor([[0.9, 1.1, 2.9], [0.0, 2.0, 4.0], [1.0, 3.0, 5.0]], dtype=d.dtype)
        )


def test_faiss_agrees_with_the_float64_reference_search() -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(3000, 64, generator=g)
    q = torch.randn(500, 64, generator=g)
    df, i_f = nearest(q, ref, 5, backend="faiss")
    dt, i_t = nearest(q, ref, 5, backend="torch")
    assert torch.equal(i_f, i_t)
    assert (df - dt).abs().max() < 1e-9


def test_a_point_is_its_own_nearest_at_distance_zero_and_duplicates_tie_in_index_order() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 32, generator=g) * 100  # large norms: float32 cancellation would not give 0
    x[7] = x[3]
    d, i = nearest(x, x, 2)
    assert (d[:, 0] == 0).all()
    assert i[3].tolist() == [3, 7] and i[7].tolist() == [3, 7]
    others = [r for r in range(400) if r not in (3, 7)]
    assert i[others, 0].tolist() == others


def test_unknown_backend_and_too_few_points_are_refused() -> None:
    with pytest.raises(ValueError, match="allowed: faiss, torch"):
        nearest(torch.zeros(2, 2), torch.zeros(3, 2), 1, backend="annoy")
    with pytest.raises(ValueError, match="at least 4 reference points"):
        nearest(torch.zeros(2, 2), torch.zeros(3, 2), 4)
