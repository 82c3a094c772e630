"""models/diffusion/source.json: where an imported model came from (written by the train stage when
`model.source=pretrained`; absent for a model diffaudit trained). The report, the model card and MLflow
name the model by it."""

from __future__ import annotations

from typing import Any, Literal

from diffaudit.results.base import ResultFile


class ModelSource(ResultFile):
    FILE = "source.json"

    path: str  # the folder as given (model.path), resolved
    md5: str  # DVC's hash of that folder, as dvc.lock records the dependency
    kind: Literal["pipeline", "unet_scheduler"]
    description: str
    pipeline_class: str | None
    unet_class: str
    scheduler_class: str
    vae_class: str | None
    conditioning: Literal["class_cfg", "class", "none"]
    prediction_type: Literal["epsilon", "v_prediction", "sample"]
    image_size: int
    channels: int
    latent: bool
    # The folder's own configs, as read: model_index.json (pipeline folders) and the UNet's config.json.
    model_index: dict[str, Any] | None
    unet_config: dict[str, Any]

    @property
    def conditional(self) -> bool:
        return self.conditioning != "none"

    @property
    def guidance(self) -> bool:
        """Classifier-free guidance needs a null class the model was trained with."""
        return self.conditioning == "class_cfg"
