"""The diffusion model as an MLflow pyfunc: rows of (label, guidance_scale, seed) in, images out, so the
registry can version it and `mlflow models serve` can answer over REST. An unconditional model takes rows
of `seed` alone (one image per row, so the row count is the image count).

Each image comes from its own seed (the same image whatever the batch), which makes a served
answer reproducible and comparable with the pipeline's own samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from diffaudit.diffusion.schedulers import SAMPLERS

MAX_ROWS = 1024  # one request must not occupy a server for minutes


def signature(
    image_size: int, channels: int, steps: int, sampler: str, conditional: bool = True
) -> ModelSignature:
    """Input: one row per image; guidance_scale and seed may be left out (an unconditional model: `seed`
    alone, required). Output: (N, H, W, C) uint8."""
    cols = (
        [
            ColSpec("long", "label"),
            ColSpec("double", "guidance_scale", required=False),
            ColSpec("long", "seed", required=False),
        ]
        if conditional
        else [ColSpec("long", "seed")]
    )
    inputs = Schema(cols)
    outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, image_size, image_size, channels))])
    params = ParamSchema(
        [
            ParamSpec("steps", "long", steps),
            ParamSpec("sampler", "string", sampler),
            ParamSpec("batch_size", "long", 64),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def _bad(msg: str) -> MlflowException:
    # INVALID_PARAMETER_VALUE makes the scoring server answer 400, not 500.
    return MlflowException(msg, error_code=INVALID_PARAMETER_VALUE)


class DiffusionPyfunc(mlflow.pyfunc.PythonModel):
    """Class-conditional sampler over the exported EMA UNet (artifact `diffusion`, diffusers format).

    model_config carries what the rows leave out: class_names, guidance_scale, steps, sampler.
    """

    def load_context(self, context: Any) -> None:
        from diffaudit.diffusion.pipeline import ClassConditionalPipeline

        self.config: dict[str, Any] = dict(context.model_config or {})
        # The loaded pipeline's own scheduler is never used: predict() takes a fresh one per call.
        self.pipe = ClassConditionalPipeline.from_exported(Path(context.artifacts["diffusion"]), SAMPLERS[0])
        self.num_classes = self.pipe.num_classes

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        import torch

        from diffaudit.utils.images import to_uint8

        params = dict(params or {})
        steps = int(params.get("steps") or self.config.get("steps", 20))
        sampler = str(params.get("sampler") or self.config.get("sampler", "dpm_solver"))
        batch_size = max(1, int(params.get("batch_size") or 64))
        if sampler not in SAMPLERS:
            raise _bad(f"sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
        if not 1 <= steps <= 1000:
            raise _bad(f"steps must be in [1, 1000], got {steps}")
        df = pd.DataFrame(model_input)
        if not 0 < len(df) <= MAX_ROWS:
            raise _bad(f"send between 1 and {MAX_ROWS} rows, got {len(df)}")
        if not self.pipe.is_conditional:
            if "label" in df.columns or "guidance_scale" in df.columns:
                raise _bad("this model is unconditional: send rows of `seed` only (one image per row)")
            if "seed" not in df.columns:
                raise _bad("input needs a `seed` column (one image per row)")
            df = df.assign(label=-1)
        elif "label" not in df.columns:
            raise _bad("input needs a `label` column (class ids)")
        labels = df["label"].astype("int64").to_numpy()
        if self.pipe.is_conditional and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise _bad(
                f"label must be a class id in [0, {self.num_classes - 1}]; classes: "
                f"{self.config.get('class_names', list(range(self.num_classes)))}"
            )
        default_w = float(self.config.get("guidance_scale", 1.0))
        guidance = (
            (
                df["guidance_scale"].fillna(default_w)
                if "guidance_scale" in df
                else pd.Series(default_w, index=df.index)
            )
            .astype("float64")
            .to_numpy()
        )
        if (guidance < 0).any():
            raise _bad("guidance_scale must be >= 0")
        if not self.pipe.guides and (guidance != 1.0).any():
            raise _bad("guidance_scale must be 1: this model has no null class to guide with")
        seeds = df["seed"].fillna(0) if "seed" in df else pd.Series(range(len(df)), index=df.index)
        seeds = seeds.astype("int64").to_numpy()

        out = np.zeros((len(df), *self._image_shape()), dtype=np.uint8)
        for w in np.unique(guidance):
            idx = np.flatnonzero(guidance == w)
            for start in range(0, len(idx), batch_size):
                part = idx[start : start + batch_size]
                pipe = self.pipe.with_sampler(sampler)  # the scheduler is stateful: a fresh one per call
                images = pipe(
                    labels=torch.from_numpy(labels[part]),
                    seeds=[int(s) for s in seeds[part]],
                    num_inference_steps=steps,
                    guidance_scale=float(w),
                ).images
                out[part] = to_uint8(images)
        return out

    def _image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.pipe.image_shape
        return (h, w, c)


# Logged as "models from code": MLflow stores this file and, on load, takes the model set here,
# so loading a registered model unpickles nothing.
mlflow.models.set_model(DiffusionPyfunc())
