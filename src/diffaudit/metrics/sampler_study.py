"""Sampler study: the same model, labels and starting noise sampled with DDPM (ancestral), DDIM,
DPM-Solver++ and Euler over lists of step counts, plus a guidance-scale sweep at one sampler.

Every point is scored against the same n real test images in the same feature space, beside one
real-vs-real floor of the same n, so points are comparable with each other (and with nothing else).
NFE here is denoiser steps per image; with guidance != 1 each step runs the conditional and the
unconditional pass in one batch, so `unet_evals` (2 x steps) is the raw network cost.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure

from diffaudit.config.eval_schema import EvalCfg, SamplerCfg, StudyCfg
from diffaudit.data.store import DataMeta, Split
from diffaudit.diffusion.pipeline import ClassConditionalPipeline
from diffaudit.diffusion.sampling import balanced_labels, sample_seeds
from diffaudit.distributed.world import World
from diffaudit.metrics.features import FeatureCache
from diffaudit.metrics.quality import set_metrics
from diffaudit.models.evaluator import Evaluator
from diffaudit.results.applicability import UNCONDITIONAL as UNCONDITIONAL_NOTE
from diffaudit.results.quality import FeatureSpace, is_space_quantity, space_key, space_keys
from diffaudit.results.sampler_study import (
    BestPoint,
    GuidanceSweep,
    PointScore,
    SamplerStudyResult,
    StudyFloor,
    StudyTarget,
)
from diffaudit.training.evaluator_training import predict
from diffaudit.utils.io import atomic_path


@dataclass(frozen=True)
class StudyPoint:
    """One sampling configuration of the study."""

    sampler: str
    nfe: int
    guidance_scale: float


def plan(study: StudyCfg, sampler: SamplerCfg) -> tuple[list[StudyPoint], list[StudyPoint]]:
    """(NFE sweep, guidance sweep) points; nulls in the study config take the `sampler` group's values."""
    w = sampler.guidance_scale if study.guidance_scale is None else study.guidance_scale
    nfe_points = [
        StudyPoint(name, n, float(w)) for name, steps in study.nfe.items() for n in sorted(set(steps))
    ]
    g = study.guidance
    g_sampler, g_nfe = g.sampler or sampler.name, g.nfe or sampler.steps
    guidance_points = [StudyPoint(g_sampler, g_nfe, float(s)) for s in sorted(set(g.scales))]
    return nfe_points, guidance_points


def _reaches(fid_over_floor: float, accuracy: float | None, study: StudyCfg) -> bool:
    """The quality target; its accuracy part only where conditional accuracy applies (None: it does not)."""
    hits = accuracy is None or accuracy >= study.target_conditional_accuracy
    return fid_over_floor <= study.target_fid_over_floor and hits


def best_point(
    nfe_sweep: dict[str, dict[str, PointScore]], fewest: dict[str, int | None]
) -> BestPoint | None:
    """The sampler reaching the target at the fewest NFE. Samplers reaching it at the same NFE tie: their
    seconds at one NFE differ by noise, so time does not break the tie (the first by name is named, the
    others listed in `ties`)."""
    reached = sorted((n, s) for s, n in fewest.items() if n is not None)
    if not reached:
        return None
    n_best, s_best = reached[0]
    ties = [s for n, s in reached[1:] if n == n_best]
    return BestPoint(sampler=s_best, nfe=n_best, seconds=nfe_sweep[s_best][str(n_best)].seconds, ties=ties)


