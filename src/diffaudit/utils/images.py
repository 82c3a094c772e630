"""Image grids and PNG/GIF writing for [-1, 1] image tensors (torchvision is not available here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

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


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's scalable default font (needs FreeType)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def labelled_pairs(
    left: torch.Tensor,
    right: torch.Tensor,
    captions: list[list[str]],
    marked: list[bool],
    headers: tuple[str, str],
    title: list[str],
    per_row: int = 4,
    cell: int = 80,
    font_size: int = 12,
) -> Image.Image:
    """A readable figure of image pairs: each panel shows left[i] and right[i] under the column
    `headers`, with the lines of captions[i] beneath; a marked panel gets a red frame and a red last
    caption line (its verdict). `title` lines head the figure. Images are upscaled (nearest) to about
    `cell` pixels."""
    font = _font(font_size)
    line = font_size + 4
    n = len(left)
    h, w = (left.shape[-2], left.shape[-1]) if n else (cell, cell)
    scale = max(1, cell // max(h, w))
    ih, iw = h * scale, w * scale
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widest = max([probe.textlength(t, font=font) for c in captions for t in c] + [0.0])
    gap, margin = 6, 8
    pw = int(max(2 * iw + gap, widest, *(probe.textlength(t, font=font) for t in headers))) + 2 * margin
    ph = margin + line + ih + 4 + line * max((len(c) for c in captions), default=0) + margin
    cols = max(1, min(per_row, n))
    rows = int(np.ceil(n / cols)) if n else 0
    title_w = max([probe.textlength(t, font=font) for t in title] + [0.0])
    width = max(cols * pw, int(title_w) + 2 * margin)
    top = margin + line * len(title) + (margin if title else 0)
    if not n:
        title = [*title, "(no pairs to show)"]
        top += line
    img = Image.new("RGB", (width, top + rows * ph), "white")
    draw = ImageDraw.Draw(img)
    for k, t in enumerate(title):
        draw.text((margin, margin + k * line), t, fill="black", font=font)
    tiles_l, tiles_r = (to_uint8(x) if n else None for x in (left, right))
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = c * pw, top + r * ph
        red = marked[i]
        colour = (200, 0, 0) if red else (90, 90, 90)
        draw.rectangle([x0 + 2, y0 + 2, x0 + pw - 3, y0 + ph - 3], outline=colour, width=3 if red else 1)
        xl = x0 + (pw - (2 * iw + gap)) // 2
        for j, (tiles, header) in enumerate(((tiles_l, headers[0]), (tiles_r, headers[1]))):
            xi = xl + j * (iw + gap)
            tw = probe.textlength(header, font=font)
            draw.text((xi + (iw - tw) / 2, y0 + margin), header, fill="black", font=font)
            arr = tiles[i]  # type: ignore[index]
            tile = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).convert("RGB")
            img.paste(tile.resize((iw, ih), Image.NEAREST), (xi, y0 + margin + line))
        for k, t in enumerate(captions[i]):
            draw.text(
                (x0 + margin, y0 + margin + line + ih + 4 + k * line),
                t,
                fill=colour if red and k == len(captions[i]) - 1 else "black",
                font=font,
            )
    return img
