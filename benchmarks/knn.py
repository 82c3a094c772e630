"""k-nearest-neighbour search at evaluation scale: faiss's exact flat index (with the float64 re-rank
of metrics/knn.py) against the chunked float64 torch search, both exact.

Each backend searches the k+1 nearest neighbours of every point of an N-point set within the set (the
k-NN radii of precision/recall, k = eval.pr_k) at N = 10k and 50k: 128-dim points (the evaluator's
feature width at eval.evaluator.width=32) and 256-dim points (a 16x16 image in pixel space, the
memorization search's). Agreement: the share of identical neighbour indices, and the largest distance
difference. Peak memory: VmHWM above the starting RSS.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.common import Figure, load_config, peak_rss
from diffaudit.metrics.knn import nearest

SIZES = (10_000, 50_000)
DIMS = (128, 256)


def one(x: torch.Tensor, k: int, backend: str) -> tuple[dict[str, Any], tuple[torch.Tensor, torch.Tensor]]:
    with peak_rss() as mem:
        t0 = time.perf_counter()
        out = nearest(x, x, k + 1, backend=backend)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_mib": mem.delta_mib}, out


def run(quick: bool = False) -> dict[str, Any]:
    cfg = load_config(["experiment=smoke"] if quick else [])
    k = cfg.eval.pr_k
    sizes = (600, 1200) if quick else SIZES
    per: dict[str, Any] = {}
    for d in DIMS:
        for n in sizes:
            x = torch.randn(n, d, generator=torch.Generator().manual_seed(n + d))
            row: dict[str, Any] = {}
            # Both on the same (all) threads: the comparison is of the libraries, not of settings.
            row["faiss"], (df, i_f) = one(x, k, "faiss")
            row["torch"], (dt, i_t) = one(x, k, "torch")
            row["same_indices"] = float((i_f == i_t).double().mean())
            row["max_distance_difference"] = float((df - dt).abs().max())
            row["speedup"] = row["torch"]["seconds"] / row["faiss"]["seconds"]
            per[f"{d}d@{n}"] = row
    return {"k": k, "threads": torch.get_num_threads(), "per_size": per}


def figures(r: dict[str, Any]) -> list[Figure]:
    out = []
    for key, row in r["per_size"].items():
        out.append(
            Figure(
                f"knn faiss vs torch {key}",
                row["speedup"],
                "x faster",
                note=(
                    f"faiss {row['faiss']['seconds']:.2f}s/{row['faiss']['peak_mib'] or 0:.0f}MiB, "
                    f"torch {row['torch']['seconds']:.2f}s/{row['torch']['peak_mib'] or 0:.0f}MiB; "
                    f"same neighbours {row['same_indices']:.4f}, "
                    f"max |dd| {row['max_distance_difference']:.1e}"
                ),
            )
        )
    return out
