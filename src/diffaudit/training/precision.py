"""The training precision `trainer.precision: auto` resolves to on this machine.

bf16 autocast (the loss stays fp32: diffusion/lit_module.py) where the hardware computes bf16 natively:
a CPU with AVX-512 BF16 or AMX, or a GPU that supports bf16; fp32 elsewhere, since emulated bf16 is slower
than fp32. docs/performance.md has the measured speedup and the side-by-side quality check.
"""

from __future__ import annotations

import torch

from diffaudit.config.schema import TrainerCfg


def native_bf16(accelerator: str) -> bool:
    """Whether the device training runs on computes bf16 natively."""
    if accelerator in ("gpu", "auto") and torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    if accelerator == "gpu":
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(trainer: TrainerCfg) -> str:
    """Lightning's precision for `trainer`: "auto" -> "bf16-mixed" on native-bf16 hardware, else "32-true";
    any other value as configured."""
    if trainer.precision != "auto":
        return trainer.precision
    return "bf16-mixed" if native_bf16(trainer.accelerator) else "32-true"
