"""Feature spaces for FID/KID/precision/recall: the evaluator's penultimate layer, or InceptionV3
from a local weights file. The name of the space goes into every metric key.

Features are computed once per image set (FeatureCache) and every metric, floor and bootstrap
resample reuses them; torchmetrics then sees them through CachedFeatures, an identity feature module.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from diffaudit.distributed.world import World
from diffaudit.models.evaluator import Evaluator


@contextmanager
def single_thread() -> Iterator[None]:
    """Run small dense linear algebra (128x128 eigenproblems, kernel matrices) on one thread.

    Measured: torch's multithreaded eigvals on a 128x128 matrix took 1.8 s on a busy 2-core machine
    against 0.03 s on one thread; the bootstrap runs hundreds of them.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class EvaluatorFeatures(nn.Module):
    """The evaluator's penultimate layer as a torchmetrics feature module (images in [-1, 1]).

    Holds its own copy: torchmetrics' set_dtype casts the module it is given.
    """

    space = "evaluator"

    def __init__(self, evaluator: Evaluator) -> None:
        super().__init__()
        self.net = copy.deepcopy(evaluator).eval()
        self.num_features = evaluator.feature_dim

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x.to(next(self.net.parameters()).dtype))


class CachedFeatures(nn.Module):
    """Identity feature module: torchmetrics' FID/KID fed with features already computed (and cached)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


@torch.no_grad()
def extract(
    module: nn.Module, images: Any, batch_size: int = 512, world: World | None = None
) -> torch.Tensor:
    """Features of a whole image set (a tensor or a lazy row reader), batched, the batches spread over the
    ranks of `world` (computed once, then reused by every metric)."""
    return (world or World()).map_batches(module, images, batch_size).double()


def fingerprint(images: Any) -> str:
    """Content hash of an image set (shape, dtype and values); a lazy reader's own fingerprint (its file
    and version), so a 50k-image set is not read twice to be named."""
    if not isinstance(images, torch.Tensor):
        return str(images.fingerprint)
    t = images.detach().cpu().contiguous()
    h = hashlib.sha1(f"{tuple(t.shape)}{t.dtype}".encode())
    h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """Features of image sets in one feature space, keyed by content: no set goes through the network
    twice."""

    def __init__(self, module: nn.Module, batch_size: int = 512, world: World | None = None) -> None:
        self.module = module
        self.world = world or World()
        self.space: str = module.space
        self.batch_size = batch_size
        self._store: dict[str, torch.Tensor] = {}
        self.misses = 0

    def __call__(self, images: Any) -> torch.Tensor:
        key = fingerprint(images)
        if key not in self._store:
            self.misses += 1
            self._store[key] = extract(self.module, images, self.batch_size, self.world)
        return self._store[key]
