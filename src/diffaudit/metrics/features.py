"""Feature spaces for FID/KID/precision/recall: the evaluator's penultimate layer, or InceptionV3
from a local weights file. The name of the space goes into every metric key."""

from __future__ import annotations

import copy

import torch
from torch import nn

from diffaudit.models.evaluator import Evaluator


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


@torch.no_grad()
def extract(module: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Features of a whole image set, batched (computed once, then reused by every metric)."""
    return torch.cat([module(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]).double()
