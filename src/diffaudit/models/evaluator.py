"""The evaluator: a small CNN that predicts the class and every sensitive attribute of an image.

It is the judge of generated images (conditional accuracy, attribute shares) and its penultimate
layer is the feature space of FID/KID/precision/recall when no InceptionV3 weights are configured.
Saved like the UNet, in diffusers format: `save_pretrained(dir, safe_serialization=True)` writes
config.json plus diffusion_pytorch_model.safetensors, `Evaluator.from_pretrained(dir, use_safetensors=True)`
reads them back (a local folder only, in eval mode, no pickle).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from diffaudit.models.export import WEIGHTS_NAME


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.SiLU())


class Evaluator(ModelMixin, ConfigMixin):
    """Class head plus one head per attribute on a shared feature vector of size 4 * width.

    `attribute_sizes` is {attribute: number of groups}, or the same as [name, size] pairs (how the
    config stores it: config.json is written with sorted keys, and a pair list keeps the heads in
    the data's attribute order).
    """

    @register_to_config
    def __init__(
        self, channels: int, num_classes: int, attribute_sizes: dict[str, int] | list[list], width: int = 32
    ) -> None:
        super().__init__()
        attribute_sizes = dict(attribute_sizes)
        self.register_to_config(attribute_sizes=[[a, k] for a, k in attribute_sizes.items()])
        self.body = nn.Sequential(
            _block(channels, width),
            _block(width, width),
            nn.MaxPool2d(2),
            _block(width, 2 * width),
            _block(2 * width, 2 * width),
            nn.MaxPool2d(2),
            _block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = 4 * width
        self.class_head = nn.Linear(self.feature_dim, num_classes)
        self.attribute_heads = nn.ModuleDict(
            {a: nn.Linear(self.feature_dim, k) for a, k in attribute_sizes.items()}
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> Evaluator:
        """A saved evaluator from a local folder (never a download), in eval mode.

        Built on the CPU and filled with load_state_dict unless told otherwise (low_cpu_mem_usage=False):
        the same path whether or not accelerate is installed, and no warning when it is not.
        """
        model_dir = Path(pretrained_model_name_or_path)
        for name in (cls.config_name, WEIGHTS_NAME):
            if not (model_dir / name).is_file():  # also an evaluator saved before diffaudit 0.1's format
                raise FileNotFoundError(f"{model_dir}/{name} not found: run the evaluator stage first")
        kwargs = {"low_cpu_mem_usage": False} | kwargs | {"local_files_only": True}
        return super().from_pretrained(model_dir, **kwargs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features of images in [-1, 1]."""
        return self.body(x)

    def heads(self, f: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"class": self.class_head(f)}
        out |= {a: h(f) for a, h in self.attribute_heads.items()}
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits: {"class": (N, K), attribute name: (N, K_a), ...}."""
        return self.heads(self.features(x))


class ClassLogit(nn.Module):
    """The evaluator's class logits alone (a plain tensor function, as Captum and torchmetrics want)."""

    def __init__(self, evaluator: Evaluator) -> None:
        super().__init__()
        self.evaluator = evaluator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.evaluator(x)["class"]
