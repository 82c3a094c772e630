"""Sampling: wall time and quality per sampler and step count, and classifier-free guidance's forward count.

Quality and time come from the sampler study (metrics/sampler_study.json) when it has run; otherwise
the same study points are timed here (round-robin over points, median of rounds), without quality.
The CFG check counts the UNet's forward calls during a pipeline call: one batched call of 2n images per
step means conditional and unconditional share one forward.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import ROOT, Figure, load_config, median
from diffaudit.config.schema import Config
from diffaudit.diffusion.pipeline import ClassConditionalPipeline
from diffaudit.diffusion.sampling import guided_output, initial_noise, sample_seeds
from diffaudit.diffusion.schedulers import build_noise_scheduler
from diffaudit.layout import Layout
from diffaudit.models.export import exported_unet_config
from diffaudit.models.unet import build_unet, null_class
from diffaudit.results import SamplerStudyResult, read_result

MAX_NFE = 20
QUALITY_TOLERANCE = 0.10
STUDY_FIELDS = {"seconds", "fid_over_floor", "conditional_accuracy", "unet_evals"}  # kept per study point


def load_model(cfg: Config, model_dir: Path | None) -> tuple[ClassConditionalPipeline, str]:
    """(pipeline, source): the exported model when present, else a random one of the config's shape."""
    if model_dir is not None and exported_unet_config(model_dir).is_file():
        return ClassConditionalPipeline.from_exported(model_dir, cfg.sampler.name), "trained"
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg.model, cfg.data.image_size, cfg.data.channels, 10).eval()
    return ClassConditionalPipeline.from_unet(
        unet, build_noise_scheduler(cfg.diffusion), cfg.sampler.name
    ), "random"


class ForwardCounter:
    """Counts a module's forward calls and the batch size of each."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.batches: list[int] = []
        self._handle = module.register_forward_hook(lambda _m, args, _o: self.batches.append(len(args[0])))

    def close(self) -> None:
        self._handle.remove()


def cfg_check(
    pipe: ClassConditionalPipeline, n: int, steps: int, guidance: float, samplers: list[str]
) -> dict[str, Any]:
    """Forward calls per sampling run with guidance != 1: expected `steps` calls of 2n images each."""
    labels = torch.arange(n) % pipe.null_class
    seeds = sample_seeds(0, n)
    out: dict[str, Any] = {}
    for name in samplers:
        counter = ForwardCounter(pipe.unet)
        try:
            pipe.with_sampler(name)(
                labels=labels, seeds=seeds, num_inference_steps=steps, guidance_scale=guidance
            )
        finally:
            counter.close()
        out[name] = {
            "steps": steps,
            "forward_calls": len(counter.batches),
            "batch_sizes": sorted(set(counter.batches)),
            "one_batched_forward": len(counter.batches) == steps and set(counter.batches) == {2 * n},
        }
    return out


@torch.no_grad()
def batched_vs_split(unet: torch.nn.Module, n: int, guidance: float, reps: int) -> dict[str, float]:
    """Seconds per CFG evaluation: one forward of 2n images (the library) against two forwards of n,
    interleaved."""
    x = initial_noise(
        sample_seeds(1, n), (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    )
    labels = torch.arange(n) % null_class(unet)
    t = torch.tensor(500)
    null = torch.full_like(labels, null_class(unet))

    def split() -> None:
        c = unet(x, t.expand(n), class_labels=labels).sample
        u = unet(x, t.expand(n), class_labels=null).sample
        _ = u + guidance * (c - u)

    fns = {"batched": lambda: guided_output(unet, x, t, labels, null_class(unet), guidance), "split": split}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {
        "batched_s": median(times["batched"]),
        "split_s": median(times["split"]),
        "speedup": median(times["split"]) / median(times["batched"]),
    }


def time_points(
    pipe: ClassConditionalPipeline, points: list[tuple[str, int]], n: int, guidance: float, rounds: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Median seconds of sampling n images at each (sampler, steps), points visited round-robin."""
    labels = torch.arange(n) % pipe.null_class
    seeds = sample_seeds(0, n)
    times: dict[tuple[str, int], list[float]] = {p: [] for p in points}
    for _ in range(rounds):
        for name, steps in points:
            point = pipe.with_sampler(name)
            t0 = time.perf_counter()
            point(labels=labels, seeds=seeds, num_inference_steps=steps, guidance_scale=guidance)
            times[(name, steps)].append(time.perf_counter() - t0)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (name, steps), ts in times.items():
        s = median(ts)
        out.setdefault(name, {})[str(steps)] = {"seconds": s, "seconds_per_step": s / steps, "n_images": n}
    return out


