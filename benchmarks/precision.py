"""Training precision: the bf16-autocast training step (`trainer.precision=auto` on a CPU with native bf16)
against the plain fp32 step, interleaved in one run; `train_step_speedup` is the default precision's
(1 while fp32 is the default), `bf16_step_speedup` what `auto` would give.

Both sides are the same bare step (the default UNet, batch and optimizer; loss in fp32), alternating in
blocks in both orders, so background load falls on both and the ratio survives a busy machine.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import Figure, load_config
from diffaudit.models.unet import build_unet
from diffaudit.training.precision import resolve_precision

TARGET_SPEEDUP = 1.15


def run(quick: bool = False, blocks: int | None = None, steps: int = 10) -> dict[str, Any]:
    cfg = load_config()
    precision = resolve_precision(cfg.trainer)
    size, channels, batch = cfg.data.image_size, cfg.data.channels, cfg.train.batch_size
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg.model, size, channels, 10)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.train.lr)
    x = torch.randn(batch, channels, size, size)
    t = torch.randint(0, cfg.diffusion.num_train_timesteps, (batch,))
    y = torch.randint(0, 11, (batch,))

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = unet(x, t, class_labels=y).sample
        loss = F.mse_loss(out.float(), x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for side in (False, True):
        for _ in range(3):  # warm-up: oneDNN picks its kernels on the first calls
            step(side)
    blocks = blocks or (2 if quick else 6)
    seconds = {"fp32": 0.0, "bf16": 0.0}
    for b in range(blocks):
        order = (("fp32", False), ("bf16", True))
        for name, bf16 in order if b % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            for _ in range(steps):
                step(bf16)
            seconds[name] += time.perf_counter() - t0
    n = blocks * steps
    bf16_speedup = seconds["fp32"] / seconds["bf16"]
    return {
        "precision": precision,
        "auto_precision": resolve_precision(cfg.trainer.model_copy(update={"precision": "auto"})),
        "steps_per_side": n,
        "fp32_step_seconds": seconds["fp32"] / n,
        "bf16_step_seconds": seconds["bf16"] / n,
        "bf16_step_speedup": bf16_speedup,
        "train_step_speedup": bf16_speedup if precision == "bf16-mixed" else 1.0,
        "batch": batch,
        "image_size": size,
    }


def figures(r: dict[str, Any]) -> list[Figure]:
    s, b = r["train_step_speedup"], r["bf16_step_speedup"]
    where = f"batch {r['batch']} at {r['image_size']}px, interleaved"
    return [
        Figure(
            "train_step_speedup",
            s,
            "x",
            f">= {TARGET_SPEEDUP}",
            s >= TARGET_SPEEDUP,
            f"the default precision ({r['precision']}) against fp32, {where}"
            + (
                "; fp32 is the default: the bf16-trained default model failed the fairness gate "
                "(docs/performance.md, Training precision)"
                if r["precision"] == "32-true"
                else ""
            ),
        ),
        Figure(
            "bf16_step_speedup",
            b,
            "x",
            "",
            None,
            f"bf16 autocast {r['bf16_step_seconds']:.3f} s vs fp32 {r['fp32_step_seconds']:.3f} s per step "
            f"(trainer.precision=auto resolves to {r['auto_precision']} here), {where}",
        ),
    ]
