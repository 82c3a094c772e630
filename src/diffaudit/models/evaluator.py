"""The evaluator: a small CNN that predicts the class and every sensitive attribute of an image.

It is the judge of generated images (conditional accuracy, attribute shares) and its penultimate
layer is the feature space of FID/KID/precision/recall when no InceptionV3 weights are configured.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.SiLU())


class Evaluator(nn.Module):
    """Class head plus one head per attribute on a shared feature vector of size 4 * width."""

    def __init__(self, channels: int, num_classes: int, attribute_sizes: dict[str, int], width: int = 32) -> None:
        super().__init__()
        self.init_kwargs = {
            "channels": channels, "num_classes": num_classes,
            "attribute_sizes": dict(attribute_sizes), "width": width,
        }
        self.body = nn.Sequential(
            _block(channels, width), _block(width, width), nn.MaxPool2d(2),
            _block(width, 2 * width), _block(2 * width, 2 * width), nn.MaxPool2d(2),
            _block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.feature_dim = 4 * width
        self.class_head = nn.Linear(self.feature_dim, num_classes)
        self.attribute_heads = nn.ModuleDict({a: nn.Linear(self.feature_dim, k) for a, k in attribute_sizes.items()})

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


def save_evaluator(model: Evaluator, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps(model.init_kwargs, indent=2))


def load_evaluator(model_dir: str | Path) -> Evaluator:
    """Load a saved evaluator in eval mode (safetensors: no pickle)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}/config.json not found: run the evaluator stage first")
    model = Evaluator(**json.loads((model_dir / "config.json").read_text()))
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    return model.eval()
