"""Evaluation scaling: time and peak memory of features, FID, KID, precision and recall as N grows.

N random images per side (real and generated) go through the evaluator's feature module (the trained
evaluator when models/evaluator exists, else a random one of the configured width), then through
the library's FID, KID and chunked precision/recall, run the way the evaluate stage runs them
(single-threaded metrics). Sizes are visited 1k, 2k, 4k, 8k, 8k, 4k, 2k, 1k so a drift in background
load hits small and large N alike; the time is the mean of the two visits, the peak the larger.

Also the evaluate stage's whole `set_metrics` with its bootstrap intervals at a few replicates, with
the time per replicate extrapolated to the configured `eval.bootstrap`.

Growth is the log-log slope from the smallest to the largest N: 1 is linear, 2 quadratic.
Peak memory is VmHWM above the RSS the block started with (reset through /proc/self/clear_refs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import ROOT, Figure, load_config, peak_rss
from diffaudit.config.schema import Config
from diffaudit.layout import Layout
from diffaudit.metrics.features import EvaluatorFeatures, extract, single_thread
from diffaudit.metrics.fid import fid_features, kid_features
from diffaudit.metrics.precision_recall import precision_recall
from diffaudit.metrics.quality import set_metrics
from diffaudit.models.evaluator import Evaluator

SIZES = (1000, 2000, 4000, 8000)
MAX_MEMORY_EXPONENT = 1.2  # bounded: memory grows at most linearly in N (no N x N matrix)
COMPONENTS = ("features", "fid", "kid", "precision_recall")


def evaluator_for(cfg: Config, model_dir: Path | None) -> tuple[Evaluator, str]:
    if model_dir is not None and (model_dir / "config.json").is_file():
        return Evaluator.from_pretrained(model_dir, use_safetensors=True), "trained"
    torch.manual_seed(cfg.seed)
    ev = Evaluator(cfg.data.channels, 10, {"thickness": 2}, width=cfg.eval.evaluator.width)
    return ev.eval(), "random"


def _measure(fn: Callable[[], Any]) -> tuple[float, float | None, Any]:
    """(seconds, peak MiB above the starting RSS, result) of one call."""
    with peak_rss() as mem:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    return seconds, mem.delta_mib, out


def one_size(
    module: EvaluatorFeatures, cfg: Config, n: int, reps: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Every component at one N (real and generated sets of n images each)."""
    gen = torch.Generator().manual_seed(seed + n)
    shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    real, fake = (torch.rand(n, *shape, generator=gen) * 2 - 1 for _ in range(2))
    out: dict[str, dict[str, Any]] = {}
    s, m, (f_real, f_fake) = _measure(lambda: (extract(module, real), extract(module, fake)))
    out["features"] = {"seconds": s, "peak_mib": m}
    e = cfg.eval
    for name, fn in (
        ("fid", lambda: fid_features(f_real, f_fake)),
        ("kid", lambda: kid_features(f_real, f_fake, e.kid_subset_size, e.kid_subsets, seed)),
        ("precision_recall", lambda: _single(lambda: precision_recall(f_real, f_fake, e.pr_k))),
    ):
        s, m, _ = _measure(fn)
        out[name] = {"seconds": s, "peak_mib": m}
    ci_cfg = e.model_copy(update={"bootstrap": reps})
    s, m, _ = _measure(lambda: set_metrics(f_real, f_fake, ci_cfg, seed, with_ci=True))
    out["set_metrics_ci"] = {"seconds": s, "peak_mib": m, "reps": reps}
    return out


def _single(fn: Callable[[], Any]) -> Any:
    with single_thread():
        return fn()


def growth(xs: list[int], ys: list[float | None]) -> float | None:
    """Log-log slope between the first and last point (1: linear, 2: quadratic)."""
    if ys[0] is None or ys[-1] is None or ys[0] <= 0 or ys[-1] <= 0 or xs[-1] == xs[0]:
        return None
    return math.log(ys[-1] / ys[0]) / math.log(xs[-1] / xs[0])


