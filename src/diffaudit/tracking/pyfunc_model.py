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
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from diffaudit.diffusion.schedulers import SAMPLERS, samplers_for, scheduler_config
from diffaudit.tracking import request_deadline

MAX_ROWS = 1024  # one request must not occupy a server for minutes
MAX_STEPS = 1000
# Work per request, images x steps: MAX_ROWS images at 20 steps, or 20 images at MAX_STEPS. Refused
# before any compute (the rows and steps caps alone let one request run 1024 x 1000 steps).
MAX_IMAGE_STEPS = MAX_ROWS * 20
MAX_BATCH = 1024


def signature(
    image_size: int, channels: int, steps: int, sampler: str, conditional: bool = True
) -> ModelSignature:
    """Input: one row per image; guidance_scale and seed may be left out (an unconditional model: `seed`
    alone, required). Output: (N, H, W, C) uint8.

    label and seed are whole numbers but typed `any`: MLflow casts a served request to the signature's
    types before predict() sees it, and a `long` column turned label 1.5 into 1 silently (`double` would
    refuse the ints a Python caller passes); predict() refuses anything but a whole number."""
    cols = (
        [
            ColSpec(AnyType(), "label"),
            ColSpec("double", "guidance_scale", required=False),
            ColSpec(AnyType(), "seed", required=False),
        ]
        if conditional
        else [ColSpec(AnyType(), "seed")]
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


def _int_param(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    """A whole-number param in [low, high]; absent (None) takes the default, but 0 is a value, not absent."""
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not float(value).is_integer():
        raise _bad(f"{name} must be a whole number in [{low}, {high}], got {value!r}")
    if not low <= int(value) <= high:
        raise _bad(f"{name} must be in [{low}, {high}], got {int(value)}")
    return int(value)


def _whole_numbers(column: pd.Series, name: str, allowed: str) -> np.ndarray:
    """int64 values of a column that holds whole numbers only (1.5 is refused, not truncated to 1)."""
    values = pd.to_numeric(column, errors="coerce").astype("float64").to_numpy()
    bad = ~np.isfinite(values) | (values != np.floor(values))
    if bad.any():
        raise _bad(f"{name} must be {allowed}, got {column[bad].tolist()[0]!r}")
    return values.astype("int64")


class DiffusionPyfunc(mlflow.pyfunc.PythonModel):
    """Class-conditional sampler over the exported EMA UNet (artifact `diffusion`, diffusers format).

    model_config carries what the rows leave out: class_names, guidance_scale, steps, sampler.
    """

    def load_context(self, context: Any) -> None:
        from diffaudit.diffusion.pipeline import ClassConditionalPipeline

        self.config: dict[str, Any] = dict(context.model_config or {})
        # The loaded pipeline's own scheduler is never used: predict() takes a fresh one per call.
        folder = Path(context.artifacts["diffusion"])
        self.pipe = ClassConditionalPipeline.from_exported(folder, samplers_for(scheduler_config(folder))[0])
        self.num_classes = self.pipe.num_classes

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        import torch

        from diffaudit.utils.images import to_uint8

        params = dict(params or {})
        steps = _int_param(params, "steps", int(self.config.get("steps", 20)), 1, MAX_STEPS)
        sampler = str(params.get("sampler") or self.config.get("sampler", "dpm_solver"))
        batch_size = _int_param(params, "batch_size", 64, 1, MAX_BATCH)
        if sampler not in SAMPLERS:
            raise _bad(f"sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
        family = samplers_for(dict(self.pipe.noise_scheduler.config))  # an EDM model's or a DDPM's
        if sampler not in family:
            raise _bad(f"sampler {sampler!r} is not one of this model's family: {', '.join(family)}")
        df = pd.DataFrame(model_input)
        if not 0 < len(df) <= MAX_ROWS:
            raise _bad(f"send between 1 and {MAX_ROWS} rows, got {len(df)}")
        if len(df) * steps > MAX_IMAGE_STEPS:
            raise _bad(
                f"{len(df)} images x {steps} steps = {len(df) * steps} image-steps; one request may ask "
                f"for at most {MAX_IMAGE_STEPS} (e.g. {MAX_ROWS} images at 20 steps): split it or use "
                "fewer steps"
            )
        if not self.pipe.is_conditional:
            if "label" in df.columns or "guidance_scale" in df.columns:
                raise _bad("this model is unconditional: send rows of `seed` only (one image per row)")
            if "seed" not in df.columns:
                raise _bad("input needs a `seed` column (one image per row)")
            df = df.assign(label=-1)
        elif "label" not in df.columns:
            raise _bad("input needs a `label` column (class ids)")
        classes = self.config.get("class_names", list(range(self.num_classes)))
        class_ids = f"a class id in [0, {self.num_classes - 1}]; classes: {classes}"
        labels = _whole_numbers(df["label"], "label", class_ids)
        if self.pipe.is_conditional and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise _bad(f"label must be {class_ids}")
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
        if not (np.isfinite(guidance) & (guidance >= 0)).all():
            bad = guidance[~(np.isfinite(guidance) & (guidance >= 0))][0]
            raise _bad(f"guidance_scale must be a finite number >= 0, got {bad}")
        if not self.pipe.guides and (guidance != 1.0).any():
            raise _bad("guidance_scale must be 1: this model has no null class to guide with")
        seeds = df["seed"].fillna(0) if "seed" in df else pd.Series(range(len(df)), index=df.index)
        seeds = _whole_numbers(seeds, "seed", "a whole number in [0, 2**32)")
        if seeds.min() < 0 or seeds.max() >= 2**32:
            raise _bad(
                f"seed must be a whole number in [0, 2**32), got {seeds[(seeds < 0) | (seeds >= 2**32)][0]}"
            )

        out = np.zeros((len(df), *self._image_shape()), dtype=np.uint8)
        try:
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
                        on_step=lambda _: request_deadline.check(),  # a timed-out request stops here
                    ).images
                    out[part] = to_uint8(images)
        except request_deadline.RequestStopped as stop:
            # 503 while the server stops; past the timeout the client already has MLflow's 504.
            raise MlflowException(f"request abandoned: {stop}", error_code=TEMPORARILY_UNAVAILABLE) from stop
        return out

    def _image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.pipe.image_shape
        return (h, w, c)


# Logged as "models from code": MLflow stores this file and, on load, takes the model set here,
# so loading a registered model unpickles nothing.
mlflow.models.set_model(DiffusionPyfunc())
