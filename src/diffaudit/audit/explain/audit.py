"""The explainability audit end to end: sample with recording, then judge, attribute and measure.

Returns numbers, figures and tables; writing them (atomically) and logging them is the stage's job
(pipelines/explain.py), so the library stays free of paths and tracking.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from diffaudit.audit.explain import figures
from diffaudit.audit.explain.attribution import attribute, attribution_summary
from diffaudit.audit.explain.emergence import band_curves, commitment_summary, emergence, emergence_summary
from diffaudit.audit.explain.guidance import guidance_maps, guidance_profile, guidance_summary
from diffaudit.audit.explain.spectrum import spectrum_per_step, spectrum_summary
from diffaudit.audit.explain.timestep_profile import loss_by_timestep
from diffaudit.audit.explain.trajectory import explain_seeds, record_trajectories
from diffaudit.config.eval_schema import SamplerCfg
from diffaudit.config.explain_schema import ExplainCfg
from diffaudit.data.store import DataMeta, Split
from diffaudit.diffusion.pipeline import ClassConditionalPipeline
from diffaudit.diffusion.sampling import balanced_labels
from diffaudit.models.evaluator import Evaluator
from diffaudit.results.applicability import LABELS_FROM_CONDITION, LABELS_FROM_EVALUATOR, not_applicable
from diffaudit.results.explain import ExplainMetrics


@dataclass
class ExplainResult:
    metrics: ExplainMetrics = field(init=False)  # metrics/explain.json (set last, when all is measured)
    figures: dict[str, Figure] = field(default_factory=dict)  # name -> PNG
    gifs: dict[str, list[Image.Image]] = field(default_factory=dict)  # name -> GIF frames
    tables: dict[str, str] = field(default_factory=dict)  # name -> CSV text (DVC plots)
    step_metrics: dict[str, list[float]] = field(default_factory=dict)  # MLflow metrics logged with step=i


def _csv(header: list[str], rows: list[list[float]]) -> str:
    return "\n".join([",".join(header)] + [",".join(f"{v:.6g}" for v in r) for r in rows]) + "\n"


def filmstrip_index(labels: torch.Tensor, num_classes: int, film_per_class: int) -> torch.Tensor:
    """Positions of the first `film_per_class` images of every class, class by class (a class that no image
    has is left out: an unconditional model need not draw every class)."""
    return torch.tensor(
        [i for c in range(num_classes) for i in (labels == c).nonzero().flatten()[:film_per_class].tolist()],
        dtype=torch.long,
    )


def explain_model(
    cfg: ExplainCfg,
    sampler: SamplerCfg,
    seed: int,
    pipe: ClassConditionalPipeline,
    evaluator: Evaluator,
    meta: DataMeta,
    val: Split,
) -> ExplainResult:
    """Run every explainability measurement on the exported model with the pipeline's own sampler.

    Sampling uses a fresh scheduler of `sampler.name` over `pipe`'s UNet, whichever sampler `pipe` holds.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    pipe = pipe.with_sampler(sampler.name)
    pipe.unet.eval()
    evaluator = evaluator.eval()
    band = (float(cfg.band[0]), float(cfg.band[1]))
    names = meta.class_names
    n_per = cfg.emergence_per_class

    torch.manual_seed(seed)
    labels = balanced_labels(meta.num_classes, n_per)
    seeds = explain_seeds(seed, meta.num_classes, n_per, sampler.num_per_class)
    guidance = pipe.guidance(sampler.guidance_scale)
    traj = record_trajectories(pipe, labels, seeds, sampler.steps, guidance, sampler.batch_size)
    lap("sampling")

    em = emergence(evaluator, traj)
    condition: torch.Tensor | None = labels
    if not pipe.is_conditional:  # no label conditioned the images: read each by the class it ends up as
        condition, labels = None, em.final["class"]
        traj = traj.with_labels(labels)
    curves = band_curves(em, labels, band)
    metrics: dict = {
        "sampler": {"name": sampler.name, "steps": sampler.steps, "guidance_scale": guidance},
        "model": {
            "conditioning": pipe.conditioning,
            "labels": LABELS_FROM_CONDITION if pipe.is_conditional else LABELS_FROM_EVALUATOR,
        },
        "num_images": len(labels),
        "commitment": commitment_summary(em, labels, traj.num_steps),
        "emergence": emergence_summary(em, condition),
        "not_applicable": not_applicable(pipe.conditioning),
    }
    res = ExplainResult()
    res.figures["emergence"] = figures.emergence_figure(curves, names, band, conditional=pipe.is_conditional)
    res.figures["commitment"] = figures.commitment_figure(em, traj.num_steps)
    for head, prob in em.prob_final.items():
        res.step_metrics[f"emergence.{head}"] = prob.double().mean(1).tolist()
    lap("emergence")

    film_idx = filmstrip_index(labels, meta.num_classes, cfg.filmstrip_per_class)
    film = traj.subset(film_idx)
    res.figures["filmstrip"] = figures.filmstrip_figure(film, names)
    maps = None
    if traj.guidance is not None:
        maps = guidance_maps(film)
        profile = guidance_profile(traj, band)
        metrics["guidance"] = guidance_summary(traj, band)
        res.figures["guidance_maps"] = figures.guidance_figure(maps, film, names)
        res.figures["guidance_profile"] = figures.guidance_profile_figure(profile, traj.timesteps, band)
        res.step_metrics["guidance.mean_abs"] = profile["mean"].tolist()
    else:
        note = not_applicable(pipe.conditioning).get("guidance")
        metrics["guidance"] = {"note": note or "the sampler recorded no unconditional pass: no guidance maps"}
    res.gifs["filmstrip"] = figures.filmstrip_frames(film, maps)
    lap("filmstrips")

    attr = attribute(pipe, evaluator, film, em.final["class"][film_idx], cfg, guidance, seed)
    metrics["attribution"] = attribution_summary(attr, film)
    res.figures["attributions"] = figures.attribution_figure(attr, film, names)
    lap("attribution")

    rows = loss_by_timestep(pipe, val.images, val.labels, cfg.timestep_bins, cfg.loss_images, seed)
    metrics["loss_by_timestep"] = {
        f"t{r['t_lo']:04d}_{r['t_hi']:04d}": {k: r[k] for k in ("loss", "x0_mse")} for r in rows
    }
    res.figures["loss_by_timestep"] = figures.loss_figure(rows, len(pipe.vp_denoiser()[1].alphas_cumprod))
    res.tables["loss_by_timestep"] = _csv(
        ["t_mid", "loss", "x0_mse"], [[r["t_mid"], r["loss"], r["x0_mse"]] for r in rows]
    )
    lap("loss_by_timestep")

    spectra = spectrum_per_step(traj.x0)
    metrics["spectrum"] = spectrum_summary(spectra, cfg.spectrum_tolerance)
    res.figures["spectrum"] = figures.spectrum_figure(spectra, metrics["spectrum"]["settle_step"])
    r = spectra.shape[1]
    res.step_metrics["spectrum.high_frequency_share"] = (
        spectra[:, r // 2 :].sum(1) / spectra[:, 1:].sum(1).clamp_min(1e-12)
    ).tolist()
    lap("spectrum")

    heads = list(em.prob_final)
    guid = res.step_metrics.get("guidance.mean_abs", [float("nan")] * traj.num_steps)
    res.tables["emergence"] = _csv(
        ["step", "timestep"] + [f"{h}_prob" for h in heads] + ["guidance"],
        [
            [i, float(traj.timesteps[i])] + [res.step_metrics[f"emergence.{h}"][i] for h in heads] + [guid[i]]
            for i in range(traj.num_steps)
        ],
    )
    metrics["seconds"] = timings | {"total": round(float(np.sum(list(timings.values()))), 3)}
    res.metrics = ExplainMetrics.model_validate(metrics)
    return res
