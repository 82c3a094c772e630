"""Pictures of the explainability audit: labelled image strips, the GIF, and the curves.

Image strips are tiled into one canvas and drawn with a single imshow (hundreds of axes would take
seconds each); matplotlib's object API is used without pyplot, so no global figure state leaks.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from diffaudit.audit.explain.attribution import Attributions
from diffaudit.audit.explain.emergence import Emergence
from diffaudit.audit.explain.trajectory import Trajectory

PAD = 1


# -- tiles ------------------------------------------------------------------------------------------
def image_tiles(images: torch.Tensor) -> list[np.ndarray]:
    """(N, C, H, W) in [-1, 1] -> N RGB uint8 tiles (values outside [-1, 1] are clipped for display)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return list(x.permute(0, 2, 3, 1).numpy())


def heat_tiles(
    maps: torch.Tensor,
    cmap: str,
    vmin: np.ndarray | float,
    vmax: np.ndarray | float,
    size: int | None = None,
) -> list[np.ndarray]:
    """(N, H, W) -> N RGB uint8 tiles through a colormap, with per-map (or shared) limits; `size`: blown up
    (nearest) to the images' side, for maps over a latent model's smaller latents."""
    if size is not None and maps.shape[-1] != size:
        maps = F.interpolate(maps.detach().double().unsqueeze(1), size=(size, size), mode="nearest")[:, 0]
    m = maps.detach().double().numpy()
    lo = np.broadcast_to(np.asarray(vmin, dtype=np.float64), (len(m),)).reshape(-1, 1, 1)
    hi = np.broadcast_to(np.asarray(vmax, dtype=np.float64), (len(m),)).reshape(-1, 1, 1)
    norm = np.clip((m - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    return list((colormaps[cmap](norm)[..., :3] * 255).round().astype(np.uint8))


def canvas(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Tile equally sized RGB tiles row by row on a white canvas."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + PAD) + PAD, ncol * (w + PAD) + PAD, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y, x = PAD + i * (h + PAD), PAD + j * (w + PAD)
            out[y : y + h, x : x + w] = tile
    return out


def tile_figure(
    rows: list[list[np.ndarray]],
    row_labels: list[str],
    col_labels: list[str],
    title: str,
    inch_per_tile: float = 0.42,
) -> Figure:
    """One imshow of the tiled canvas, with a label per row and per column, the column labels above and
    below a tall canvas (margins sized to the labels)."""
    img = canvas(rows)
    h, w = rows[0][0].shape[:2]
    ncol, nrow = max(len(r) for r in rows), len(rows)
    char = 0.045  # inches per character at fontsize 6
    left = 0.15 + char * max(len(s) for s in row_labels)
    bottom = 0.15 + char * max(len(s) for s in col_labels)
    labels_on_top = nrow > 2  # a reader should not scroll to the bottom to learn what a column is
    top = 0.35 + (char * max(len(s) for s in col_labels) if labels_on_top else 0.0)
    right = 0.1
    width_in, height_in = ncol * inch_per_tile, nrow * inch_per_tile
    fig_w = max(left + width_in + right, 0.08 * len(title) + 0.3)
    fig_h = bottom + height_in + top
    fig = Figure(figsize=(fig_w, fig_h), dpi=100)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, width_in / fig_w, height_in / fig_h))
    ax.imshow(img, interpolation="nearest", aspect="auto")
    ax.set_xticks(
        [PAD + j * (w + PAD) + w / 2 for j in range(len(col_labels))], col_labels, fontsize=6, rotation=90
    )
    ax.set_yticks([PAD + i * (h + PAD) + h / 2 for i in range(nrow)], row_labels, fontsize=6)
    ax.tick_params(length=0, labeltop=labels_on_top)
    if labels_on_top:
        for tick in ax.xaxis.get_major_ticks():
            tick.label2.set_rotation(90)
            tick.label2.set_fontsize(6)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.suptitle(title, fontsize=8, x=0.02, ha="left", y=1 - 0.08 / fig_h, va="top")
    return fig


def _step_labels(traj: Trajectory) -> list[str]:
    return [f"{i}: {traj.step_name(i)}" for i in range(traj.num_steps)]


# -- filmstrips and guidance maps -------------------------------------------------------------------
def filmstrip_figure(traj: Trajectory, class_names: list[str]) -> Figure:
    """Per image two rows: the noisy state x_t and the x0-prediction at each step, then the final image."""
    rows, labels = [], []
    for n in range(len(traj.labels)):
        name = class_names[int(traj.labels[n])]
        rows.append(image_tiles(traj.x_t_image[:, n]) + image_tiles(traj.final[n : n + 1]))
        rows.append(image_tiles(traj.x0[:, n]) + image_tiles(traj.final[n : n + 1]))
        labels += [f"{name} (seed {traj.seeds[n]}) x_t", f"{name} x0-prediction"]
    return tile_figure(
        rows, labels, _step_labels(traj) + ["final"], "Filmstrips: x_t and x0-prediction per step"
    )


def guidance_figure(maps: torch.Tensor, traj: Trajectory, class_names: list[str]) -> Figure:
    """|eps_cond - eps_uncond| per step, one row per image, scaled by that image's maximum over all steps."""
    rows, labels = [], []
    for n in range(maps.shape[1]):
        m = maps[:, n]
        rows.append(heat_tiles(m, "magma", 0.0, float(m.max()), traj.image_size))
        labels.append(f"{class_names[int(traj.labels[n])]} (seed {traj.seeds[n]})")
    return tile_figure(
        rows,
        labels,
        _step_labels(traj),
        "Guidance maps |eps_cond - eps_uncond| (per row: black = 0, yellow = that image's maximum)",
    )


def filmstrip_frames(traj: Trajectory, maps: torch.Tensor | None, scale: int = 4) -> list[Image.Image]:
    """GIF frames: per step, every image as [x_t | x0-prediction | guidance map], one row per image."""
    frames = []
    peak = None if maps is None else maps.flatten(2).amax(dim=(0, 2))  # per image, over steps
    for s in range(traj.num_steps):
        row_tiles = []
        xt, x0 = image_tiles(traj.x_t_image[s]), image_tiles(traj.x0[s])
        g = (
            heat_tiles(maps[s], "magma", 0.0, peak.numpy(), traj.image_size)
            if maps is not None and peak is not None
            else None
        )
        for n in range(len(traj.labels)):
            row_tiles.append([xt[n], x0[n]] + ([g[n]] if g is not None else []))
        img = Image.fromarray(canvas(row_tiles))
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        framed = Image.new("RGB", (img.width, img.height + 28), "white")
        framed.paste(img, (0, 28))
        draw = ImageDraw.Draw(framed)
        draw.text((2, 1), f"step {s + 1}/{traj.num_steps} {traj.step_name(s)}", fill="black")
        tile_w = (traj.x0.shape[-1] + PAD) * scale
        for j, name in enumerate(["x_t", "x0-pred", "guidance"][: len(row_tiles[0])]):
            draw.text((PAD * scale + j * tile_w + 2, 15), name, fill="black")
        frames.append(framed)
    return frames


# -- attributions -----------------------------------------------------------------------------------
def attribution_figure(attr: Attributions, traj: Trajectory, class_names: list[str]) -> Figure:
    """Per (image, step): x_t, x0-prediction, IG, SmoothGrad (and both for the re-initialised UNet)."""
    cols = ["x_t", "x0-prediction", "IG (red +, blue -)", "SmoothGrad |grad|"]
    if attr.ig_random is not None:
        cols += ["IG, random UNet", "SmoothGrad, random UNet"]
    rows, labels = [], []
    for n in range(len(traj.labels)):
        for i, k in enumerate(attr.steps):
            ig = attr.ig[i, n].sum(0, keepdim=True)
            sg = attr.smoothgrad[i, n].sum(0, keepdim=True)
            lim = float(ig.abs().max())
            row = (
                image_tiles(traj.x_t_image[k, n : n + 1])
                + image_tiles(traj.x0[k, n : n + 1])
                + heat_tiles(ig, "RdBu_r", -lim, lim, traj.image_size)
                + heat_tiles(sg, "magma", 0.0, float(sg.max()), traj.image_size)
            )
            if attr.ig_random is not None and attr.smoothgrad_random is not None:
                igr = attr.ig_random[i, n].sum(0, keepdim=True)
                sgr = attr.smoothgrad_random[i, n].sum(0, keepdim=True)
                limr = float(igr.abs().max())
                row += heat_tiles(igr, "RdBu_r", -limr, limr, traj.image_size) + heat_tiles(
                    sgr, "magma", 0.0, float(sgr.max()), traj.image_size
                )
            rows.append(row)
            target = class_names[int(attr.target[n])]
            labels.append(f"{target} (seed {traj.seeds[n]}) step {k} {traj.step_name(k)}")
    return tile_figure(
        rows,
        labels,
        cols,
        "Attributions of the final-class logit to x_t (each map scaled to its own maximum)",
        inch_per_tile=0.55,
    )


# -- curves ------------------------------------------------------------------------------------------
def emergence_figure(
    curves: dict[str, dict[int, dict[str, np.ndarray]]],
    class_names: list[str],
    band: tuple[float, float],
    conditional: bool = True,
) -> Figure:
    """One panel per class: mean probability of the final value per head, with a quantile band.

    The classes are the conditioning labels, or for an unconditional model the class each image ends up
    as (the evaluator's reading of the final image); the title says which.
    """
    classes = sorted(next(iter(curves.values())))
    ncol = min(5, len(classes))
    nrow = int(np.ceil(len(classes) / ncol))
    fig = Figure(figsize=(2.4 * ncol + 0.6, 2.0 * nrow + 0.9), dpi=100)
    fig.subplots_adjust(
        left=0.6 / fig.get_figwidth(),
        right=0.98,
        bottom=0.5 / fig.get_figheight(),
        top=1 - 0.5 / fig.get_figheight(),
        wspace=0.08,
        hspace=0.3,
    )
    axes = np.atleast_1d(fig.subplots(nrow, ncol, sharex=True, sharey=True, squeeze=False)).ravel()
    for ax, c in zip(axes, classes, strict=False):
        for j, (head, per_class) in enumerate(curves.items()):
            cur = per_class[c]
            steps = np.arange(len(cur["mean"]))
            color = f"C{j}"
            ax.plot(steps, cur["mean"], color=color, label=head)
            ax.fill_between(steps, cur["lo"], cur["hi"], color=color, alpha=0.2, linewidth=0)
        ax.set_title(f"class {class_names[c]}" if conditional else f"ends as {class_names[c]}", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
    for ax in axes[len(classes) :]:
        ax.set_visible(False)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, loc="upper right", ncol=len(names), frameon=False)
    fig.supxlabel("sampling step", fontsize=8)
    fig.supylabel("P(final value | x0-prediction)", fontsize=8)
    grouped_by = "conditioning class" if conditional else "final class (evaluator; an unconditional model)"
    fig.suptitle(f"Emergence: mean and {band[0]:.0%}-{band[1]:.0%} band per {grouped_by}", fontsize=9)
    return fig


def commitment_figure(em: Emergence, num_steps: int) -> Figure:
    """Histogram of the commitment step of every head (S = never settled)."""
    fig = Figure(figsize=(6, 3.2), dpi=100)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.17, top=0.88, wspace=0.25)
    ax = fig.add_subplot()
    bins = np.arange(num_steps + 2) - 0.5
    for j, (head, steps) in enumerate(em.commitment.items()):
        ax.hist(
            steps.numpy(),
            bins=bins,
            alpha=0.45,
            color=f"C{j}",
            label=f"{head} (mean {float(steps.double().mean()):.1f})",
        )
    ax.set_xlabel(f"commitment step (first step from which the argmax is final; {num_steps} = never)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax.set_title("When does the evaluator's decision on the x0-prediction stop changing?", fontsize=9)
    return fig


def guidance_profile_figure(
    profile: dict[str, np.ndarray], timesteps: torch.Tensor, band: tuple[float, float]
) -> Figure:
    fig = Figure(figsize=(6, 3), dpi=100)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.17, top=0.88, wspace=0.25)
    ax = fig.add_subplot()
    steps = np.arange(len(profile["mean"]))
    ax.plot(steps, profile["mean"], color="C3")
    ax.fill_between(steps, profile["lo"], profile["hi"], color="C3", alpha=0.2, linewidth=0)
    ax.set_xlabel("sampling step")
    ax.set_ylabel("mean |eps_cond - eps_uncond|")
    ax.set_title(
        f"Guidance strength per step (mean, {band[0]:.0%}-{band[1]:.0%} band over images)", fontsize=9
    )
    return fig


