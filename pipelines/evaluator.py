"""Stage evaluator: train the class/attribute classifier that judges generated images."""

from __future__ import annotations

from pathlib import Path

import mlflow

from diffaudit.config.schema import Config
from diffaudit.data.store import load_meta, load_split
from diffaudit.models.evaluator import save_evaluator
from diffaudit.results import EvaluatorResult, write_result
from diffaudit.tracking.mlflow_tracking import stage_run
from diffaudit.training.evaluator_training import held_out_report, train_evaluator
from diffaudit.utils.io import atomic_path
from pipelines._stage import progress_enabled, run


def main(cfg: Config) -> None:
    data_dir = Path(cfg.paths.data) / "prepared"
    out = Path(cfg.paths.models) / "evaluator"
    with stage_run(cfg, "evaluator", {"data": data_dir}):
        meta = load_meta(data_dir)
        train, val, test = (load_split(data_dir, s) for s in ("train", "val", "test"))
        model, history = train_evaluator(train, val, meta, cfg.eval.evaluator, cfg.seed, progress_enabled())
        report = held_out_report(model, test, meta)
        with atomic_path(out) as tmp:
            save_evaluator(model, tmp)
        result = {"split": "test", "n": len(test)} | {
            k: {"accuracy": v["accuracy"], "labels": v["labels"], "confusion": v["confusion"]} for k, v in report.items()
        }
        write_result(Path(cfg.paths.metrics) / EvaluatorResult.FILE, EvaluatorResult.model_validate(result))
        if mlflow.active_run():
            for h in history:
                mlflow.log_metrics({"train_loss": h["train_loss"], "val_class_accuracy": h["val_class_accuracy"]},
                                   step=h["epoch"])
            mlflow.log_metrics({f"test_accuracy.{k}": v["accuracy"] for k, v in report.items()})
            mlflow.log_artifacts(str(out), "evaluator")
            mlflow.log_artifact(str(Path(cfg.paths.metrics) / "evaluator.json"))
        print("[evaluator] held-out accuracy: " + ", ".join(f"{k}={v['accuracy']:.3f}" for k, v in report.items()))


if __name__ == "__main__":
    run("evaluator", main)
