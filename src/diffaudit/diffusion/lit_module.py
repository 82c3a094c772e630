"""The Lightning module that trains the denoiser: noise, predict, MSE in fp32, EMA, CFG dropout. A DDPM
(discrete timesteps, diffusers' DDPMScheduler) or an EDM model (sigma-parameterized, diffusion/edm.py)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel

from diffaudit.config.schema import DiffusionCfg, ModelCfg, TrainCfg
from diffaudit.diffusion.edm import edm_loss
from diffaudit.diffusion.parameterization import training_target
from diffaudit.diffusion.schedulers import build_noise_scheduler
from diffaudit.errors import NonFiniteLossError
from diffaudit.models.unet import build_unet


class DiffusionModule(L.LightningModule):
    def __init__(
        self,
        model: dict[str, Any],
        diffusion: dict[str, Any],
        train: dict[str, Any],
        image_size: int,
        channels: int,
        num_classes: int,
        config_hash: str = "",
        weights_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_cfg, self.diffusion_cfg = ModelCfg(**model), DiffusionCfg(**diffusion)
        self.train_cfg = TrainCfg(**train)
        self.unet = build_unet(self.model_cfg, image_size, channels, num_classes)
        self.noise_scheduler = build_noise_scheduler(self.diffusion_cfg)
        if not self.diffusion_cfg.is_edm:  # EDM has no discrete schedule: sigmas are drawn per image
            self.register_buffer(
                "alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone(), persistent=False
            )
        self.null_class = num_classes
        self.ema = EMAModel(
            self.unet.parameters(),
            decay=self.train_cfg.ema_decay,
            foreach=True,  # one fused update over all parameters: the per-tensor loop cost ~5% of a CPU step
            model_cls=type(self.unet),
            model_config=self.unet.config,
        )

    # -- the objective -------------------------------------------------------------------------
    def diffusion_loss(
        self,
        x0: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
        timesteps: torch.Tensor | None = None,
        reduce: bool = True,
    ) -> torch.Tensor:
        """MSE between the network output and its target at random (or given) timesteps, in fp32. An EDM
        model: EDM's weighted denoising loss at log-normal sigmas (`timesteps` are then sigmas)."""
        if self.diffusion_cfg.is_edm:
            return edm_loss(self.unet, x0, labels, self.diffusion_cfg, generator, timesteps, reduce)
        n = len(x0)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if timesteps is None:
            timesteps = torch.randint(
                0, self.diffusion_cfg.num_train_timesteps, (n,), generator=generator, device=x0.device
            )
        a = self.alphas_cumprod.to(x0.device)[timesteps]
        x_t = a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * noise
        out = self.unet(x_t, timesteps, class_labels=labels).sample
        target = training_target(x0, noise, a, self.diffusion_cfg.prediction_type)
        loss = F.mse_loss(out.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return loss.mean() if reduce else loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x0, labels = batch
        drop = torch.rand(len(labels), device=labels.device) < self.train_cfg.cond_drop_prob
        labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        loss = self.diffusion_loss(x0, labels)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {float(loss)} at global step {self.global_step}: training stopped; "
                "the last good checkpoint is kept (lower train.lr or check the data)"
            )
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        # Fixed noise and timesteps per batch: the validation loss moves only when the model does.
        x0, labels = batch
        gen = torch.Generator(device=x0.device).manual_seed(1000 + batch_idx)
        with self.ema_weights():
            loss = self.diffusion_loss(x0, labels, generator=gen)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(x0))

    # -- optimisation and EMA -------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.train_cfg
        lr = cfg.lr
        if cfg.scale_lr and self.trainer is not None:
            lr *= self.trainer.world_size  # linear scaling with the effective batch size
        opt = torch.optim.AdamW(self.unet.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        total = max(cfg.max_steps, 1)

        def schedule(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_start(self) -> None:
        self.ema.to(self.device)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # EMA right after the weights change, before any callback (checkpointing) sees the step.
        super().optimizer_step(*args, **kwargs)
        if self.train_cfg.ema_decay == 0.0:  # no averaging: copy exactly (the EMA's s - (s - p) rounds)
            with torch.no_grad():
                for s, p in zip(self.ema.shadow_params, self.unet.parameters(), strict=True):
                    s.copy_(p)
            self.ema.optimization_step += 1  # the step count the EMA's state (and a resume) carries
        else:
            self.ema.step(self.unet.parameters())

    def ema_weights(self) -> _EmaSwap:
        """Context manager: the UNet carries the EMA weights inside, its own weights after."""
        return _EmaSwap(self)

    def on_train_end(self) -> None:
        # DDP keeps replicas identical by construction; check it, so a broken launch cannot pass silently.
        checksum = torch.stack([p.detach().double().sum() for p in self.unet.parameters()]).sum()
        gathered = self.all_gather(checksum)
        self.ranks_agree = bool(torch.allclose(gathered, gathered.reshape(-1)[0].expand_as(gathered)))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ema"] = self.ema.state_dict()
        checkpoint["diffaudit_config_hash"] = self.hparams.config_hash
        # Every setting that changes the weights (training/diffusion_training.py `weights_config`): an
        # automatic resume continues only a run made with the same ones.
        checkpoint["diffaudit_weights_config"] = self.hparams.weights_config or {}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.ema.load_state_dict(checkpoint["ema"])


class _EmaSwap:
    def __init__(self, module: DiffusionModule) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.module.ema.store(self.module.unet.parameters())
        self.module.ema.copy_to(self.module.unet.parameters())

    def __exit__(self, *exc: object) -> None:
        self.module.ema.restore(self.module.unet.parameters())
