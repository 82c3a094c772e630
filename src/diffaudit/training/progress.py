"""One training progress bar over the optimizer steps (train.max_steps), with an ETA.

Lightning's TQDMProgressBar draws one bar per epoch (an epoch of digits is ~13 steps: 77 bars for 1000
steps, none of them saying how far training is) and one more per validation. Training here is counted
in steps, so the bar is too: it starts at the resumed step, and the validation passes (one small batch)
draw nothing.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


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
