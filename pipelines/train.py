"""Stage train: fit the diffusion model with Lightning (resuming from the last checkpoint), export EMA;
or, with `model.source=pretrained`, import the model folder at `model.path` instead of training."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient

from diffaudit.config.schema import Config
from diffaudit.data.store import load_meta, load_split
from diffaudit.layout import Layout
from diffaudit.models.imported import (
    MODEL_INDEX,
    SOURCE_RECORD,
    check_fits,
    copy_model,
    folder_md5,
    inspect_model_folder,
)
from diffaudit.models.unet import load_model
from diffaudit.results import write_result
from diffaudit.results.model_source import ModelSource
from diffaudit.tracking.mlflow_tracking import is_global_zero, log_outputs, stage_run, tracking_uri
from diffaudit.training.diffusion_training import export_ema, train_diffusion
from diffaudit.utils.io import atomic_path, write_text
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


def import_pretrained(cfg: Config, layout: Layout) -> None:
    """Check the folder, load it once (a corrupt file fails here, before anything is written), then copy
    its configs and safetensors weights with a record of where they came from, whole or not at all."""
    folder = inspect_model_folder(cfg.model.path)
    check_fits(folder, cfg)
    source = ModelSource(
        path=str(Path(cfg.model.path).resolve()),
        md5=folder_md5(folder.root),
        kind=folder.kind,
        description=folder.description(),
        pipeline_class=folder.pipeline_class,
        unet_class=str(folder.unet_config["_class_name"]),
        scheduler_class=folder.scheduler_class,
        vae_class=folder.vae_class,
        conditioning=folder.conditioning(load_meta(layout.prepared).num_classes),
        prediction_type=folder.prediction_type,
        image_size=folder.image_size,
        channels=folder.channels,
        latent=folder.latent,
        model_index=_json_or_none(folder.root / MODEL_INDEX),
        unet_config=folder.unet_config,
    )
    with stage_run(cfg, "train", {"data": layout.prepared}):
        with atomic_path(layout.diffusion) as tmp:
            copy_model(folder, tmp)
            write_result(tmp / SOURCE_RECORD, source)
            load_model(tmp)  # loads as the later stages will (safetensors only), or ModelFolderError
        # The stage's other outputs, so DVC finds them: no loss curve (nothing was trained), no checkpoints.
        write_text(layout.train_loss, "step,loss,val_loss\n")
        layout.checkpoints.mkdir(parents=True, exist_ok=True)
        log_outputs(
            tags={"model.imported_md5": source.md5, "model.imported_path": source.path},
            files=[layout.diffusion / SOURCE_RECORD],
        )
    print(
        f"[train] imported {source.path} ({source.description}; conditioning={source.conditioning}; "
        f"md5 {source.md5})"
    )


def _json_or_none(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def main(cfg: Config) -> None:
    layout = Layout.of(cfg)
    if cfg.model.source == "pretrained":
        import_pretrained(cfg, layout)
        return
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
