"""Train the diffusion model with Lightning: resume from the last checkpoint of the same config, export
EMA."""

from __future__ import annotations

import logging
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch.utils.data import DataLoader, TensorDataset

from diffaudit.config.schema import Config
from diffaudit.data.store import DataMeta, Split
from diffaudit.diffusion.lit_module import DiffusionModule
from diffaudit.errors import CheckpointMismatchError
from diffaudit.models.unet import save_exported
from diffaudit.training.precision import resolve_precision
from diffaudit.utils.io import atomic_path
from diffaudit.utils.lineage import config_hash

# Train keys that do not change the weights: how often to checkpoint and log, loader processes, and the
# explicit resume itself. Every other train key, the seed and the trainer do.
NOT_WEIGHT_KEYS = ("checkpoint_every_n_steps", "log_every_n_steps", "num_workers", "resume_from")


def weights_config(cfg: Config) -> dict:
    """The settings beyond the architecture that change the trained weights: an automatic resume continues a
    checkpoint only when all of them are the same (a changed seed or lr trains afresh)."""
    return {
        "seed": cfg.seed,
        "train": cfg.train.model_dump(exclude=set(NOT_WEIGHT_KEYS)),
        "trainer": cfg.trainer.model_dump() | {"precision": resolve_precision(cfg.trainer)},  # as resolved
    }


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def weights_difference(found: dict, expected: dict) -> list[str]:
    """`key: checkpoint value -> this run's value` for every weight-affecting setting that differs."""
    a, b = _flat(found), _flat(expected)
    return [
        f"{k}: {a.get(k, 'unrecorded')} -> {b.get(k, 'unset')}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    ]


# One training progress bar over the optimizer steps (train.max_steps), with an ETA.
#
# Lightning's TQDMProgressBar draws one bar per epoch (an epoch of the default digits run is 19 steps:
# 53 bars for 1000 steps, none of them saying how far training is) and one more per validation.
# Training here is counted in steps, so the bar is too: it starts at the resumed step, and the
# validation passes (one small batch) draw nothing.
class StepProgressBar(TQDMProgressBar):
    """`train: 40%|████      | 400/1000 [02:51<04:17, 2.33it/s, train/loss=0.081, val/loss=0.079]`"""

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)  # validation is one small batch between steps: no bar of its own

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resumed run starts at its step; `initial` keeps the rate and ETA to this run's own steps.
        self.train_progress_bar = Tqdm(
            desc="train",
            total=trainer.max_steps,
            initial=trainer.global_step,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        pass  # one bar for the whole run, not one per epoch

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step, bar = trainer.global_step, self.train_progress_bar
        if self._should_update(step, bar.total) and not bar.disable:
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's run version: not progress
        return metrics


# Training's console without the messages a user cannot act on, each silenced by its exact text (never
# all warnings):
#
# - Lightning's "number of training batches is smaller than the logging interval": wrong in effect here.
#   Steps are logged every `log_every_n_steps` optimizer steps counted across epochs (the default run's
#   epoch is 19 steps, its interval 25), so every interval is logged; tests/test_console.py checks it.
# - torch's FutureWarning that `isinstance(treespec, LeafSpec)` is deprecated: raised inside Lightning's
#   own pytree helper, fixed by a Lightning release, not by us.
# - Lightning's hardware inventory ("GPU available: False, used: False", TPU, HPU) and its advertising
#   ("💡 Tip: ... litlogger"): the hardware used is the config's `trainer.*`, logged as params; and
#   "`Trainer.fit` stopped: `max_steps=N` reached", glued to the bar's last frame: the bar and the train
#   stage's own "[train] N steps" line say it.
LOGGING_INTERVAL = r"The number of training batches \(\d+\) is smaller than the logging interval"
LEAFSPEC = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
_NOISE = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "💡 Tip:",
    "`Trainer.fit` stopped: `max_steps=",
)
_LIGHTNING_INFO = "lightning.pytorch.utilities.rank_zero"  # where rank_zero_info logs


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_NOISE)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Around building and fitting a Trainer: the messages above are dropped, every other one shown."""
    log = logging.getLogger(_LIGHTNING_INFO)
    noise = _DropNoise()
    log.addFilter(noise)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=LOGGING_INTERVAL, category=PossibleUserWarning)
            warnings.filterwarnings("ignore", message=LEAFSPEC, category=FutureWarning)
            yield
    finally:
        log.removeFilter(noise)


def training_config_hash(cfg: Config, meta: DataMeta) -> str:
    """The architecture a checkpoint must share with the current run to be loaded at all (a named
    `train.resume_from`, to fine-tune with other settings); an automatic resume also needs the same
    `weights_config`."""
    return config_hash(
        {
            "model": cfg.model.model_dump(exclude={"source", "path"}),  # the architecture
            "diffusion": cfg.diffusion.model_dump(),
            "data": cfg.data.model_dump(),
            "classes": meta.class_names,
        }
    )


def _checkpoint(path: str | Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a checkpoint, or pickled code that weights_only refuses
        raise CheckpointMismatchError(f"{path} is not a readable checkpoint: {err}") from err
    return ckpt if isinstance(ckpt, dict) else {}


def checkpoint_hash(path: str | Path) -> str | None:
    return _checkpoint(path).get("diffaudit_config_hash")


def resume_path(
    ckpt_dir: Path, expected_hash: str, strict: bool = False, weights: dict | None = None
) -> Path | None:
    """last.ckpt if it was made by the same architecture and (given `weights`) the same weight-affecting
    settings. An architecture mismatch is an error when `strict`; otherwise the stale checkpoints are
    cleared (they belong to another config) and training starts fresh, saying why."""
    last = ckpt_dir / "last.ckpt"
    if not last.is_file():
        return None
    ckpt = _checkpoint(last)
    found = ckpt.get("diffaudit_config_hash")
    if found == expected_hash:
        changed = (
            [] if weights is None else weights_difference(ckpt.get("diffaudit_weights_config", {}), weights)
        )
        if not changed:
            return last
        print(f"[train] {last} was trained with other settings ({'; '.join(changed)}): starting fresh")
        shutil.rmtree(ckpt_dir)
        return None
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
            # Overwrite last.ckpt even when the callback's state (its interval) changed since it was written:
            # a versioned last-v1.ckpt beside a stale last.ckpt would make the next resume load the stale one.
            enable_version_counter=False,
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
        precision=resolve_precision(t),
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
        weights_config=weights_config(cfg),
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
    resume = resume_path(ckpt_dir, expected, weights=weights_config(cfg))
    if resume is None and cfg.train.resume_from:
        resume = explicit_resume(cfg.train.resume_from, expected)
    module = build_module(cfg, meta, config_hash=expected)
    train_dl, val_dl = make_loaders(train, val, cfg)
    with quiet_lightning():  # only the messages a user cannot act on (see quiet_lightning)
        trainer = build_trainer(cfg, ckpt_dir, logger, progress, extra_callbacks)
        if resume is not None and trainer.is_global_zero:
            print(f"[train] resuming from {resume}")
        trainer.fit(module, train_dl, val_dl, ckpt_path=str(resume) if resume else None)
    return module, trainer


def export_ema(module: DiffusionModule, out_dir: str | Path) -> None:
    """Write the EMA UNet and the noise scheduler in diffusers format (safetensors), atomically."""
    with atomic_path(out_dir) as tmp, module.ema_weights():
        save_exported(module.unet, module.noise_scheduler, tmp)
