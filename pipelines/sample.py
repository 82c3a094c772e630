"""Stage sample: generate a class-balanced image set with the configured sampler and guidance.

An unconditional model draws as many images (num_per_class x classes) from consecutive seeds; their
labels are then the class the evaluator reads in each (metadata `labels=evaluator`), since no label
conditioned them.

The `trainer` config spreads the draw over processes as it does training (`trainer=ddp_cpu`: two gloo
processes). The draw is cut into global batches of `sampler.batch_size`, each from its images' own
seeds; every rank draws its share of them and writes each as a part, and rank 0 joins the parts in batch
order. Neither the batches nor the seeds depend on the world size, so neither do the samples' bytes.
"""

from __future__ import annotations

import math
import shutil
import time

import torch
from tqdm import tqdm

from diffaudit.config.schema import Config
from diffaudit.data.store import load_meta
from diffaudit.diffusion.pipeline import ClassConditionalPipeline
from diffaudit.diffusion.sampling import balanced_labels, sample_seeds
from diffaudit.distributed.world import launch
from diffaudit.layout import Layout
from diffaudit.models.evaluator import Evaluator
from diffaudit.results.applicability import LABELS_FROM_CONDITION, LABELS_FROM_EVALUATOR
from diffaudit.tracking.mlflow_tracking import log_outputs, stage_run
from diffaudit.training.evaluator_training import predict
from diffaudit.utils.images import class_grid, save_png
from diffaudit.utils.io import atomic_path, save_tensors
from diffaudit.utils.tensor_rows import TensorRows, write_concatenated
from pipelines._stage import progress_enabled, run


def main(cfg: Config) -> None:
    layout = Layout.of(cfg)
    with stage_run(cfg, "sample", {"model": layout.diffusion}):
        world = launch(cfg.trainer)
        meta = load_meta(layout.prepared)
        pipe = ClassConditionalPipeline.from_exported(layout.diffusion, cfg.sampler.name).to(world.device)
        labels = balanced_labels(meta.num_classes, cfg.sampler.num_per_class)
        seeds = sample_seeds(cfg.seed, len(labels))
        evaluator = None
        if not pipe.is_conditional:
            evaluator = Evaluator.from_pretrained(layout.evaluator, use_safetensors=True).eval()
        # Beside the output, not in it: a killed draw leaves nothing DVC would take for samples.
        parts = layout.samples_dir.with_name(f".{layout.samples_dir.name}.parts")
        if world.is_zero:
            shutil.rmtree(parts, ignore_errors=True)
            parts.mkdir(parents=True)
        world.barrier()
        size = cfg.sampler.batch_size
        n_batches = math.ceil(len(seeds) / size)
        t0 = time.perf_counter()
        mine = list(world.mine(n_batches))
        for b in tqdm(
            mine, desc=f"sampling {len(seeds)} images", disable=not (progress_enabled() and world.is_zero)
        ):
            rows = slice(b * size, (b + 1) * size)
            batch_seeds = seeds[rows]
            images = pipe.sample_as_configured(
                cfg.sampler, labels=None if evaluator else labels[rows], seeds=batch_seeds
            ).images.cpu()
            batch_labels = (
                labels[rows] if evaluator is None else predict(evaluator, images)["class"].argmax(1)
            )
            save_tensors(
                parts / f"part-{b:06d}.safetensors",
                {"images": images, "labels": batch_labels, "seeds": torch.tensor(batch_seeds)},
            )
        world.barrier()
        seconds = time.perf_counter() - t0
        if not world.is_zero:
            return
        metadata = {
            "sampler": cfg.sampler.name,
            "steps": str(cfg.sampler.steps),
            "guidance_scale": str(pipe.guidance(cfg.sampler.guidance_scale)),
            "labels": LABELS_FROM_CONDITION if evaluator is None else LABELS_FROM_EVALUATOR,
        }
        with atomic_path(layout.samples_dir) as out:
            out.mkdir()
            write_concatenated(
                out / layout.samples.name,
                [parts / f"part-{b:06d}.safetensors" for b in range(n_batches)],
                metadata=metadata,
            )
            all_labels = TensorRows(out / layout.samples.name, "labels")[:]
            grid = class_grid_rows(
                TensorRows(out / layout.samples.name, "images"), all_labels, meta.num_classes
            )
            save_png(grid, out / layout.samples_grid.name)
        shutil.rmtree(parts, ignore_errors=True)
        log_outputs(
            metrics={
                "sampling_seconds": seconds,
                "images_per_second": len(seeds) / seconds,
                "world_size": world.size,
            },
            files=[layout.samples_grid],
        )
        print(
            f"[sample] {len(seeds)} images with {cfg.sampler.name} x{cfg.sampler.steps} in {seconds:.1f}s "
            f"on {world.size} process(es)"
        )


def class_grid_rows(
    images: TensorRows, labels: torch.Tensor, num_classes: int, per_class: int = 10
) -> torch.Tensor:
    """The class grid of the first `per_class` images of each class, reading only those rows."""
    pick = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(num_classes)])
    pick = pick.sort().values
    return class_grid(images[pick], labels[pick], num_classes)


if __name__ == "__main__":
    run("sample", main)
