"""Stage evaluator: train the class/attribute classifier that judges generated images."""

from __future__ import annotations

from diffaudit.config.schema import Config
from diffaudit.data.store import load_meta, load_split
from diffaudit.layout import Layout
from diffaudit.results import EvaluatorResult, write_result
from diffaudit.tracking.mlflow_tracking import log_outputs, stage_run
from diffaudit.training.evaluator_training import held_out_report, train_evaluator
from diffaudit.utils.io import atomic_path
from pipelines._stage import progress_enabled, run


def main(cfg: Config) -> None:
    layout = Layout.of(cfg)
    data_dir, out = layout.prepared, layout.evaluator
    with stage_run(cfg, "evaluator", {"data": data_dir}):
        meta = load_meta(data_dir)
        train, val, test = (load_split(data_dir, s) for s in ("train", "val", "test"))
        model, history = train_evaluator(train, val, meta, cfg.eval.evaluator, cfg.seed, progress_enabled())
        report = held_out_report(model, test, meta)
        with atomic_path(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
        result = {"split": "test", "n": len(test)} | {
            k: {"accuracy": v["accuracy"], "labels": v["labels"], "confusion": v["confusion"]}
            for k, v in report.items()
        }
        write_result(layout.evaluator_metrics, EvaluatorResult.model_validate(result))
        log_outputs(
            curves={q: {h["epoch"]: h[q] for h in history} for q in ("train_loss", "val_class_accuracy")},
            metrics={k: v["accuracy"] for k, v in report.items()},
            prefix="test_accuracy.",
            files=[layout.evaluator_metrics],
            folders={"evaluator": out},
        )
        print(
            "[evaluator] held-out accuracy: "
            + ", ".join(f"{k}={v['accuracy']:.3f}" for k, v in report.items())
        )


if __name__ == "__main__":
    run("evaluator", main)
