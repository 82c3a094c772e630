"""Coarse-to-fine: the radially averaged power spectrum of the x0-prediction at every step.

Diffusion models are said to settle low frequencies (layout) before high ones (detail). Here that
is measured: each frequency band's power is followed over the steps, and a band counts as settled
from the step after which it stays within a tolerance of its power in the final prediction.
"""

from __future__ import annotations

import torch


def radial_power_spectrum(images: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) -> (..., R) mean power at integer radius r = 0 .. min(H, W) // 2 (per-image mean
    removed)."""
    h, w = images.shape[-2:]
    x = images.double() - images.double().mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).mean(dim=-3) / (h * w)  # channels averaged
    fy = torch.fft.fftfreq(h, dtype=torch.float64).view(-1, 1) * h
    fx = torch.fft.fftfreq(w, dtype=torch.float64).view(1, -1) * w
    radius = (fy**2 + fx**2).sqrt().round().long()
    r_max = min(h, w) // 2
    flat = power.flatten(-2)
    idx = radius.flatten()
    keep = idx <= r_max
    sums = torch.zeros(*flat.shape[:-1], r_max + 1, dtype=torch.float64)
    sums.index_add_(-1, idx[keep], flat[..., keep])
    counts = torch.bincount(idx[keep], minlength=r_max + 1).double()
    return sums / counts


def spectrum_per_step(x0: torch.Tensor) -> torch.Tensor:
    """(S, N, C, H, W) x0-predictions -> (S, R) spectrum averaged over images."""
    return radial_power_spectrum(x0).mean(dim=1)


def band_edges(num_radii: int) -> dict[str, tuple[int, int]]:
    """Low / mid / high thirds of the non-zero radii (inclusive start, exclusive end)."""
    radii = num_radii - 1  # radius 0 (the mean) is removed
    a, b = 1 + radii // 3, 1 + 2 * radii // 3
    return {"low": (1, max(a, 2)), "mid": (max(a, 2), max(b, 3)), "high": (max(b, 3), num_radii)}


def settle_steps(spectra: torch.Tensor, tolerance: float) -> dict[str, int]:
    """Per band: the first step after which its power stays within `tolerance` (relative) of the last
    step's."""
    s = spectra.shape[0]
    out = {}
    for name, (lo, hi) in band_edges(spectra.shape[1]).items():
        if lo >= hi:
            continue
        power = spectra[:, lo:hi].sum(1)
        close = ((power - power[-1]).abs() <= tolerance * power[-1].abs().clamp_min(1e-12)).int()
        out[name] = int(s - close.flip(0).cumprod(0).sum())
    return out


def spectrum_summary(spectra: torch.Tensor, tolerance: float) -> dict:
    """Settle step and first-step power ratio per band; share of power above the middle radius over the
    steps."""
    r = spectra.shape[1]
    high = spectra[:, r // 2 :].sum(1) / spectra[:, 1:].sum(1).clamp_min(1e-12)
    s = spectra.shape[0]
    settle = settle_steps(spectra, tolerance)
    ratio = {
        name: float(spectra[0, lo:hi].sum() / spectra[-1, lo:hi].sum().clamp_min(1e-12))
        for name, (lo, hi) in band_edges(r).items()
        if lo < hi
    }
    return {
        "settle_step": settle,
        "coarse_to_fine": bool(settle.get("low", 0) <= settle.get("mid", 0) <= settle.get("high", 0)),
        "first_step_power_ratio": ratio,  # band power at step 0 / at the last step (1 = already final)
        "high_frequency_share": {
            "first": float(high[0]),
            "middle": float(high[s // 2]),
            "last": float(high[-1]),
        },
    }
