"""Representation: how far the generated distribution of a label is from a reference distribution.

Measured by an imperfect classifier (the evaluator), so every figure comes twice: raw, and corrected
for the classifier's own errors with its confusion matrix on real held-out data (CLEAM-style:
p_obs = C^T p_true, so p_true ~ solve(C^T, p_obs)). Intervals come from a bootstrap that resamples
both the generated labels and the held-out images the confusion matrix is counted on, and a null
(a perfect generator of the same size) says how large a discrepancy noise alone produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffaudit.utils import intervals

MEASURES = ("fd_l2", "tv", "kl")


def distribution(labels: np.ndarray, k: int) -> np.ndarray:
    """Shares of labels 0..k-1 (absent labels get 0)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=k)[:k].astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def discrepancies(p: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
    """FD (L2, Choi et al. 2020), total variation and KL(p || ref) along the last axis (batched).

    KL uses 0 log 0 = 0; the reference must cover every group the generator produces.
    """
    p, ref = np.asarray(p, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    diff = p - ref
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / np.maximum(ref, 1e-12)), 0.0)
    return {"fd_l2": np.sqrt((diff**2).sum(-1)), "tv": 0.5 * np.abs(diff).sum(-1), "kl": terms.sum(-1)}


def confusion_counts(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """k x k counts, rows the true label, columns the predicted one."""
    codes = np.asarray(true, dtype=np.int64) * k + np.asarray(pred, dtype=np.int64)
    return np.bincount(codes, minlength=k * k).reshape(k, k).astype(np.float64)


def row_normalise(counts: np.ndarray) -> np.ndarray:
    """P(pred | true) from counts (batched); a true label never seen keeps an identity row (no correction)."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(-1, keepdims=True)
    eye = np.broadcast_to(np.eye(counts.shape[-1]), counts.shape)
    return np.where(totals > 0, counts / np.maximum(totals, 1e-12), eye)


def correct(p_obs: np.ndarray, confusion: np.ndarray) -> np.ndarray:
    """Invert p_obs = C^T p_true (C row-stochastic, batched), then clip to >= 0 and renormalise.

    The pseudo-inverse keeps a near-singular C (a classifier at chance) from blowing up.
    """
    c = row_normalise(confusion)
    p = np.einsum(
        "...ij,...j->...i", np.linalg.pinv(np.swapaxes(c, -1, -2)), np.asarray(p_obs, dtype=np.float64)
    )
    p = np.clip(p, 0.0, None)
    s = p.sum(-1, keepdims=True)
    uniform = np.full_like(p, 1.0 / p.shape[-1])
    return np.where(s > 0, p / np.maximum(s, 1e-12), uniform)


def percentile_ci(samples: np.ndarray, level: float) -> list[float]:
    """Percentile bootstrap interval [low, high] (NaN when there are no replicates)."""
    return list(intervals.percentile(samples, level))


def bootstrap_shares(pred: np.ndarray, k: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, k) shares of resampled label sets: a multinomial draw is exactly a categorical resample."""
    n = len(pred)
    if n == 0:
        return np.full((n_boot, k), np.nan)
    return rng.multinomial(n, distribution(pred, k), size=n_boot) / n


def bootstrap_confusion(counts: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, k, k) resampled confusion counts (the held-out images resampled with replacement)."""
    k = counts.shape[0]
    n = int(counts.sum())
    if n == 0:
        return np.zeros((n_boot, k, k))
    return rng.multinomial(n, (counts / n).ravel(), size=n_boot).reshape(n_boot, k, k).astype(np.float64)


def _on_simplex(p: np.ndarray) -> np.ndarray:
    """Shares clipped to >= 0 and renormalised (a truth plus a bootstrap deviation can leave the simplex)."""
    p = np.clip(p, 0.0, None)
    return p / np.maximum(p.sum(-1, keepdims=True), 1e-12)


def discrepancy_estimate(
    measure: str, point: np.ndarray, boots: np.ndarray, ref: np.ndarray, level: float
) -> dict:
    """One discrepancy of `point` from `ref`: its median-unbiased estimate and test-inversion interval
    (utils/intervals.py `inversion`; the plug-in is biased upward and sits on a boundary at zero), and
    the plug-in beside them."""

    def distance(v: np.ndarray) -> np.ndarray:
        return discrepancies(_on_simplex(v), ref)[measure]

    plug_in = float(distance(np.asarray(point)[None])[0])
    if len(boots) == 0:
        return {"value": plug_in, "ci": None, "method": None, "plug_in": plug_in}
    # The truths searched stay on the simplex: the ray from the reference stops where a share reaches 0.
    step = np.asarray(point, dtype=np.float64) - ref
    shrinking = step < 0
    s_max = max(1.0, float(np.min(ref[shrinking] / -step[shrinking]))) if shrinking.any() else None
    value, ci = intervals.inversion(distance, point, ref, boots - point, level, s_max=s_max)
    return {"value": value, "ci": list(ci), "method": intervals.INVERSION, "plug_in": plug_in}


@dataclass
class Shares:
    """Generated shares of one label, raw and corrected, with bootstrap replicates (n_boot, k) and the
    null: replicates of a generator that hits the reference exactly, seen through the same classifier."""

    n: int
    raw: np.ndarray
    corrected: np.ndarray
    boot_raw: np.ndarray
    boot_corrected: np.ndarray
    null_raw: np.ndarray
    null_corrected: np.ndarray
    correction: str = "pooled"


def pooled_shares(
    gen_pred: np.ndarray, confusion: np.ndarray, ref: np.ndarray, n_boot: int, rng: np.random.Generator
) -> Shares:
    """Shares corrected with one confusion matrix for the whole set."""
    k = len(ref)
    ref = np.asarray(ref, dtype=np.float64) / np.sum(ref)
    p_raw = distribution(gen_pred, k)
    boot_raw = bootstrap_shares(gen_pred, k, n_boot, rng)
    boot_c = bootstrap_confusion(confusion, n_boot, rng)
    n = max(len(gen_pred), 1)
    p_obs_null = row_normalise(confusion).T @ ref
    return Shares(
        n=len(gen_pred),
        raw=p_raw,
        corrected=correct(p_raw, confusion),
        boot_raw=boot_raw,
        boot_corrected=correct(boot_raw, boot_c),
        null_raw=rng.multinomial(n, ref, size=n_boot) / n,
        null_corrected=correct(rng.multinomial(n, p_obs_null / p_obs_null.sum(), size=n_boot) / n, boot_c),
    )


def stratified_shares(
    gen_pred: np.ndarray,
    gen_strata: np.ndarray,
    test_true: np.ndarray,
    test_pred: np.ndarray,
    test_strata: np.ndarray,
    ref: np.ndarray,
    min_count: int,
    n_boot: int,
    rng: np.random.Generator,
    prior: float = 0.0,
) -> tuple[Shares, dict[int, Shares]]:
    """Shares within each stratum (class), each corrected with that class's own confusion matrix on real
    test images when every true group has `min_count` of them (else the pooled matrix), and the whole-set
    shares as their mixture weighted by the (fixed) number of images generated per class.

    The evaluator's errors depend on the class (a judge trained on a skewed set under-calls the rare group
    exactly where it was rare); one pooled matrix would then mistake a real skew for its own error.
    `prior` pseudo-counts per true group, spread like the pooled matrix's row, shrink a class's matrix
    toward the pooled one: a few dozen test images per class make a noisy matrix, and inverting it
    amplifies that noise.
    """
    k = len(ref)
    pooled = confusion_counts(test_true, test_pred, k)
    per: dict[int, Shares] = {}
    for c in np.unique(gen_strata):
        local_idx = test_strata == c
        local = confusion_counts(test_true[local_idx], test_pred[local_idx], k)
        use_local = bool(local.sum(1).min() >= min_count)
        local = local + prior * row_normalise(pooled)
        sh = pooled_shares(gen_pred[gen_strata == c], local if use_local else pooled, ref, n_boot, rng)
        sh.correction = "per_class" if use_local else "pooled"
        per[int(c)] = sh
    w = {c: sh.n / len(gen_pred) for c, sh in per.items()}

    def mix(attr: str) -> np.ndarray:
        return sum(w[c] * getattr(sh, attr) for c, sh in per.items())  # type: ignore[return-value]

    kinds = {sh.correction for sh in per.values()}
    whole = Shares(
        n=len(gen_pred),
        raw=mix("raw"),
        corrected=mix("corrected"),
        boot_raw=mix("boot_raw"),
        boot_corrected=mix("boot_corrected"),
        null_raw=mix("null_raw"),
        null_corrected=mix("null_corrected"),
        correction="/".join(sorted(kinds)),
    )
    return whole, per


def representation(shares: Shares, ref: np.ndarray, names: list[str], level: float) -> dict:
    """Generated shares of one label (raw and corrected) against `ref`, each discrepancy with its
    bootstrap interval and the null: its 95th percentile for a perfect generator of the same size."""
    k = len(names)
    ref = np.asarray(ref, dtype=np.float64)
    n_boot = len(shares.boot_raw)
    out: dict = {
        "groups": list(names),
        "n": shares.n,
        "p_ref": ref.tolist(),
        "correction": shares.correction,
        "p_gen_raw": shares.raw.tolist(),
        "p_gen_corrected": shares.corrected.tolist(),
        "p_gen_raw_ci": [percentile_ci(shares.boot_raw[:, j], level) for j in range(k)],
        "p_gen_corrected_ci": [percentile_ci(shares.boot_corrected[:, j], level) for j in range(k)],
        "p_gen_ci_method": intervals.PERCENTILE,
    }
    for key, point, boots, null in (
        ("raw", shares.raw, shares.boot_raw, shares.null_raw),
        ("corrected", shares.corrected, shares.boot_corrected, shares.null_corrected),
    ):
        dn = discrepancies(null, ref)
        out[key] = {
            m: discrepancy_estimate(m, point, boots, ref, level)
            | {"null_q95": float(np.quantile(dn[m], 0.95)) if n_boot else float("nan")}
            for m in MEASURES
        }
        for m in MEASURES:
            # A 5 % test of a perfect generator: the plug-in against its own null distribution.
            out[key][m]["exceeds_null"] = bool(out[key][m]["plug_in"] > out[key][m]["null_q95"])
    return out
