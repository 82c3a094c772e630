"""InceptionV3 features (the 2048-d pool layer of the FID network) from a local weights file.

Uses torchmetrics' NoTrainInceptionV3 (torch-fidelity's TF-compatible port) with
`feature_extractor_weights_path`, so nothing is ever downloaded. The file is first read with
`weights_only=True` (or as safetensors): a weights file cannot run code.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from diffaudit.errors import ConfigError

HOW_TO = (
    "eval.feature=inception needs eval.inception_weights=/path/to/pt_inception-2015-12-05-6726825d.pth "
    "(torch-fidelity's FID InceptionV3 weights, copied to this machine by hand: nothing is downloaded), "
    "or use eval.feature=evaluator"
)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad or unsafe file
        raise ConfigError(
            f"eval.inception_weights={str(path)!r} is not a readable weights file ({err})"
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(f"eval.inception_weights={str(path)!r} does not hold a state dict")
    return state


class InceptionFeatures(nn.Module):
    """FID InceptionV3 pool features of images in [-1, 1] (grey is repeated to RGB; resized inside to 299)."""

    space = "inception"
    num_features = 2048

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"{HOW_TO}. Got {str(weights)!r}, which is not a file.")
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
        except ImportError as err:  # pragma: no cover - torchmetrics is a hard dependency
            raise ConfigError(f"eval.feature=inception needs torchmetrics' image extras: {err}") from None
        if not _TORCH_FIDELITY_AVAILABLE:
            raise ConfigError(
                "eval.feature=inception needs the torch-fidelity package (`pip install torch-fidelity`, "
                "with a torchvision built for the installed torch); it is not importable here"
            )
        state = _load_state(path)
        with tempfile.TemporaryDirectory() as tmp:
            clean = Path(tmp) / "inception.pt"
            torch.save(state, clean)  # a plain tensor dict, re-read by torch-fidelity
            self.net = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(clean)
            )

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        uint8 = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.net(uint8)
