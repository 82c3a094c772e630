"""Stage train: fit the diffusion model with Lightning (resuming from the last checkpoint), export EMA."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import mlflow
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient

from diffaudit.config.schema import Config
from diffaudit.data.store import load_meta, load_split
from diffaudit.tracking.mlflow_tracking import is_global_zero, stage_run, tracking_uri
from diffaudit.training.diffusion_training import export_ema, train_diffusion
from diffaudit.utils.io import write_text
from pipelines._stage import progress_enabled, run


def loss_curve_csv(run_id: str) -> str:
    """The step-wise training loss as CSV (DVC plot), read back from the MLflow run."""
    client = MlflowClient()
    rows = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    val = {m.step: m.value for m in client.get_metric_history(run_id, "val/loss")}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["step", "loss", "val_loss"])
    for step in sorted(rows):
        w.writerow([step, f"{rows[step]:.6f}", f"{val[step]:.6f}" if step in val else ""])
    return buf.getvalue()


def main(cfg: Config) -> None:
    data_dir = Path(cfg.paths.data) / "prepared"
    models = Path(cfg.paths.models)
    with stage_run(cfg, "train", {"data": data_dir}) as active:
        meta = load_meta(data_dir)
        train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
        logger = (
            MLFlowLogger(tracking_uri=tracking_uri(cfg), run_id=active.info.run_id, log_model=False)
            if active is not None else False
        )
        module, trainer = train_diffusion(cfg, train, val, meta, models / "checkpoints", logger, progress_enabled())
        if not is_global_zero():
            return
        export_ema(module, models / "diffusion")
        write_text(Path(cfg.paths.plots) / "train_loss.csv", loss_curve_csv(active.info.run_id))
        mlflow.log_metrics({"global_step": trainer.global_step, "world_size": trainer.world_size,
                            "ddp_ranks_agree": float(getattr(module, "ranks_agree", True))})
        mlflow.log_artifacts(str(models / "diffusion"), "model")
        mlflow.log_artifact(str(Path(cfg.paths.plots) / "train_loss.csv"))
        last = models / "checkpoints" / "last.ckpt"
        if last.is_file():
            mlflow.log_artifact(str(last), "checkpoints")
        weights = f"EMA (decay {cfg.train.ema_decay:g})" if cfg.train.ema_decay else "raw"
        print(f"[train] {trainer.global_step} steps; {weights} weights exported to {models / 'diffusion'}")


if __name__ == "__main__":
    run("train", main)
