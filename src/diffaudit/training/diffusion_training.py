"""Train the diffusion model with Lightning: resume from the last checkpoint of the same config, export
EMA."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset

from diffaudit.config.schema import Config
from diffaudit.data.store import DataMeta, Split
from diffaudit.diffusion.lit_module import DiffusionModule
from diffaudit.errors import CheckpointMismatchError
from diffaudit.models.unet import save_exported
from diffaudit.training.console import quiet_lightning
from diffaudit.training.progress import StepProgressBar
from diffaudit.utils.io import atomic_path
from diffaudit.utils.lineage import config_hash


def training_config_hash(cfg: Config, meta: DataMeta) -> str:
    """What a checkpoint must share with the current run to be resumed (not seeds or step counts)."""
    return config_hash(
        {
            "model": cfg.model.model_dump(exclude={"source", "path"}),  # the architecture
            "diffusion": cfg.diffusion.model_dump(),
            "data": cfg.data.model_dump(),
            "classes": meta.class_names,
        }
    )


def checkpoint_hash(path: str | Path) -> str | None:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a checkpoint, or pickled code that weights_only refuses
        raise CheckpointMismatchError(f"{path} is not a readable checkpoint: {err}") from err
    return ckpt.get("diffaudit_config_hash") if isinstance(ckpt, dict) else None


def resume_path(ckpt_dir: Path, expected_hash: str, strict: bool = False) -> Path | None:
    """last.ckpt if it was made by the same config. A mismatch is an error when `strict`, else the
    stale checkpoints are cleared (they belong to another config) and training starts fresh."""
    last = ckpt_dir / "last.ckpt"
    if not last.is_file():
        return None
    found = checkpoint_hash(last)
    if found == expected_hash:
        return last
    if strict:
        raise CheckpointMismatchError(
            f"{last} was made by a different model/diffusion/data config (hash {found}, expected "
            f"{expected_hash}); delete it or restore that config"
        )
    print(f"[train] {last} belongs to another config: starting fresh")
    shutil.rmtree(ckpt_dir)
    return None


def explicit_resume(path: str | Path, expected_hash: str) -> Path:
    """A checkpoint the config names: it must exist and come from the same config (never cleared)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"train.resume_from: {path} is not a file")
    found = checkpoint_hash(path)
    if found != expected_hash:
        raise CheckpointMismatchError(
            f"train.resume_from: {path} was made by a different model/diffusion/data config (hash {found}, "
            f"this config {expected_hash}); restore that config or drop train.resume_from"
        )
    return path


def make_loaders(train: Split, val: Split, cfg: Config) -> tuple[DataLoader, DataLoader]:
    gen = torch.Generator().manual_seed(cfg.seed)
    train_dl = DataLoader(
        TensorDataset(train.images, train.labels),
        batch_size=cfg.train.batch_size,
        shuffle=True,
        drop_last=len(train) > cfg.train.batch_size,
        generator=gen,
        num_workers=cfg.train.num_workers,
        persistent_workers=cfg.train.num_workers > 0,
    )
    val_dl = DataLoader(TensorDataset(val.images, val.labels), batch_size=512, shuffle=False)
    return train_dl, val_dl


def build_trainer(
    cfg: Config,
    ckpt_dir: Path,
    logger: Logger | bool,
    progress: bool = True,
    extra_callbacks: list | None = None,
) -> L.Trainer:
    t = cfg.trainer
    callbacks = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="step{step}",
            save_last=True,
            save_top_k=0,
            every_n_train_steps=cfg.train.checkpoint_every_n_steps,
            auto_insert_metric_name=False,
        ),
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best",
            monitor="val/loss",
            mode="min",
            save_top_k=1,
            auto_insert_metric_name=False,
        ),
    ] + list(extra_callbacks or [])
    if progress:  # tqdm rather than rich: it also prints progress into DVC's and CI's logs
        callbacks.append(StepProgressBar(refresh_rate=max(1, cfg.train.log_every_n_steps)))
    trainer = L.Trainer(
        max_steps=cfg.train.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        gradient_clip_val=cfg.train.grad_clip or None,
        val_check_interval=min(cfg.train.checkpoint_every_n_steps, cfg.train.max_steps),
        check_val_every_n_epoch=None,
        log_every_n_steps=cfg.train.log_every_n_steps,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=str(ckpt_dir.parent),
        num_sanity_val_steps=0,
    )
    # deterministic=True also NaN-fills every new tensor (a debugging aid, not needed for determinism):
    # measured at ~5% of a CPU training step (docs/performance.md).
    torch.utils.deterministic.fill_uninitialized_memory = False
    return trainer


def build_module(cfg: Config, meta: DataMeta, config_hash: str) -> DiffusionModule:
    """The Lightning module for this config and data (fresh weights from the seeded RNG)."""
    return DiffusionModule(
        model=cfg.model.model_dump(),
        diffusion=cfg.diffusion.model_dump(),
        train=cfg.train.model_dump(),
        image_size=meta.image_size,
        channels=meta.channels,
        num_classes=meta.num_classes,
        config_hash=config_hash,
    )


def train_diffusion(
    cfg: Config,
    train: Split,
    val: Split,
    meta: DataMeta,
    ckpt_dir: str | Path,
    logger: Logger | bool = False,
    progress: bool = True,
    extra_callbacks: list | None = None,
) -> tuple[DiffusionModule, L.Trainer]:
    """Fit (or resume) the diffusion model; returns the module with its EMA state."""
    ckpt_dir = Path(ckpt_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    expected = training_config_hash(cfg, meta)
    # This config's own last checkpoint wins (a rerun after a crash continues where it stopped);
    # train.resume_from only seeds a run that has none yet.
    resume = resume_path(ckpt_dir, expected)
    if resume is None and cfg.train.resume_from:
        resume = explicit_resume(cfg.train.resume_from, expected)
    module = build_module(cfg, meta, config_hash=expected)
    train_dl, val_dl = make_loaders(train, val, cfg)
    with quiet_lightning():  # only the messages a user cannot act on (training/console.py)
        trainer = build_trainer(cfg, ckpt_dir, logger, progress, extra_callbacks)
        if resume is not None and trainer.is_global_zero:
            print(f"[train] resuming from {resume}")
        trainer.fit(module, train_dl, val_dl, ckpt_path=str(resume) if resume else None)
    return module, trainer


def export_ema(module: DiffusionModule, out_dir: str | Path) -> None:
    """Write the EMA UNet and the noise scheduler in diffusers format (safetensors), atomically."""
    with atomic_path(out_dir) as tmp, module.ema_weights():
        save_exported(module.unet, module.noise_scheduler, tmp)
