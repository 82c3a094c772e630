"""Stage evaluate: FID/KID/precision/recall in the configured feature space, conditional accuracy and
CAS, each beside its real-vs-real floor with a bootstrap 95% interval and its n; writes
metrics/quality.json and plots/conditional_accuracy.csv."""

from __future__ import annotations

from pathlib import Path

import mlflow

from diffaudit.config.schema import Config
from diffaudit.data.store import load_meta, load_split
from diffaudit.metrics.quality import evaluate_quality
from diffaudit.models.evaluator import load_evaluator
from diffaudit.results import Interval, QualityResult, write_result
from diffaudit.results.quality import SamplerRun
from diffaudit.tracking.mlflow_tracking import log_metrics_flat, stage_run
from diffaudit.utils.io import load_tensors, write_text
from pipelines._stage import run


def main(cfg: Config) -> None:
    data_dir = Path(cfg.paths.data) / "prepared"
    samples_path = Path(cfg.paths.samples) / "samples.safetensors"
    evaluator_dir = Path(cfg.paths.models) / "evaluator"
    with stage_run(cfg, "evaluate", {"samples": samples_path, "evaluator": evaluator_dir, "data": data_dir}):
        meta = load_meta(data_dir)
        samples = load_tensors(samples_path)
        train, val, test = (load_split(data_dir, s) for s in ("train", "val", "test"))
        result = evaluate_quality(
            cfg.eval, load_evaluator(evaluator_dir), meta, train=train, test=test, val=val,
            gen_images=samples["images"], gen_labels=samples["labels"], seed=cfg.seed,
        )
        result.sampler = SamplerRun(**cfg.sampler.model_dump())
        metrics_dir, plots_dir = Path(cfg.paths.metrics), Path(cfg.paths.plots)
        write_result(metrics_dir / QualityResult.FILE, result)
        per, floor = result.conditional_accuracy_per_class, result.conditional_accuracy_floor_per_class
        ci = result.conditional_accuracy_per_class_ci
        rows = ["class,conditional_accuracy,low,high,real_test_accuracy"] + [
            f"{c},{v:.4f},{_lo(ci.get(c)):.4f},{_hi(ci.get(c)):.4f},{floor.get(c, float('nan')):.4f}"
            for c, v in per.items()
        ]
        write_text(plots_dir / "conditional_accuracy.csv", "\n".join(rows) + "\n")
        if mlflow.active_run():
            log_metrics_flat(result.dump(exclude={"sampler"}))
            mlflow.log_artifact(str(metrics_dir / "quality.json"))
        print(summary(result))


def _lo(ci: Interval | None) -> float:
    return ci.low if ci else float("nan")


def _hi(ci: Interval | None) -> float:
    return ci.high if ci else float("nan")


def summary(result: QualityResult) -> str:
    """One line per metric: value [95% interval] (floor), n."""

    def line(key: str, value: float, ci: Interval | None, floor: float, n: object) -> str:
        interval = f" [{ci.low:.4g}, {ci.high:.4g}]" if ci else ""
        return f"  {key}={value:.4g}{interval} (floor {floor:.4g}), n={n}"

    return "[evaluate] quality (value [95% CI] (real-vs-real floor), n):\n" + "\n".join(
        line(r.key, r.value, r.ci, r.floor, r.n) for r in result.rows())


if __name__ == "__main__":
    run("evaluate", main)
