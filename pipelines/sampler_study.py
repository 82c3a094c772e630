"""Stage sampler_study: the trained model sampled with DDPM, DDIM, DPM-Solver++ and Euler over step
counts and guidance scales (eval.study); writes metrics/sampler_study.json and plots/sampler_study/."""

from __future__ import annotations

import torch

from diffaudit.config.schema import Config
from diffaudit.data.store import load_meta, load_split
from diffaudit.diffusion.pipeline import ClassConditionalPipeline
from diffaudit.distributed.world import launch
from diffaudit.errors import ConfigError
from diffaudit.layout import Layout
from diffaudit.metrics.features import FeatureCache
from diffaudit.metrics.quality import feature_module
from diffaudit.metrics.sampler_study import StudyPoint, run_study, write_study_outputs
from diffaudit.models.evaluator import Evaluator
from diffaudit.results import SamplerStudyResult, space_key, write_result
from diffaudit.results.sampler_study import PointScore
from diffaudit.tracking.mlflow_tracking import log_outputs, stage_run
from pipelines._stage import progress_enabled, run


def main(cfg: Config) -> None:
    if cfg.eval.study is None:
        raise ConfigError(
            "eval.study is not configured: select one with eval/study=light (or full), see conf/eval/study/"
        )
    layout = Layout.of(cfg)
    data_dir, model_dir, evaluator_dir = layout.prepared, layout.diffusion, layout.evaluator
    with stage_run(cfg, "sampler_study", {"model": model_dir, "evaluator": evaluator_dir, "data": data_dir}):
        world = launch(cfg.trainer)  # the ranks share each point's batches, as the sample stage's
        meta = load_meta(data_dir)
        train, test = load_split(data_dir, "train"), load_split(data_dir, "test")
        pipe = ClassConditionalPipeline.from_exported(model_dir, cfg.sampler.name).to(world.device)
        evaluator = Evaluator.from_pretrained(evaluator_dir, use_safetensors=True).to(world.device).eval()
        cache = FeatureCache(feature_module(cfg.eval, evaluator).to(world.device), world=world)
        torch.manual_seed(cfg.seed)
        verbose = progress_enabled() and world.is_zero

        def on_point(p: StudyPoint, m: PointScore) -> None:
            if verbose:
                fid = space_key("fid", m.space())
                print(
                    f"[sampler_study] {p.sampler:>10} nfe={p.nfe:<4} w={p.guidance_scale:<4g} "
                    f"{fid}={m.space_value('fid'):.3f} ({m.fid_over_floor:.2f}x floor) "
                    f"acc={_acc(m.conditional_accuracy)} {m.seconds:.1f}s",
                    flush=True,
                )

        result = run_study(
            pipe,
            evaluator,
            cache,
            meta,
            train,
            test,
            cfg.eval,
            cfg.sampler,
            cfg.seed,
            on_point=on_point,
            world=world,
        )
        if not world.is_zero:  # every rank has the result; rank 0 alone writes it
            return
        write_result(layout.sampler_study, result)
        write_study_outputs(result, layout.sampler_study_plots)
        log_outputs(
            metrics={"floor": result.floor.dump(), "seconds": result.seconds},
            prefix="study.",
            files=[layout.sampler_study],
            folders={"sampler_study": layout.sampler_study_plots},
            curves=_curves(result),
        )
        best = result.best
        verdict = (
            f"{' and '.join([best.sampler, *best.ties])} reach the target at {best.nfe} NFE"
            if best
            else "no sampler reaches the target quality"
        )
        print(
            f"[sampler_study] {verdict}; whole study {result.seconds:.1f}s on n={result.n_images} "
            "images/point"
        )


def _acc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _curves(result: SamplerStudyResult) -> dict[str, dict[int, float]]:
    """The study as metric histories: step = NFE for each sampler, guidance x 100 for the guidance sweep."""
    fid = space_key("fid", result.feature_space)
    curves: dict[str, dict[int, float]] = {}
    for s, pts in result.nfe_sweep.items():
        for m in pts.values():
            for name, value in (
                (fid, m.space_value("fid")),
                ("fid_over_floor", m.fid_over_floor),
                ("conditional_accuracy", m.conditional_accuracy),
                ("seconds", m.seconds),
            ):
                if value is not None:  # conditional accuracy of an unconditional model: not applicable
                    curves.setdefault(f"study.{s}.{name}", {})[m.nfe] = value
    for m in result.guidance_sweep.points.values():
        step = round(m.guidance_scale * 100)
        curves.setdefault("study.guidance.precision", {})[step] = m.precision
        curves.setdefault("study.guidance.recall", {})[step] = m.recall
    return curves


if __name__ == "__main__":
    run("sampler_study", main)
