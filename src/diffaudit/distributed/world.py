"""The processes a stage runs on: one, or a Lightning Fabric job launched from the `trainer` config.

`trainer=ddp_cpu` (two gloo processes), `ddp` (every local GPU), `multinode` (torchrun or srun set the
rank variables) drive sampling and scoring exactly as they drive training. A single-process config
starts no process group and imports no Lightning: the default stays as cheap as before.

Lightning's launcher re-runs the stage's command for every extra local rank, and kills all of them
within seconds when one dies; a collective waits at most `timeout_s` for a rank that hangs.

Results do not depend on the world size: work is cut into global batches that are the same for any
number of ranks, and every rank keeps the single-process thread count (on a CPU, that oversubscribes
the cores when several ranks share a machine: bitwise identity is worth more than the speed there).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from diffaudit.config.schema import TrainerCfg

# How long a collective (barrier, gather) waits for a silent rank before every rank fails. Long enough
# for the slowest rank's share of a 50k-image draw to finish between two collectives.
COLLECTIVE_TIMEOUT_S = float(os.environ.get("DIFFAUDIT_COLLECTIVE_TIMEOUT_S", 1800))


@dataclass
class World:
    """This process's place in the job: its rank, the job's size and the device it computes on."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    fabric: Any = None  # lightning.fabric.Fabric when size > 1

    @property
    def is_zero(self) -> bool:
        """Whether this process writes outputs and MLflow runs (rank 0, as in training)."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.fabric is not None:
            self.fabric.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank (a single process: `[obj]`)."""
        if self.fabric is None:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def mine(self, n_batches: int) -> Iterator[int]:
        """The global batch indices this rank computes: every `size`-th, starting at its rank.

        The batches themselves do not depend on the world size, so neither does any image or feature
        (a UNet's output for one image depends on the batch it is in, not on the thread count).
        """
        return iter(range(self.rank, n_batches, self.size))

    def map_batches(
        self, fn: Callable[[torch.Tensor], torch.Tensor], rows: Any, batch_size: int
    ) -> torch.Tensor:
        """`fn` over `rows[i : i + batch_size]` for every global batch, the batches spread over the ranks,
        the outputs joined in row order on every rank (on the CPU).

        Args:
            fn: maps a batch of rows (on this rank's device) to one output row per input row.
            rows: a tensor, or anything with `len` and slicing that gives tensors (a lazy file reader).
            batch_size: rows per batch; the batches, and so the outputs, are the same for any world size.
        """
        n_batches = math.ceil(len(rows) / batch_size)
        if n_batches == 0:
            raise ValueError("map_batches needs at least one row")
        out = {
            b: fn(rows[b * batch_size : (b + 1) * batch_size].to(self.device)).cpu()
            for b in self.mine(n_batches)
        }
        joined: dict[int, torch.Tensor] = {}
        for part in self.gather(out):
            joined.update(part)
        return torch.cat([joined[b] for b in range(n_batches)])


def _single_process(cfg: TrainerCfg) -> bool:
    launched = any(v in os.environ for v in ("WORLD_SIZE", "SLURM_NTASKS")) and (
        int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1))) > 1
    )
    return cfg.devices == 1 and cfg.num_nodes == 1 and not launched


def launch(cfg: TrainerCfg, timeout_s: float = COLLECTIVE_TIMEOUT_S) -> World:
    """Start (or join) the job the trainer config describes; returns this process's `World`.

    Args:
        cfg (`TrainerCfg`):
            The `trainer` config group: accelerator, devices, num_nodes, strategy.
        timeout_s (`float`, *optional*):
            The longest a collective waits for the other ranks before failing on every rank.
    """
    if _single_process(cfg):
        gpu = cfg.accelerator == "gpu" or (cfg.accelerator == "auto" and torch.cuda.is_available())
        return World(device=torch.device("cuda" if gpu else "cpu"))
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    strategy: Any = cfg.strategy
    if cfg.strategy in ("auto", "ddp", "ddp_find_unused_parameters_true"):  # nothing is trained: plain DDP
        strategy = DDPStrategy(timeout=timedelta(seconds=timeout_s))
    # Every rank computes with the thread count one process of a single-process run has: a UNet's output
    # for a batch can change in its last bits with the thread count (measured: 9.5e-7 for a batch of
    # 12), and Lightning would otherwise give each of n local ranks 1/n of the cores. Children inherit it.
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    # Oversubscribed, OpenMP's spinning waits cost more than the work (measured 7.5 s against 0.2 s for
    # the tiny draw on 2 cores); the child ranks wait passively (this process's OpenMP has started).
    if cfg.accelerator != "gpu":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    fabric = Fabric(
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=strategy
    )
    fabric.launch()
    return World(rank=fabric.global_rank, size=fabric.world_size, device=fabric.device, fabric=fabric)
