"""Image grids and PNG/GIF writing for [-1, 1] image tensors (torchvision is not available here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffaudit.utils.io import write_with


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    x = ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid(images: torch.Tensor, ncol: int, pad: int = 1, scale: int = 1) -> Image.Image:
    """Tile images row by row into one picture (grey or RGB), optionally upscaled (nearest)."""
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    nrow = int(np.ceil(n / ncol))
    canvas = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        canvas[
            pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w
        ] = arr[i]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas, mode="L" if c == 1 else "RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def class_grid(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, per_row: int = 10, scale: int = 4
) -> Image.Image:
    """One row per class with its first `per_row` images (blank cells where a class has fewer)."""
    rows = []
    blank = torch.ones_like(images[:1])
    for c in range(num_classes):
        sel = images[labels == c][:per_row]
        if len(sel) < per_row:
            sel = torch.cat([sel, blank.expand(per_row - len(sel), *images.shape[1:])])
        rows.append(sel)
    return grid(torch.cat(rows), ncol=per_row, scale=scale)


def save_png(img: Image.Image, path: str | Path) -> None:
    write_with(path, lambda tmp: img.save(tmp, format="PNG"))


def save_gif(frames: list[Image.Image], path: str | Path, duration_ms: int = 120) -> None:
    write_with(
        path,
        lambda tmp: frames[0].save(
            tmp, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0
        ),
    )
