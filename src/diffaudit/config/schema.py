"""Typed schema of the composed config (conf/ -> params.yaml), validated at the start of every stage.

A bad key, type or value fails fast with the dotted key and what is allowed, before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from diffaudit.config.audit_schema import AuditCfg
from diffaudit.config.eval_schema import EvalCfg, EvaluatorCfg, SamplerCfg
from diffaudit.config.explain_schema import ExplainCfg
from diffaudit.config.release_schema import ReleaseCfg
from diffaudit.errors import ConfigError

__all__ = ["AuditCfg", "EvalCfg", "EvaluatorCfg", "ExplainCfg", "SamplerCfg"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BiasCfg(_Strict):
    """Keep only `keep_fraction` of one attribute group within `classes` (a deliberately skewed set)."""

    attribute: str
    group: int = Field(ge=0)
    keep_fraction: float = Field(gt=0.0, le=1.0)
    classes: list[int] = Field(min_length=1)


class DataCfg(_Strict):
    name: Literal["digits", "mnist", "fashion_mnist", "cifar10", "celeba", "image_folder"]
    root: str | None = None
    image_size: int = Field(ge=4, le=512)
    channels: Literal[1, 3]
    val_fraction: float = Field(gt=0.0, lt=0.5)
    test_fraction: float = Field(gt=0.0, lt=0.5)
    max_per_class: int | None = Field(default=None, ge=2)
    label_attribute: str | None = None
    attributes: list[str] | None = None
    csv: str = "attributes.csv"
    bias: BiasCfg | None = None
    # The image_size conf/data asked for, where an imported model's size replaced it (set at compose time,
    # models/imported.py `fit_data_to_model`, so the report can say the dataset was resized); else null.
    requested_image_size: int | None = None

    @model_validator(mode="after")
    def _root_needed(self) -> DataCfg:
        if self.name != "digits" and not self.root:
            raise ValueError(f"data.root is required for data.name={self.name!r} (a local folder)")
        return self


class ModelCfg(_Strict):
    """The diffusion model: trained here from this architecture (`source: trained`), or a diffusers
    folder trained elsewhere (`source: pretrained`, `path`), audited without training; then the
    architecture keys are unused and the folder's own configs say what it is."""

    source: Literal["trained", "pretrained"] = "trained"
    # pretrained: the model folder; trained: the architecture's code. A DVC dependency of train either
    # way, so a changed folder reruns what depends on the model.
    path: str = "src/diffaudit/models/unet.py"
    block_out_channels: list[int] = Field(min_length=1)
    layers_per_block: int = Field(ge=1)
    attention: list[bool]
    norm_num_groups: int = Field(ge=1)
    dropout: float = Field(ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _shapes(self) -> ModelCfg:
        if len(self.attention) != len(self.block_out_channels):
            raise ValueError("model.attention needs one flag per entry of model.block_out_channels")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(
                    f"model.block_out_channels entry {c} is not divisible by model.norm_num_groups"
                )
        return self


DIFFUSION_FAMILIES = ("ddpm", "edm")
_DDPM_KEYS = ("num_train_timesteps", "beta_schedule", "prediction_type")
_EDM_KEYS = ("sigma_min", "sigma_max", "sigma_data", "p_mean", "p_std", "rho")


class DiffusionCfg(_Strict):
    """The diffusion family and its settings: `ddpm` (a discrete VP noise schedule, diffusers'
    DDPMScheduler; the default, so configs without `family` stay DDPM) or `edm` (Karras et al. 2022:
    sigma-parameterized, preconditioned denoiser; diffusion/edm.py). Each family takes only its own keys."""

    family: Literal["ddpm", "edm"] = "ddpm"
    # ddpm
    num_train_timesteps: int | None = Field(default=None, ge=10, le=10000)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] | None = None
    prediction_type: Literal["epsilon", "v_prediction", "sample"] | None = None
    # edm (defaults: the paper's Table 1)
    sigma_min: float | None = Field(default=None, gt=0.0)
    sigma_max: float | None = Field(default=None, gt=0.0)
    sigma_data: float | None = Field(default=None, gt=0.0)
    p_mean: float | None = None  # log-normal training sigmas: ln(sigma) ~ N(p_mean, p_std^2)
    p_std: float | None = Field(default=None, gt=0.0)
    rho: float | None = Field(default=None, gt=0.0)  # the sampling grid's Karras exponent

    @model_validator(mode="before")
    @classmethod
    def _family_keys(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        family = raw.get("family", "ddpm")
        if family not in DIFFUSION_FAMILIES:
            raise ValueError(
                f"diffusion.family {family!r} is unknown; allowed: {', '.join(DIFFUSION_FAMILIES)}"
            )
        own, other = (_DDPM_KEYS, _EDM_KEYS) if family == "ddpm" else (_EDM_KEYS, _DDPM_KEYS)
        stray = [k for k in other if raw.get(k) is not None]
        if stray:
            raise ValueError(
                f"diffusion.family={family!r} does not take {', '.join(stray)}; its keys: {', '.join(own)}"
            )
        if family == "edm":
            return EDM_DEFAULTS | {k: v for k, v in raw.items() if v is not None}
        missing = [k for k in _DDPM_KEYS if raw.get(k) is None]
        if missing:
            raise ValueError(f"diffusion.family='ddpm' needs {', '.join(missing)}")
        return raw

    @model_validator(mode="after")
    def _sigma_range(self) -> DiffusionCfg:
        if self.family == "edm" and self.sigma_min >= self.sigma_max:
            raise ValueError(f"diffusion.sigma_min={self.sigma_min} must be below sigma_max={self.sigma_max}")
        return self

    @model_serializer(mode="wrap")
    def _own_keys(self, handler: Any) -> dict[str, Any]:
        # Only the family's own keys: a DDPM config dumps exactly as before EDM existed (the same training
        # config hash, the same checkpoints resumed).
        out = handler(self)
        if self.family == "ddpm":
            return {k: out[k] for k in _DDPM_KEYS}
        return {"family": "edm"} | {k: out[k] for k in _EDM_KEYS}

    @property
    def is_edm(self) -> bool:
        return self.family == "edm"


EDM_DEFAULTS: dict[str, Any] = {
    "family": "edm",
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    "sigma_data": 0.5,
    "p_mean": -1.2,
    "p_std": 1.2,
    "rho": 7.0,
}


class TrainCfg(_Strict):
    max_steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0.0)
    weight_decay: float = Field(ge=0.0)
    warmup_steps: int = Field(ge=0)
    ema_decay: float = Field(ge=0.0, lt=1.0)
    grad_clip: float = Field(ge=0.0)
    cond_drop_prob: float = Field(ge=0.0, lt=1.0)
    checkpoint_every_n_steps: int = Field(ge=1)
    log_every_n_steps: int = Field(ge=1)
    num_workers: int = Field(ge=0)
    scale_lr: bool = False
    # A checkpoint to start from (say, copied from another machine) when models/checkpoints holds none of
    # this config's; it must come from the same model/diffusion/data config, else the stage refuses it.
    resume_from: str | None = None