def run(
    quick: bool = False,
    sizes: tuple[int, ...] | None = None,
    reps: int | None = None,
    model_dir: Path | None = None,
) -> dict[str, Any]:
    cfg = load_config(["experiment=smoke"] if quick else [])
    sizes = tuple(sizes or ((48, 96) if quick else SIZES))
    reps = reps or (2 if quick else 1)
    ev, source = evaluator_for(cfg, None if quick else (model_dir or ROOT / Layout.of(cfg).evaluator))
    module = EvaluatorFeatures(ev)
    order = list(sizes) if quick else list(sizes) + list(reversed(sizes))
    visits: dict[int, list[dict[str, dict[str, Any]]]] = {n: [] for n in sizes}
    for n in order:
        visits[n].append(one_size(module, cfg, n, reps, cfg.seed))
    per_size: dict[str, dict[str, Any]] = {}
    for n, vs in visits.items():
        row: dict[str, Any] = {}
        for comp in (*COMPONENTS, "set_metrics_ci"):
            secs = [v[comp]["seconds"] for v in vs]
            peaks = [v[comp]["peak_mib"] for v in vs if v[comp]["peak_mib"] is not None]
            row[comp] = {"seconds": sum(secs) / len(secs), "peak_mib": max(peaks) if peaks else None}
        row["total_seconds"] = sum(row[c]["seconds"] for c in COMPONENTS)
        peaks = [row[c]["peak_mib"] for c in COMPONENTS]
        row["peak_mib"] = None if None in peaks else max(peaks)
        ci = row["set_metrics_ci"]
        per_rep = (
            max(
                0.0,
                ci["seconds"]
                - row["fid"]["seconds"]
                - row["kid"]["seconds"]
                - row["precision_recall"]["seconds"],
            )
            / reps
        )
        ci["reps"] = reps
        ci["seconds_per_rep"] = per_rep
        ci["extrapolated_seconds"] = ci["seconds"] + per_rep * (cfg.eval.bootstrap - reps)
        per_size[str(n)] = row
    ns = list(sizes)
    rows = [per_size[str(n)] for n in ns]
    result: dict[str, Any] = {
        "sizes": ns,
        "evaluator": source,
        "feature_dim": module.num_features,
        "bootstrap_configured": cfg.eval.bootstrap,
        "kid_subset_size": cfg.eval.kid_subset_size,
        "kid_subsets": cfg.eval.kid_subsets,
        "pr_k": cfg.eval.pr_k,
        "per_size": per_size,
        "time_growth_exponent": growth(ns, [r["total_seconds"] for r in rows]),
        "memory_growth_exponent": growth(ns, [r["peak_mib"] for r in rows]),
        "component_growth": {
            c: {
                "time": growth(ns, [r[c]["seconds"] for r in rows]),
                "memory": growth(ns, [r[c]["peak_mib"] for r in rows]),
            }
            for c in (*COMPONENTS, "set_metrics_ci")
        },
        "nxn_float64_mib_at_max": ns[-1] ** 2 * 8 / 2**20,
    }
    return result


def figures(r: dict[str, Any]) -> list[Figure]:
    out = []
    for n in r["sizes"]:
        row = r["per_size"][str(n)]
        out.append(
            Figure(
                f"eval N={n}: time",
                row["total_seconds"],
                "s",
                note=" ".join(f"{c}={row[c]['seconds']:.2f}" for c in COMPONENTS),
            )
        )
        out.append(
            Figure(
                f"eval N={n}: peak memory",
                row["peak_mib"],
                "MiB",
                note=" ".join(f"{c}={row[c]['peak_mib'] or 0:.0f}" for c in COMPONENTS),
            )
        )
    mem = r["memory_growth_exponent"]
    out.append(
        Figure("eval time growth exponent", r["time_growth_exponent"], "", note="log-log slope, 1 = linear")
    )
    out.append(
        Figure(
            "eval memory growth exponent",
            mem,
            "",
            f"<= {MAX_MEMORY_EXPONENT}",
            None if mem is None else mem <= MAX_MEMORY_EXPONENT,
            f"largest N x N float64 would be {r['nxn_float64_mib_at_max']:.0f} MiB",
        )
    )
    big = r["per_size"][str(r["sizes"][-1])]["set_metrics_ci"]
    ci_mem = r["component_growth"]["set_metrics_ci"]["memory"]
    out.append(
        Figure(
            f"evaluate with bootstrap CI, N={r['sizes'][-1]}",
            big["extrapolated_seconds"],
            "s",
            note=f"{r['bootstrap_configured']} reps extrapolated from {big['reps']}; "
            f"{big['seconds_per_rep']:.2f} s/rep",
        )
    )
    out.append(Figure(f"evaluate with bootstrap CI, N={r['sizes'][-1]}: peak", big["peak_mib"], "MiB"))
    out.append(
        Figure(
            "evaluate with bootstrap CI: memory growth",
            ci_mem,
            "",
            f"<= {MAX_MEMORY_EXPONENT}",
            None if ci_mem is None else ci_mem <= MAX_MEMORY_EXPONENT,
        )
    )
    return out
