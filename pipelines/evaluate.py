"""Stage evaluate: FID/KID in the evaluator's feature space with the real-vs-real floor, and
conditional accuracy; writes metrics/quality.json."""

from __future__ import annotations

from pathlib import Path

import mlflow

from diffaudit.config.schema import Config
from diffaudit.data.store import load_meta, load_split
from diffaudit.metrics.quality import evaluate_quality
from diffaudit.models.evaluator import load_evaluator
from diffaudit.tracking.mlflow_tracking import log_metrics_flat, stage_run
from diffaudit.utils.io import load_tensors, write_json, write_text
from pipelines._stage import run


def main(cfg: Config) -> None:
    data_dir = Path(cfg.paths.data) / "prepared"
    samples_path = Path(cfg.paths.samples) / "samples.safetensors"
    evaluator_dir = Path(cfg.paths.models) / "evaluator"
    with stage_run(cfg, "evaluate", {"samples": samples_path, "evaluator": evaluator_dir, "data": data_dir}):
        meta = load_meta(data_dir)
        samples = load_tensors(samples_path)
        result = evaluate_quality(
            cfg.eval, load_evaluator(evaluator_dir), meta,
            train=load_split(data_dir, "train"), test=load_split(data_dir, "test"),
            gen_images=samples["images"], gen_labels=samples["labels"], seed=cfg.seed,
        )
        result["sampler"] = cfg.sampler.model_dump()
        metrics_dir, plots_dir = Path(cfg.paths.metrics), Path(cfg.paths.plots)
        write_json(metrics_dir / "quality.json", result)
        rows = ["class,conditional_accuracy"] + [
            f"{c},{v:.4f}" for c, v in result["conditional_accuracy_per_class"].items()
        ]
        write_text(plots_dir / "conditional_accuracy.csv", "\n".join(rows) + "\n")
        if mlflow.active_run():
            log_metrics_flat({k: v for k, v in result.items() if k != "sampler"})
            mlflow.log_artifact(str(metrics_dir / "quality.json"))
        fs = result["feature_space"]
        print(f"[evaluate] fid_{fs}={result[f'fid_{fs}']:.3f} (floor {result[f'fid_{fs}_floor']:.3f}), "
              f"conditional_accuracy={result['conditional_accuracy']:.3f}")


if __name__ == "__main__":
    run("evaluate", main)
