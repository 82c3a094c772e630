"""Training overhead: the pipeline's Lightning training step against a bare PyTorch loop, interleaved.

One Lightning fit runs with the pipeline's own `build_trainer` (checkpoint callbacks, validation,
tqdm progress bar, MLflow logger on a sqlite store, EMA in the module, deterministic mode). Every
`segment` steps a callback pauses it and runs `segment` steps of a bare loop: the same UNet (same
initial weights), batch, data loader, loss, gradient clipping, AdamW and a LambdaLR schedule, with no
EMA, logging, checkpoints or validation, and torch's default (not deterministic) algorithms. Both
sides see the same background load, so the ratio of their summed times survives a busy machine.
The first segment pair is warm-up and is dropped. Wall and process CPU time are both recorded, and
the time spent inside each piece of machinery (EMA, self.log, validation, checkpoints, logger,
progress bar) is measured in place, so the overhead comes with its breakdown.

Also: FLOPs of one training step (torch's FlopCounterMode, forward + backward) against the
machine's measured fp32 matmul FLOP/s.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import Figure, load_config, load_data, median
from diffaudit.config.schema import Config
from diffaudit.data.store import DataMeta, Split
from diffaudit.diffusion.lit_module import DiffusionModule
from diffaudit.diffusion.parameterization import training_target
from diffaudit.diffusion.schedulers import build_noise_scheduler
from diffaudit.models.unet import build_unet
from diffaudit.training.diffusion_training import build_module, build_trainer, make_loaders
from diffaudit.training.precision import resolve_precision

TARGET_RATIO = 1.05


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer reads finished steps (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def torch_defaults() -> Iterator[None]:
    """torch's default algorithm choice inside the block (the Trainer's `deterministic=True` is global)."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic = before[1]


class BareLoop:
    """The training step with nothing around it: loss, backward, clip, AdamW, LR schedule.

    bf16 autocast around the forward when the trainer config asks for bf16-mixed (the loss in fp32).
    """

    def __init__(
        self,
        cfg: Config,
        meta: DataMeta,
        train: Split,
        val: Split,
        init: torch.nn.Module,
        device: torch.device | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = device or torch.device("cpu")
        self.bf16 = resolve_precision(cfg.trainer) == "bf16-mixed"  # as the pipeline's trainer resolves it
        self.unet = build_unet(cfg.model, meta.image_size, meta.channels, meta.num_classes)
        self.unet.load_state_dict(init.state_dict())
        self.unet.to(self.device).train()
        self.alphas = build_noise_scheduler(cfg.diffusion).alphas_cumprod.clone().to(self.device)
        self.null = meta.num_classes
        t = cfg.train
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        warm = max(1, t.warmup_steps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warm))
        loader, _ = make_loaders(train, val, cfg)
        self.batches: Iterator[Any] = itertools.cycle(loader)

    def loss(self, x0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t, dev = self.cfg.train, self.device
        x0, labels = x0.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
        drop = torch.rand(len(labels), device=dev) < t.cond_drop_prob
        labels = torch.where(drop, torch.full_like(labels, self.null), labels)
        noise = torch.randn_like(x0)
        steps = torch.randint(0, self.cfg.diffusion.num_train_timesteps, (len(x0),), device=dev)
        a = self.alphas[steps]
        x_t = a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * noise
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.unet(x_t, steps, class_labels=labels).sample
        target = training_target(x0, noise, a, self.cfg.diffusion.prediction_type)
        return F.mse_loss(out.float(), target.float(), reduction="none").mean(dim=(1, 2, 3)).mean()

    def step(self) -> None:
        x0, labels = next(self.batches)
        loss = self.loss(x0, labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.cfg.train.grad_clip)
        self.opt.step()
        self.sched.step()

    def run(self, n: int) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of n steps, with torch's default (non-deterministic)
        algorithms."""
        with torch_defaults():
            sync(self.device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                self.step()
            sync(self.device)
            return time.perf_counter() - t0, time.process_time() - c0

    def step_flops(self) -> int:
        """FLOPs of one step's forward and backward (the optimizer's elementwise work is not counted)."""
        x0, labels = next(self.batches)
        with FlopCounterMode(display=False) as counter:
            self.loss(x0, labels).backward()
        self.opt.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())


class HookTimers:
    """Wall and CPU seconds spent inside named methods of the pipeline's machinery (wrapped in place)."""

    def __init__(self) -> None:
        self.enabled = False
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def wrap(self, obj: object, method: str, name: str) -> None:
        inner = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return inner(*args, **kwargs)
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - t0
                self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c0

        object.__setattr__(obj, method, timed)