def _point_reader(
    pipe: ClassConditionalPipeline,
    evaluator: Evaluator,
    features: torch.nn.Module,
    labels: torch.Tensor,
    seeds: list[int],
    p: StudyPoint,
    batch_size: int,
    clock: list[float],
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A batch of row indices -> their images' features and class reads, side by side (the images are not
    kept); the sampling time is added to `clock[0]`."""

    def read(rows: torch.Tensor) -> torch.Tensor:
        rows = rows.cpu()
        t0 = time.perf_counter()
        images = pipe(
            labels=labels[rows],
            seeds=[seeds[i] for i in rows.tolist()],
            num_inference_steps=p.nfe,
            guidance_scale=p.guidance_scale,
            batch_size=batch_size,
        ).images
        clock[0] += time.perf_counter() - t0
        cls = predict(evaluator, images)["class"].argmax(-1)
        return torch.cat([features(images).double(), cls[:, None].double()], dim=1)

    return read


def run_study(
    pipe: ClassConditionalPipeline,
    evaluator: Evaluator,
    cache: FeatureCache,
    meta: DataMeta,
    train: Split,
    test: Split,
    cfg: EvalCfg,
    sampler: SamplerCfg,
    seed: int,
    on_point: Callable[[StudyPoint, PointScore], None] | None = None,
    world: World | None = None,
) -> SamplerStudyResult:
    """Sample and score every study point once (points shared by both sweeps are sampled once).

    Every point samples with a fresh scheduler of its sampler over `pipe`'s UNet (`pipe.with_sampler`).
    Under a multi-process `world` the ranks share each point's batches; a rank keeps only the features
    and class reads of the images it drew, and every rank gets all of them (the same result on each).
    """
    world = world or World()
    study = cfg.study
    if study is None:
        raise ValueError("eval.study is not configured")
    t_start = time.perf_counter()
    space = cache.space
    labels = balanced_labels(meta.num_classes, study.num_per_class)
    seeds = sample_seeds(seed, len(labels))
    n = min(len(labels), len(test), len(train))
    gen = torch.Generator().manual_seed(seed)
    pick_gen = torch.randperm(len(labels), generator=gen)[:n]
    pick_train = torch.randperm(len(train), generator=gen)[:n]
    ref = cache(test.images)[:n]
    floor = set_metrics(ref, cache(train.images)[pick_train], cfg, seed, with_ci=False)
    nfe_points, guidance_points = plan(study, sampler)
    scored: dict[StudyPoint, PointScore] = {}
    if not pipe.guides:  # no null class (or unconditional): guidance does not apply, every point is w=1
        nfe_points = [StudyPoint(p.sampler, p.nfe, pipe.guidance(p.guidance_scale)) for p in nfe_points]
        guidance_points = [p for p in guidance_points if p.guidance_scale == 1.0] or [
            StudyPoint(guidance_points[0].sampler, guidance_points[0].nfe, 1.0)
        ]
    for p in dict.fromkeys(nfe_points + guidance_points):
        drawing = [0.0]  # this rank's sampling seconds (not the feature passes)
        draw_and_read = _point_reader(
            pipe.with_sampler(p.sampler),
            evaluator,
            cache.module,
            labels,
            seeds,
            p,
            sampler.batch_size,
            drawing,
        )
        out = world.map_batches(draw_and_read, torch.arange(len(seeds)), sampler.batch_size)
        seconds = max(world.gather(drawing[0]))  # the slowest rank's draw
        feats, read = out[:, :-1], out[:, -1].long()
        m = set_metrics(ref, feats[pick_gen], cfg, seed, with_ci=False)
        accuracy = (  # an unconditional model has no label to agree with
            float((read == labels).double().mean()) if pipe.is_conditional else None
        )
        over = m.fid / floor.fid if floor.fid > 0 else math.inf
        scored[p] = PointScore(
            **space_keys(space, fid=m.fid, kid=m.kid, kid_std=m.kid_std),
            precision=m.precision,
            recall=m.recall,
            conditional_accuracy=accuracy,
            fid_over_floor=over,
            nfe=p.nfe,
            unet_evals=p.nfe * (1 if p.guidance_scale == 1.0 else 2),
            guidance_scale=p.guidance_scale,
            seconds=seconds,
            reaches_target=_reaches(over, accuracy, study),
        )
        if on_point is not None:
            on_point(p, scored[p])
    nfe_sweep: dict[str, dict[str, PointScore]] = {}
    for p in nfe_points:
        nfe_sweep.setdefault(p.sampler, {})[str(p.nfe)] = scored[p]
    fewest = {
        s: next((int(k) for k, m in pts.items() if m.reaches_target), None) for s, pts in nfe_sweep.items()
    }
    best = best_point(nfe_sweep, fewest)
    g0 = guidance_points[0]
    return SamplerStudyResult(
        feature_space=space,
        n_images=n,
        num_per_class=study.num_per_class,
        guidance_scale=nfe_points[0].guidance_scale if nfe_points else None,
        floor=StudyFloor(
            **space_keys(space, fid=floor.fid, kid=floor.kid),
            precision=floor.precision,
            recall=floor.recall,
            n_images=n,
        ),
        target=StudyTarget(
            fid_over_floor_max=study.target_fid_over_floor,
            conditional_accuracy_min=study.target_conditional_accuracy if pipe.is_conditional else None,
        ),
        nfe_sweep=nfe_sweep,
        guidance_sweep=GuidanceSweep(
            sampler=g0.sampler, nfe=g0.nfe, points={str(p.guidance_scale): scored[p] for p in guidance_points}
        ),
        fewest_nfe_to_target=fewest,
        best=best,
        seconds=time.perf_counter() - t_start,
    )


# Table columns: fields of a study point; "fid"/"kid" are the study's feature-space keys (results.quality).
NFE_COLUMNS = (
    "nfe",
    "unet_evals",
    "fid",
    "fid_over_floor",
    "kid",
    "precision",
    "recall",
    "conditional_accuracy",
    "seconds",
)
GUIDANCE_COLUMNS = (
    "guidance_scale",
    "precision",
    "recall",
    "fid",
    "fid_over_floor",
    "kid",
    "conditional_accuracy",
)


def _csv(
    rows: list[PointScore], columns: tuple[str, ...], space: FeatureSpace, lead: dict | None = None
) -> str:
    cols = [space_key(c, space) if is_space_quantity(c) else c for c in columns]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(lead or {}) + cols)
    for r in rows:
        values = [getattr(r, c) for c in cols]
        w.writerow(list((lead or {}).values()) + [f"{v:.6g}" if isinstance(v, float) else v for v in values])
    return buf.getvalue()


def write_study_outputs(result: SamplerStudyResult, out_dir: str | Path) -> list[Path]:
    """CSV tables (one per sampler for DVC plots, one long table) and the two PNG plots, as one directory
    replaced atomically (no stale file from an earlier study survives); returns the final paths."""
    out = Path(out_dir)
    space = result.feature_space
    files: dict[str, str | Figure] = {}
    long_header, long_body = "", []
    for s, pts in result.nfe_sweep.items():
        table = _csv(list(pts.values()), NFE_COLUMNS, space)
        files[f"nfe_{s}.csv"] = table
        long_header, body = _csv(list(pts.values()), NFE_COLUMNS, space, {"sampler": s}).split("\n", 1)
        long_body.append(body)
    if long_body:
        files["nfe_sweep.csv"] = long_header + "\n" + "".join(long_body)
    files["guidance.csv"] = _csv(list(result.guidance_sweep.points.values()), GUIDANCE_COLUMNS, space)
    files["quality_vs_nfe.png"] = _nfe_figure(result)
    files["precision_recall_guidance.png"] = _guidance_figure(result)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for name, content in files.items():
            if isinstance(content, str):
                (tmp / name).write_text(content)
            else:
                content.savefig(tmp / name, format="png", dpi=110, bbox_inches="tight")
    return [out / name for name in files]


def _nfe_figure(result: SamplerStudyResult) -> Figure:

    space = result.feature_space
    target = result.target
    fig = Figure(figsize=(14, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    for s, pts in result.nfe_sweep.items():
        x = [m.nfe for m in pts.values()]
        axes[0].plot(x, [m.fid_over_floor for m in pts.values()], "o-", label=s)
        axes[1].plot(x, [m.space_value("kid") for m in pts.values()], "o-", label=s)
        if target.conditional_accuracy_min is not None:
            axes[2].plot(x, [m.conditional_accuracy for m in pts.values()], "o-", label=s)
    axes[0].axhline(target.fid_over_floor_max, color="grey", ls="--", lw=1, label="target")
    axes[0].axhline(1.0, color="black", ls=":", lw=1, label="floor")
    axes[1].axhline(result.floor.space_value("kid"), color="black", ls=":", lw=1, label="floor")
    if target.conditional_accuracy_min is None:
        axes[2].text(0.5, 0.5, UNCONDITIONAL_NOTE, ha="center", va="center", transform=axes[2].transAxes)
    else:
        axes[2].axhline(target.conditional_accuracy_min, color="grey", ls="--", lw=1, label="target")
    titles = (f"FID ({space}) / real-vs-real floor", f"KID ({space})", "conditional accuracy")
    ticks = sorted({m.nfe for pts in result.nfe_sweep.values() for m in pts.values()})
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("NFE (denoiser steps per image)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    axes[2].set_ylim(0, 1.02)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"Sampler study: n={result.n_images} images per point, guidance {result.guidance_scale}")
    return fig


def _guidance_figure(result: SamplerStudyResult) -> Figure:

    g = result.guidance_sweep
    pts = list(g.points.values())
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot([m.recall for m in pts], [m.precision for m in pts], "o-", label="generated")
    for m in pts:
        ax.annotate(
            f"w={m.guidance_scale:g}",
            (m.recall, m.precision),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.plot([result.floor.recall], [result.floor.precision], "k*", ms=10, label="real train (floor)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (coverage of real images)")
    ax.set_ylabel("precision (fidelity)")
    title = f"Guidance sweep: {g.sampler} at {g.nfe} steps ({result.feature_space} features)"
    if len(pts) == 1 and pts[0].guidance_scale == 1.0:
        title += "\n(no guidance: the model has no null class)"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return fig