class TrainerCfg(_Strict):
    accelerator: Literal["cpu", "gpu", "auto"]
    devices: int | Literal["auto"] = 1
    num_nodes: int = Field(ge=1)
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp"]
    # "auto": bf16 autocast where the hardware computes bf16 natively, else fp32 (training/precision.py)
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"]

    @field_validator("devices")
    @classmethod
    def _some_devices(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"must be >= 1 or 'auto' (got {v})")
        return v


class TrackingCfg(_Strict):
    uri: str
    experiment_name: str = Field(min_length=1)
    registered_model_name: str = Field(min_length=1)


class PathsCfg(_Strict):
    data: str
    models: str
    samples: str
    metrics: str
    plots: str
    reports: str


class Config(_Strict):
    seed: int = Field(ge=0, lt=2**32)  # Lightning's seed_everything takes 32 bits
    data: DataCfg
    model: ModelCfg
    diffusion: DiffusionCfg
    train: TrainCfg
    trainer: TrainerCfg
    sampler: SamplerCfg
    eval: EvalCfg
    explain: ExplainCfg
    audit: AuditCfg
    release: ReleaseCfg = Field(default_factory=ReleaseCfg)
    tracking: TrackingCfg
    paths: PathsCfg

    @model_validator(mode="after")
    def _image_divisible(self) -> Config:
        if self.model.source == "pretrained":
            return self
        levels = len(self.model.block_out_channels) - 1
        if self.data.image_size % (2**levels):
            raise ValueError(
                f"data.image_size={self.data.image_size} cannot be halved {levels} times by the UNet "
                f"(model.block_out_channels has {levels + 1} levels): use a multiple of {2**levels}"
            )
        return self

    @model_validator(mode="after")
    def _samplers_of_the_family(self) -> Config:
        """An EDM model samples only with the EDM samplers, a DDPM one only with the others: caught at
        compose time, naming both, not after the pipeline has trained."""
        if self.model.source == "pretrained":
            return self  # the imported folder's scheduler says its family: checked when it is sampled
        family = self.diffusion.family
        named = {"sampler.name": self.sampler.name}
        named |= {f"eval.study.nfe.{k}": k for k in self.eval.study.nfe}
        if self.eval.study.guidance.sampler is not None:
            named["eval.study.guidance.sampler"] = self.eval.study.guidance.sampler
        wrong = [
            f"{key}={name}" for key, name in named.items() if name.startswith("edm_") != (family == "edm")
        ]
        if wrong:
            own = "edm_euler, edm_dpm_solver" if family == "edm" else "ddpm, ddim, dpm_solver, euler"
            raise ValueError(
                f"{', '.join(wrong)}: not a sampler of diffusion.family={family!r}; its samplers: {own}"
            )
        return self

    @model_validator(mode="after")
    def _attacks_within_the_schedule(self) -> Config:
        """Membership inference attacks the trained model's own schedule: caught at compose time, not
        after the pipeline has trained."""
        m, steps = self.audit.membership, self.diffusion.num_train_timesteps
        if self.model.source == "pretrained":
            return self  # the imported model's own schedule: checked when it is imported
        if self.diffusion.is_edm:
            return self  # EDM has no discrete timesteps: the attacks run on a VP grid (diffusion/edm.py)
        late = sorted(t for t in {*m.timesteps, *m.pia_timesteps} if t >= steps)
        if m.enabled and late:
            raise ValueError(
                f"audit.membership timesteps {late} are not below diffusion.num_train_timesteps={steps}"
            )
        return self


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not in the schema)"
        got = e.get("input")
        shown = (
            "" if e["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        )
        lines.append(f"  {key}: {msg}{shown}")
    return "invalid config:\n" + "\n".join(lines)


def validate_config(raw: dict[str, Any]) -> Config:
    """Validate a composed config dict; raise ConfigError naming every bad key and what is allowed."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def load_params(path: str | Path = "params.yaml") -> Config:
    """Read and validate params.yaml, the composed config every stage reads."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: compose it first with `make params`")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} does not hold a mapping")
    return validate_config(raw)