def instrument(trainer: L.Trainer, module: DiffusionModule, timers: HookTimers) -> None:
    """Time what Lightning adds around the step: EMA, self.log, validation, checkpoints, logger, progress
    bar."""
    ema = getattr(module, "ema", None)  # diffusers' EMAModel today; skipped if the module drops it
    if ema is not None and hasattr(ema, "step"):
        timers.wrap(ema, "step", "ema")
    timers.wrap(module, "log", "self.log")
    timers.wrap(trainer.fit_loop.epoch_loop.val_loop, "run", "validation")
    timers.wrap(trainer, "save_checkpoint", "checkpoint")
    for lg in trainer.loggers:
        timers.wrap(lg, "log_metrics", "logger")
    if trainer.progress_bar_callback is not None:
        timers.wrap(trainer.progress_bar_callback, "on_train_batch_end", "progress_bar")


class Interleaver(L.Callback):
    """Pauses the Lightning fit every `segment` steps to run as many bare steps; records both times."""

    def __init__(
        self,
        segment: int,
        bare: Callable[[int], tuple[float, float]],
        device: torch.device | None = None,
        timers: HookTimers | None = None,
    ) -> None:
        self.segment, self.bare = segment, bare
        self.device = device or torch.device("cpu")
        self.timers = timers or HookTimers()
        self.lightning: list[float] = []
        self.bare_times: list[float] = []
        self.lightning_cpu: list[float] = []
        self.bare_cpu: list[float] = []
        self.fit_start = self.train_start = self.t = self.c = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_start = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_start = self.t = time.perf_counter()
        self.c = time.process_time()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.segment == 0 and step < (trainer.max_steps or 0):
            self._pair()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The last segment includes the last validation, checkpoints (Lightning runs ModelCheckpoint's
        # hooks after every other callback's) and the end of the fit (logger finalised).
        self._pair()

    def _pair(self) -> None:
        sync(self.device)
        self.lightning.append(time.perf_counter() - self.t)
        self.lightning_cpu.append(time.process_time() - self.c)
        wall, cpu = self.bare(self.segment)
        self.bare_times.append(wall)
        self.bare_cpu.append(cpu)
        self.timers.enabled = True  # hooks are timed from the end of the warm-up segment on
        self.t, self.c = time.perf_counter(), time.process_time()


def matmul_flops(
    n: int = 1024,
    reps: int = 5,
    tries: int = 3,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Matmul FLOP/s of this machine (best of `tries`: the least disturbed by background load)."""
    device = device or torch.device("cpu")
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # noqa: B018 - warm-up
    best = math.inf
    for _ in range(tries):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b  # noqa: B018
        sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * n**3 / best


def measure(
    cfg: Config,
    train: Split,
    val: Split,
    meta: DataMeta,
    steps: int,
    segment: int,
    mlflow_logger: bool = True,
) -> dict[str, Any]:
    """Interleaved Lightning vs bare timings over `steps` steps in segments of `segment`."""
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": steps})})
    torch.manual_seed(cfg.seed)
    module = build_module(cfg, meta, config_hash="bench")
    device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu")
    bare = BareLoop(cfg, meta, train, val, module.unet, device)
    flops = bare.step_flops()
    bare.run(2)  # warm-up outside the measurement
    timers = HookTimers()
    inter = Interleaver(segment, bare.run, device, timers)
    deterministic = torch.are_deterministic_algorithms_enabled()
    # MLflow's set_tracking_uri (called by the logger) exports MLFLOW_TRACKING_URI: put it back, or later
    # code in this process would log into a store that is deleted with the temporary directory.
    saved_uri = os.environ.get("MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory() as tmp:
        logger: Any = False
        if mlflow_logger:
            from lightning.pytorch.loggers import MLFlowLogger

            logger = MLFlowLogger(
                experiment_name="bench", tracking_uri=f"sqlite:///{Path(tmp) / 'mlflow.db'}"
            )
        trainer = build_trainer(
            cfg, Path(tmp) / "checkpoints", logger, progress=True, extra_callbacks=[inter]
        )
        instrument(trainer, module, timers)
        train_dl, val_dl = make_loaders(train, val, cfg)
        sink = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            trainer.fit(module, train_dl, val_dl)
        fit_total = time.perf_counter() - t0
        checkpoints = sorted(p.name for p in (Path(tmp) / "checkpoints").glob("*.ckpt"))
    if saved_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved_uri
    torch.use_deterministic_algorithms(deterministic)
    lit, bar = inter.lightning[1:], inter.bare_times[1:]  # the first pair is warm-up
    if not lit:
        raise ValueError(f"steps={steps} with segment={segment} leaves no measured segment after warm-up")
    n_steps = segment * len(lit)
    lit_step, bare_step = sum(lit) / n_steps, sum(bar) / n_steps
    hooks = {
        k: {
            "ms_per_step_wall": 1e3 * timers.wall[k] / n_steps,
            "ms_per_step_cpu": 1e3 * timers.cpu[k] / n_steps,
        }
        for k in sorted(timers.wall)
    }
    lit_cpu, bare_cpu = sum(inter.lightning_cpu[1:]) / n_steps, sum(inter.bare_cpu[1:]) / n_steps
    mm = matmul_flops(device=device) if device.type == "cpu" else matmul_flops(8192, device=device)
    startup = fit_total - sum(inter.lightning) - sum(inter.bare_times)
    return {
        "model": cfg.model.model_dump(),
        "batch_size": cfg.train.batch_size,
        "image_size": meta.image_size,
        "channels": meta.channels,
        "steps": steps,
        "segment": segment,
        "measured_steps_each": n_steps,
        "checkpoint_every_n_steps": cfg.train.checkpoint_every_n_steps,
        "checkpoints_written": checkpoints,
        "mlflow_logger": mlflow_logger,
        "lightning_segments_s": inter.lightning,
        "bare_segments_s": inter.bare_times,
        "lightning_cpu_segments_s": inter.lightning_cpu,
        "bare_cpu_segments_s": inter.bare_cpu,
        "lightning_s_per_step": lit_step,
        "bare_s_per_step": bare_step,
        "lightning_images_per_s": cfg.train.batch_size / lit_step,
        "bare_images_per_s": cfg.train.batch_size / bare_step,
        "training_overhead_ratio": lit_step / bare_step,
        "median_paired_ratio": median([a / b for a, b in zip(lit, bar, strict=True)]),
        # CPU time of this process: the work done, whatever the background load (exact with 1 thread)
        "cpu_time_ratio": lit_cpu / bare_cpu,
        "lightning_cpu_s_per_step": lit_cpu,
        "bare_cpu_s_per_step": bare_cpu,
        # where the difference goes: time inside each piece of the machinery, per measured step
        "overhead_ms_per_step_wall": 1e3 * (lit_step - bare_step),
        "overhead_ms_per_step_cpu": 1e3 * (lit_cpu - bare_cpu),
        "hooks": hooks,
        "unattributed_ms_per_step_cpu": 1e3 * (lit_cpu - bare_cpu)
        - sum(h["ms_per_step_cpu"] for h in hooks.values()),
        "lightning_startup_s": startup,
        "startup_amortised_ratio": (lit_step + startup / cfg.train.max_steps) / bare_step,
        "step_flops": flops,
        "achieved_flops_per_s_bare": flops / bare_step,
        "achieved_flops_per_s_lightning": flops / lit_step,
        "matmul_flops_per_s": mm,
        "hardware_fraction": flops / bare_step / mm,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "precision": resolve_precision(cfg.trainer),
    }


def figures(r: dict[str, Any]) -> list[Figure]:
    ratio = r["training_overhead_ratio"]
    return [
        Figure(
            "training_overhead_ratio",
            ratio,
            "x",
            f"<= {TARGET_RATIO}",
            ratio <= TARGET_RATIO,
            f"median paired {r['median_paired_ratio']:.3f}, CPU-time {r['cpu_time_ratio']:.3f}; "
            f"{r['measured_steps_each']} steps each",
        ),
        Figure("train images/s (lightning)", r["lightning_images_per_s"], "img/s"),
        Figure("train images/s (bare)", r["bare_images_per_s"], "img/s"),
        Figure(
            "overhead per step (CPU time)",
            r["overhead_ms_per_step_cpu"],
            "ms",
            note=", ".join(f"{k} {v['ms_per_step_cpu']:.1f}" for k, v in r["hooks"].items())
            + f", rest {r['unattributed_ms_per_step_cpu']:.1f}",
        ),
        Figure("lightning startup", r["lightning_startup_s"], "s", note="once per fit, not in the ratio"),
        Figure("train step GFLOP", r["step_flops"] / 1e9, "GFLOP"),
        Figure("achieved GFLOP/s (bare)", r["achieved_flops_per_s_bare"] / 1e9, "GFLOP/s"),
        Figure("matmul GFLOP/s (fp32)", r["matmul_flops_per_s"] / 1e9, "GFLOP/s"),
        Figure(
            "train step / matmul peak", r["hardware_fraction"], "", note="share of measured matmul FLOP/s"
        ),
    ]


def run(quick: bool = False, steps: int | None = None, segment: int | None = None) -> dict[str, Any]:
    """Default config (one checkpoint interval of steps), or the smoke config on tiny sizes when `quick`."""
    cfg = load_config(["experiment=smoke"] if quick else [])
    train, val, meta, source = load_data(cfg, prefer_prepared=not quick)
    steps = steps or (6 if quick else cfg.train.checkpoint_every_n_steps)
    segment = segment or (2 if quick else 10)
    # quick: no MLflow logger (creating its sqlite store takes seconds, and the smoke test wants none)
    r = measure(cfg, train, val, meta, steps, segment, mlflow_logger=not quick)
    r["data"] = source
    return r