def study_verdict(study: SamplerStudyResult) -> dict[str, Any]:
    """Best quality over the NFE sweep, and the cheapest point at <= 20 NFE within 10 % of it.

    Quality is FID over its real-vs-real floor (lower is better) and conditional accuracy (higher is
    better); "within 10 %" holds for both: fid_over_floor <= 1.1 x best, accuracy >= 0.9 x best.
    """
    pts = [(s, int(k), m) for s, d in study.nfe_sweep.items() for k, m in d.items()]
    best_fid = min(m.fid_over_floor for *_, m in pts)
    best_acc = max(m.conditional_accuracy for *_, m in pts)
    ok = [
        (m.seconds, s, n)
        for s, n, m in pts
        if n <= MAX_NFE
        and m.fid_over_floor <= (1 + QUALITY_TOLERANCE) * best_fid
        and m.conditional_accuracy >= (1 - QUALITY_TOLERANCE) * best_acc
    ]
    pick = min(ok, default=None)
    return {
        "best_fid_over_floor": best_fid,
        "best_conditional_accuracy": best_acc,
        "cheapest_within_tolerance": None
        if pick is None
        else {"sampler": pick[1], "nfe": pick[2], "seconds": pick[0]},
        "met": pick is not None,
    }


def run(
    quick: bool = False,
    study_path: Path | None = None,
    model_dir: Path | None = None,
    measure: bool | None = None,
) -> dict[str, Any]:
    """CFG check always; study figures when its JSON exists; timing of the study's points when it does not."""
    cfg = load_config(["experiment=smoke"] if quick else [])
    layout = Layout.of(cfg)
    study_path = study_path if study_path is not None else ROOT / layout.sampler_study
    model_dir = model_dir if model_dir is not None else ROOT / layout.diffusion
    pipe, source = load_model(cfg, None if quick else model_dir)
    guidance = cfg.sampler.guidance_scale if cfg.sampler.guidance_scale != 1.0 else 2.0
    n = 4 if quick else 20
    samplers = ["ddpm", "ddim", "dpm_solver", "euler"]
    result: dict[str, Any] = {"model": source, "guidance_scale": guidance}
    result["cfg_forward"] = cfg_check(pipe, n, 3, guidance, samplers)
    result["cfg_batched_vs_split"] = batched_vs_split(
        pipe.unet, 2 if quick else cfg.sampler.batch_size // 10, guidance, 2 if quick else 5
    )
    study = read_result(study_path, SamplerStudyResult) if study_path.is_file() else None
    if study is not None:
        result["study"] = {
            "source": str(study_path),
            "n_images": study.n_images,
            "floor": study.floor.dump(),
            "points": {
                s: {k: m.model_dump(include=STUDY_FIELDS) for k, m in d.items()}
                for s, d in study.nfe_sweep.items()
            },
        } | study_verdict(study)
    if measure or (measure is None and study is None):
        nfe = {"ddim": [2, 3]} if quick else (cfg.eval.study.nfe if cfg.eval.study else {"dpm_solver": [20]})
        points = [(s, k) for s, ks in nfe.items() for k in sorted(set(ks))]
        result["timing"] = time_points(pipe, points, n, guidance, 1 if quick else 2)
    return result


def figures(r: dict[str, Any]) -> list[Figure]:
    one = all(v["one_batched_forward"] for v in r["cfg_forward"].values())
    calls = ", ".join(f"{k} {v['forward_calls']}x{v['batch_sizes']}" for k, v in r["cfg_forward"].items())
    out = [
        Figure(
            "cfg: one batched forward per step", "yes" if one else "no", "", "yes", one, f"3 steps: {calls}"
        ),
        Figure("cfg batched vs two forwards", r["cfg_batched_vs_split"]["speedup"], "x faster"),
    ]
    if "study" in r:
        st = r["study"]
        pick = st["cheapest_within_tolerance"]
        out.append(
            Figure(
                "sampler <= 20 NFE within 10% of best",
                "none" if pick is None else f"{pick['sampler']}@{pick['nfe']}",
                "",
                "exists",
                st["met"],
                f"best fid/floor {st['best_fid_over_floor']:.3g}, acc {st['best_conditional_accuracy']:.3g}; "
                f"n={st['n_images']} per point",
            )
        )
        for s, d in st["points"].items():
            for k, m in d.items():
                out.append(
                    Figure(
                        f"study {s}@{k}",
                        m["seconds"],
                        "s",
                        note=f"fid/floor {m['fid_over_floor']:.3g} acc {m['conditional_accuracy']:.3g}",
                    )
                )
    else:
        out.append(
            Figure(
                "sampler <= 20 NFE within 10% of best",
                None,
                "",
                "exists",
                None,
                "needs metrics/sampler_study.json (the sampler_study stage)",
            )
        )
    for s, d in r.get("timing", {}).items():
        for k, m in d.items():
            out.append(
                Figure(
                    f"sample {s}@{k}", m["seconds"], "s", note=f"{m['n_images']} images, {r['model']} model"
                )
            )
    return out