def loss_figure(rows: list[dict[str, float]], num_train_timesteps: int) -> Figure:
    fig = Figure(figsize=(8, 3), dpi=100)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.17, top=0.88, wspace=0.25)
    ax1, ax2 = fig.subplots(1, 2)
    mid = [r["t_mid"] for r in rows]
    width = num_train_timesteps / max(1, len(rows)) * 0.85
    ax1.bar(mid, [r["loss"] for r in rows], width=width, yerr=[r["loss_se"] for r in rows], color="C0")
    ax1.set_title("validation loss (training objective) by timestep", fontsize=9)
    ax2.bar(mid, [r["x0_mse"] for r in rows], width=width, yerr=[r["x0_mse_se"] for r in rows], color="C1")
    ax2.set_title("MSE of the clipped x0-prediction by timestep", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xlabel("timestep (0 = clean)")
    return fig


def spectrum_figure(spectra: torch.Tensor, settle: dict[str, int]) -> Figure:
    """Left: power per radius, one line per step (dark = early). Right: band power relative to the final
    one."""
    from diffaudit.audit.explain.spectrum import band_edges

    fig = Figure(figsize=(9, 3.2), dpi=100)
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.17, top=0.88, wspace=0.25)
    ax1, ax2 = fig.subplots(1, 2)
    s = spectra.shape[0]
    cmap = colormaps["viridis"]
    radii = np.arange(1, spectra.shape[1])
    for i in range(s):
        ax1.plot(radii, spectra[i, 1:].numpy(), color=cmap(i / max(1, s - 1)), linewidth=1)
    ax1.set_yscale("log")
    ax1.set_xlabel("spatial frequency (radius, cycles per image)")
    ax1.set_ylabel("power")
    ax1.set_title("Radial power spectrum of x0-prediction (dark = early step)", fontsize=9)
    for j, (name, (lo, hi)) in enumerate(band_edges(spectra.shape[1]).items()):
        if lo >= hi:
            continue
        p = spectra[:, lo:hi].sum(1)
        ax2.plot(
            np.arange(s),
            (p / p[-1].clamp_min(1e-12)).numpy(),
            color=f"C{j}",
            label=f"{name} r={lo}-{hi - 1} (settles at {settle.get(name, '-')})",
        )
    ax2.axhline(1.0, color="grey", linewidth=0.5)
    ax2.set_xlabel("sampling step")
    ax2.set_ylabel("band power / final")
    ax2.legend(fontsize=7)
    ax2.set_title("Coarse-to-fine: band power relative to the final prediction", fontsize=9)
    return fig
