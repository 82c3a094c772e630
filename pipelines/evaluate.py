"""Stage evaluate: FID/KID/precision/recall in the configured feature space, conditional accuracy and
CAS, each beside its real-vs-real floor with a bootstrap 95% interval and its n; writes
metrics/quality.json and plots/conditional_accuracy.csv. The `trainer` config spreads the feature
extraction and the evaluator's class reads over processes, as the sample stage's draw."""

from __future__ import annotations

from diffaudit.config.schema import Config
from diffaudit.data.store import load_meta, load_split
from diffaudit.distributed.world import launch
from diffaudit.layout import Layout
from diffaudit.metrics.quality import evaluate_quality
from diffaudit.models.evaluator import Evaluator
from diffaudit.results import Interval, QualityResult, write_result
from diffaudit.results.applicability import LABELS_FROM_CONDITION
from diffaudit.results.quality import QualityRow, SamplerRun
from diffaudit.tracking.mlflow_tracking import log_outputs, stage_run
from diffaudit.tracking.summary import quality_metrics
from diffaudit.utils.io import load_tensor_metadata, write_text
from diffaudit.utils.tensor_rows import TensorRows
from pipelines._stage import run


def main(cfg: Config) -> None:
    layout = Layout.of(cfg)
    data_dir, samples_path, evaluator_dir = layout.prepared, layout.samples, layout.evaluator
    with stage_run(
        cfg, "evaluate", {"samples": layout.samples_dir, "evaluator": evaluator_dir, "data": data_dir}
    ):
        world = launch(cfg.trainer)  # the ranks share feature extraction and class reads; rank 0 writes
        meta = load_meta(data_dir)
        train, val, test = (load_split(data_dir, s) for s in ("train", "val", "test"))
        result = evaluate_quality(
            cfg.eval,
            Evaluator.from_pretrained(evaluator_dir, use_safetensors=True).to(world.device),
            meta,
            train=train,
            test=test,
            val=val,
            gen_images=TensorRows(samples_path, "images"),  # read in batches, never whole
            gen_labels=TensorRows(samples_path, "labels")[:],
            seed=cfg.seed,
            labels_from=load_tensor_metadata(samples_path).get("labels", LABELS_FROM_CONDITION),
            world=world,
        )
        if result is None:  # a rank other than 0: its share is done
            return
        result.sampler = SamplerRun(**cfg.sampler.model_dump())
        write_result(layout.quality, result)
        per, floor = result.conditional_accuracy_per_class, result.conditional_accuracy_floor_per_class
        ci = result.conditional_accuracy_per_class_ci
        rows = ["class,conditional_accuracy,low,high,real_test_accuracy"] + [
            f"{c},{v:.4f},{_lo(ci.get(c)):.4f},{_hi(ci.get(c)):.4f},{floor.get(c, float('nan')):.4f}"
            for c, v in per.items()
        ]
        if result.conditional_accuracy is None:  # not applicable: the evaluator's own accuracy alone
            rows += [f"{c},,,,{v:.4f}" for c, v in floor.items()]
        write_text(layout.conditional_accuracy_csv, "\n".join(rows) + "\n")
        log_outputs(
            metrics=quality_metrics(result),  # short stable names; every number is in quality.json
            files=[layout.quality],
            tags={f"not_applicable.{k}": why for k, why in result.not_applicable.items()},
        )
        print(summary(result))


def _lo(ci: Interval | None) -> float:
    return ci.low if ci else float("nan")


def _hi(ci: Interval | None) -> float:
    return ci.high if ci else float("nan")


def summary(result: QualityResult) -> str:
    """One line per metric: value [95% interval] (floor), n."""

    def line(r: QualityRow) -> str:
        ci = f" [{r.ci.low:.4g}, {r.ci.high:.4g}] {r.ci.method}" if r.ci else ""
        value = (
            f"{r.value:.4g}{ci}"
            if r.corrected is None
            else f"{r.value:.4g} (bias-corrected {r.corrected:.4g}{ci})"
        )
        return f"  {r.key}={value} (floor {r.floor:.4g}), n={r.n}"

    na = [f"  {k}: {why}" for k, why in result.not_applicable.items()]
    return "[evaluate] quality (value [95% CI] method (real-vs-real floor), n):\n" + "\n".join(
        [line(r) for r in result.rows()] + na
    )


if __name__ == "__main__":
    run("evaluate", main)
