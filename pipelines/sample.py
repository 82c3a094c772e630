"""Stage sample: generate a class-balanced image set with the configured sampler and guidance.

An unconditional model draws as many images (num_per_class x classes) from consecutive seeds; their
labels are then the class the evaluator reads in each (metadata `labels=evaluator`), since no label
conditioned them.
"""

from __future__ import annotations

import time

import torch

from diffaudit.config.schema import Config
from diffaudit.data.store import load_meta
from diffaudit.diffusion.pipeline import ClassConditionalPipeline
from diffaudit.diffusion.sampling import balanced_labels, sample_seeds
from diffaudit.layout import Layout
from diffaudit.models.evaluator import Evaluator
from diffaudit.results.applicability import LABELS_FROM_CONDITION, LABELS_FROM_EVALUATOR
from diffaudit.tracking.mlflow_tracking import log_outputs, stage_run
from diffaudit.training.evaluator_training import predict
from diffaudit.utils.images import class_grid, save_png
from diffaudit.utils.io import save_tensors
from pipelines._stage import progress_enabled, run


def main(cfg: Config) -> None:
    layout = Layout.of(cfg)
    with stage_run(cfg, "sample", {"model": layout.diffusion}):
        meta = load_meta(layout.prepared)
        pipe = ClassConditionalPipeline.from_exported(layout.diffusion, cfg.sampler.name)
        labels = balanced_labels(meta.num_classes, cfg.sampler.num_per_class)
        seeds = sample_seeds(cfg.seed, len(labels))
        if not pipe.is_conditional:
            labels = None
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        images = pipe.sample_as_configured(
            cfg.sampler, labels=labels, seeds=seeds, progress=progress_enabled()
        ).images
        seconds = time.perf_counter() - t0
        labels_from = LABELS_FROM_CONDITION
        if labels is None:
            evaluator = Evaluator.from_pretrained(layout.evaluator, use_safetensors=True).eval()
            labels, labels_from = predict(evaluator, images)["class"].argmax(1), LABELS_FROM_EVALUATOR
        save_tensors(
            layout.samples,
            {"images": images, "labels": labels, "seeds": torch.tensor(seeds)},
            metadata={
                "sampler": cfg.sampler.name,
                "steps": str(cfg.sampler.steps),
                "guidance_scale": str(pipe.guidance(cfg.sampler.guidance_scale)),
                "labels": labels_from,
            },
        )
        save_png(class_grid(images, labels, meta.num_classes), layout.samples_grid)
        log_outputs(
            metrics={"sampling_seconds": seconds, "images_per_second": len(labels) / seconds},
            files=[layout.samples_grid],
        )
        print(f"[sample] {len(labels)} images with {cfg.sampler.name} x{cfg.sampler.steps} in {seconds:.1f}s")


if __name__ == "__main__":
    run("sample", main)
