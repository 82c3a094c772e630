"""trainer.precision: auto (issue 19; opt-in, fp32 is the default): bf16 autocast where the hardware
computes bf16 natively, fp32 elsewhere; an explicit precision is kept; the resolved one is what a
checkpoint records."""

from __future__ import annotations

import pytest
import torch

from diffaudit.config.schema import TrainerCfg
from diffaudit.training.precision import native_bf16, resolve_precision


def _trainer(precision: str, accelerator: str = "cpu") -> TrainerCfg:
    return TrainerCfg(accelerator=accelerator, devices=1, num_nodes=1, strategy="auto", precision=precision)


def test_explicit_precision_is_kept() -> None:
    for p in ("32-true", "bf16-mixed", "16-mixed", "bf16-true"):
        assert resolve_precision(_trainer(p)) == p


def test_auto_is_bf16_exactly_where_the_cpu_has_native_bf16() -> None:
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert native_bf16("cpu") == native
    assert resolve_precision(_trainer("auto")) == ("bf16-mixed" if native else "32-true")


def test_auto_on_a_gpu_request_without_one_is_fp32() -> None:
    if torch.cuda.is_available():
        assert resolve_precision(_trainer("auto", "gpu")) in ("bf16-mixed", "32-true")
    else:
        assert resolve_precision(_trainer("auto", "gpu")) == "32-true"


def test_the_checkpoint_records_the_resolved_precision(tiny_run) -> None:
    from diffaudit.training.diffusion_training import weights_config

    ckpt = torch.load(tiny_run.root / "models" / "checkpoints" / "last.ckpt", weights_only=True)
    recorded = ckpt["diffaudit_weights_config"]["trainer"]["precision"]
    assert (
        recorded
        == weights_config(tiny_run.cfg)["trainer"]["precision"]
        == resolve_precision(tiny_run.cfg.trainer)
    )
    assert recorded != "auto"


@pytest.mark.parametrize("precision", ["32-true", "auto"])
def test_training_is_deterministic_by_seed_at_either_precision(tiny_run, tmp_path, precision: str) -> None:
    """fp32 (the default) and bf16 autocast (`auto` where native) both train deterministically per seed on
    one machine."""
    from diffaudit.data.store import load_meta, load_split
    from diffaudit.training.diffusion_training import train_diffusion

    data = tiny_run.root / "data" / "prepared"
    cfg = tiny_run.cfg.model_copy(
        update={
            "train": tiny_run.cfg.train.model_copy(update={"max_steps": 6}),
            "trainer": tiny_run.cfg.trainer.model_copy(update={"precision": precision}),
        }
    )
    weights = []
    for run in ("a", "b"):
        module, _ = train_diffusion(
            cfg,
            load_split(data, "train"),
            load_split(data, "val"),
            load_meta(data),
            tmp_path / run,
            progress=False,
        )
        weights.append({k: v.clone() for k, v in module.unet.state_dict().items()})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
