"""Stage train: fit the diffusion model with Lightning (resuming from the last checkpoint), export EMA."""

from __future__ import annotations

import csv
import io

from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient

from diffaudit.config.schema import Config
from diffaudit.data.store import load_meta, load_split
from diffaudit.layout import Layout
from diffaudit.tracking.mlflow_tracking import is_global_zero, log_outputs, stage_run, tracking_uri
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
    layout = Layout.of(cfg)
    with stage_run(cfg, "train", {"data": layout.prepared}) as active:
        meta = load_meta(layout.prepared)
        train, val = load_split(layout.prepared, "train"), load_split(layout.prepared, "val")
        logger = (
            MLFlowLogger(tracking_uri=tracking_uri(cfg), run_id=active.info.run_id, log_model=False)
            if active is not None
            else False
        )
        module, trainer = train_diffusion(
            cfg, train, val, meta, layout.checkpoints, logger, progress_enabled()
        )
        if not is_global_zero():
            return
        export_ema(module, layout.diffusion)
        write_text(layout.train_loss, loss_curve_csv(active.info.run_id))
        log_outputs(
            metrics={
                "global_step": trainer.global_step,
                "world_size": trainer.world_size,
                "ddp_ranks_agree": float(getattr(module, "ranks_agree", True)),
            },
            files=[layout.train_loss],
            folders={"model": layout.diffusion},
        )
        last = layout.checkpoints / "last.ckpt"
        if last.is_file():
            log_outputs(files=[last], artifact_path="checkpoints")
        weights = f"EMA (decay {cfg.train.ema_decay:g})" if cfg.train.ema_decay else "raw"
        print(f"[train] {trainer.global_step} steps; {weights} weights exported to {layout.diffusion}")


if __name__ == "__main__":
    run("train", main)
