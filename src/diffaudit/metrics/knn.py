"""Exact k-nearest-neighbour search: faiss's exact (flat) index for the candidates, then float64 distances.

faiss's `IndexFlatL2` searches every reference point (no approximation) with one float32 matrix
product per block; its squared distances lose digits to cancellation (a point's distance to itself
came out 1.5e-5, not 0). So it proposes `k + margin` candidates per query and their distances are
recomputed in float64, which is what the chunked torch search (`backend="torch"`, kept as the
reference and the fallback) computes throughout. benchmarks/knn.py measures both at 50k points.
"""

from __future__ import annotations

import torch

BACKENDS = ("faiss", "torch")
MARGIN = 8  # extra candidates per query, re-ranked in float64: covers float32 near-ties
CHUNK_ELEMENTS = 2**24  # query rows x reference rows per distance block: 128 MiB in float64, whatever N


def rows_per_chunk(n_reference: int) -> int:
    """Query rows per distance block against `n_reference` points: CHUNK_ELEMENTS distances at most."""
    return max(1, CHUNK_ELEMENTS // max(1, n_reference))


def _torch_knn(q: torch.Tensor, r: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    dists, idx = [], []
    rows = rows_per_chunk(len(r))
    for i in range(0, len(q), rows):
        top = torch.cdist(q[i : i + rows], r).topk(k, dim=1, largest=False)
        dists.append(top.values)
        idx.append(top.indices)
    return torch.cat(dists), torch.cat(idx)


def _faiss_knn(q: torch.Tensor, r: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss  # lazily: only the searches import it

    index = faiss.IndexFlatL2(r.shape[1])
    index.add(r.float().numpy())
    wide = min(len(r), k + MARGIN)
    dists, idx = [], []
    # The float64 re-rank holds three (rows x wide x dim) temporaries: a quarter of the budget each.
    rows = rows_per_chunk(4 * wide * r.shape[1])
    for i in range(0, len(q), rows):
        qi = q[i : i + rows]
        _, cand = index.search(qi.float().numpy(), wide)
        cand = torch.from_numpy(cand).long()
        exact = (r[cand] - qi[:, None, :]).pow(2).sum(-1).sqrt()  # float64, as torch.cdist
        # Equal distances (duplicated points) in index order: sort by index, then stably by distance.
        by_index = torch.argsort(cand, dim=1)
        cand, exact = cand.gather(1, by_index), exact.gather(1, by_index)
        top = torch.argsort(exact, dim=1, stable=True)[:, :k]
        dists.append(exact.gather(1, top))
        idx.append(cand.gather(1, top))
    return torch.cat(dists), torch.cat(idx)


def nearest(
    queries: torch.Tensor, reference: torch.Tensor, k: int, backend: str = "faiss"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` nearest reference points of every query (Euclidean, exact): (distances, indices), each
    (n_queries, k), nearest first, distances in float64. Rows are flattened to vectors.

    Args:
        queries (`torch.Tensor`): (n, ...) points to search from.
        reference (`torch.Tensor`): (m, ...) points to search among; m >= k.
        k (`int`): neighbours per query.
        backend (`str`, *optional*, defaults to `"faiss"`): `faiss` (exact flat index, float64 re-rank)
            or `torch` (chunked float64 `cdist`).

    Raises:
        `ValueError`: for an unknown backend, or fewer than k reference points.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-NN backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if len(reference) < k:
        raise ValueError(f"{k} nearest neighbours need at least {k} reference points (got {len(reference)})")
    q = queries.reshape(len(queries), -1).double()
    r = reference.reshape(len(reference), -1).double()
    return (_faiss_knn if backend == "faiss" else _torch_knn)(q, r, k)
