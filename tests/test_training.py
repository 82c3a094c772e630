"""Diffusion training on the tiny run: checkpoints carry EMA and optimizer state, the export loads
with diffusers, resume continues from the last step, a config mismatch is caught."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffaudit.data.store import load_meta, load_split
from diffaudit.errors import CheckpointMismatchError
from diffaudit.models.unet import load_exported
from diffaudit.training.diffusion_training import (
    explicit_resume,
    resume_path,
    train_diffusion,
    training_config_hash,
)


def test_checkpoint_has_ema_optimizer_and_config_hash(tiny_run) -> None:
    last = tiny_run.root / "models" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == tiny_run.cfg.train.max_steps
    assert ckpt["optimizer_states"] and ckpt["ema"]["shadow_params"]
    meta = load_meta(tiny_run.root / "data" / "prepared")
    assert ckpt["diffaudit_config_hash"] == training_config_hash(tiny_run.cfg, meta)
    # Decay 0 (the default: the annealed raw weights are exported) makes the EMA a copy of the raw
    # weights; any other decay lags them (benchmarks/ema_study.py's test trains one with decay 0.9).
    raw = [v for k, v in ckpt["state_dict"].items() if k.startswith("unet.")]
    same = all(torch.equal(a, b) for a, b in zip(raw, ckpt["ema"]["shadow_params"], strict=False))
    assert same == (tiny_run.cfg.train.ema_decay == 0.0)


def test_export_is_diffusers_format_with_safetensors(tiny_run) -> None:
    model_dir = tiny_run.root / "models" / "diffusion"
    assert (model_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    unet = UNet2DModel.from_pretrained(model_dir / "unet")
    sched = DDPMScheduler.from_pretrained(model_dir / "scheduler")
    assert unet.config.num_class_embeds == 11  # 10 digits + the null class
    assert sched.config.prediction_type == tiny_run.cfg.diffusion.prediction_type
    loaded, noise_scheduler = load_exported(model_dir)
    assert noise_scheduler.config.num_train_timesteps == tiny_run.cfg.diffusion.num_train_timesteps
    assert not loaded.training


def _with_train(cfg, **train):
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=train)})


def test_resume_from_continues_from_the_last_step(tiny_run, tmp_path) -> None:
    """Training on to more steps is explicit: train.resume_from names the checkpoint (a changed max_steps
    never resumes by itself, since it changes the LR schedule and so the weights)."""
    import shutil

    ckpt_dir = tmp_path / "checkpoints"
    shutil.copytree(tiny_run.root / "models" / "checkpoints", ckpt_dir)
    data = tiny_run.root / "data" / "prepared"
    meta = load_meta(data)
    named = tiny_run.root / "models" / "checkpoints" / "last.ckpt"
    more = _with_train(tiny_run.cfg, max_steps=40, resume_from=str(named))
    module, trainer = train_diffusion(
        more, load_split(data, "train"), load_split(data, "val"), meta, ckpt_dir, progress=False
    )
    assert trainer.global_step == 40  # 30 from the checkpoint, then 10 more: not 40 from scratch
    assert module.ema.optimization_step == 40  # EMA continued from its saved state


def test_a_changed_seed_or_weight_setting_trains_afresh(tiny_run, tmp_path, capsys) -> None:
    """Red team: `seed=7 train.lr=0.0005` after a finished run used to "resume" it and train 0 steps."""
    import shutil

    from diffaudit.training.diffusion_training import weights_config

    ckpt_dir = tmp_path / "checkpoints"
    shutil.copytree(tiny_run.root / "models" / "checkpoints", ckpt_dir)
    meta = load_meta(tiny_run.root / "data" / "prepared")
    expected = training_config_hash(tiny_run.cfg, meta)
    same = weights_config(_with_train(tiny_run.cfg, checkpoint_every_n_steps=7, log_every_n_steps=3))
    assert resume_path(ckpt_dir, expected, weights=same) == ckpt_dir / "last.ckpt"  # not weight settings
    for changed, said in (
        (tiny_run.cfg.model_copy(update={"seed": 7}), "seed: 42 -> 7"),
        (_with_train(tiny_run.cfg, lr=0.0005), "train.lr: 0.001 -> 0.0005"),
        (_with_train(tiny_run.cfg, max_steps=31), "train.max_steps: 30 -> 31"),
    ):
        shutil.copytree(tiny_run.root / "models" / "checkpoints", ckpt_dir, dirs_exist_ok=True)
        assert resume_path(ckpt_dir, expected, weights=weights_config(changed)) is None
        assert said in capsys.readouterr().out and not ckpt_dir.exists()


def test_a_changed_checkpoint_interval_resumes_into_last_ckpt(tiny_run, tmp_path) -> None:
    """Red team: after `train.checkpoint_every_n_steps` changed, Lightning wrote last-v1.ckpt beside a stale
    last.ckpt and the next resume loaded the stale one."""
    import lightning as L
    import pytest

    class Killed(RuntimeError):
        pass

    class KillAt(L.Callback):
        def on_train_batch_start(self, trainer, *args) -> None:
            if trainer.global_step == 20:
                raise Killed

    data = tiny_run.root / "data" / "prepared"
    meta, train, val = load_meta(data), load_split(data, "train"), load_split(data, "val")
    ckpt_dir = tmp_path / "checkpoints"
    first = _with_train(tiny_run.cfg, checkpoint_every_n_steps=10)
    with pytest.raises(Killed):
        train_diffusion(first, train, val, meta, ckpt_dir, progress=False, extra_callbacks=[KillAt()])
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == 20
    again = _with_train(tiny_run.cfg, checkpoint_every_n_steps=15)
    _, trainer = train_diffusion(again, train, val, meta, ckpt_dir, progress=False)
    assert trainer.global_step == 30
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"] == 30
    assert not list(ckpt_dir.glob("last-v*.ckpt"))


def test_checkpoint_from_another_config_is_detected(tiny_run, tmp_path) -> None:
    import shutil

    import pytest

    ckpt_dir = tmp_path / "checkpoints"
    shutil.copytree(tiny_run.root / "models" / "checkpoints", ckpt_dir)
    with pytest.raises(CheckpointMismatchError, match="different model"):
        resume_path(ckpt_dir, "another-hash", strict=True)
    assert resume_path(ckpt_dir, "another-hash") is None  # not strict: stale checkpoints cleared
    assert not ckpt_dir.exists()


def test_explicit_resume_refuses_a_file_that_is_not_a_checkpoint(tmp_path) -> None:
    import pytest

    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"\x80\x04 truncated")
    with pytest.raises(CheckpointMismatchError, match="not a readable checkpoint"):
        explicit_resume(bad, "any-hash")
    with pytest.raises(FileNotFoundError, match="resume_from"):
        explicit_resume(tmp_path / "missing.ckpt", "any-hash")


def test_evaluator_round_trips_in_diffusers_format(tmp_path) -> None:
    """save_pretrained is byte-stable for the same weights (DVC hashes the folder); from_pretrained gives
    the same logits, in eval mode, with the heads in the data's attribute order (not the JSON's sorted
    one)."""
    import pytest

    from diffaudit.models.evaluator import Evaluator

    torch.manual_seed(0)
    model = Evaluator(1, 3, {"zeta": 2, "alpha": 3}, width=4).eval()
    for name in ("a", "b"):
        model.save_pretrained(tmp_path / name, safe_serialization=True)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    loaded = Evaluator.from_pretrained(tmp_path / "a", use_safetensors=True)
    assert not loaded.training and list(loaded.attribute_heads) == ["zeta", "alpha"]
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        want, got = model(x), loaded(x)
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(FileNotFoundError, match="run the evaluator stage first"):
        Evaluator.from_pretrained(tmp_path / "missing", use_safetensors=True)


def test_an_old_format_evaluator_folder_is_a_one_line_error(tmp_path) -> None:
    """A folder written before the diffusers format (config.json beside model.safetensors) names the
    missing weights file and the stage to run, instead of diffusers' OSError."""
    import pytest

    from diffaudit.models.evaluator import Evaluator

    old = tmp_path / "evaluator"
    old.mkdir()
    (old / "config.json").write_text('{"channels": 1, "num_classes": 3, "attribute_sizes": {}, "width": 4}')
    (old / "model.safetensors").write_bytes(b"")
    with pytest.raises(
        FileNotFoundError, match=r"diffusion_pytorch_model\.safetensors not found: run the evaluator"
    ):
        Evaluator.from_pretrained(old, use_safetensors=True)


def test_the_evaluator_fingerprint_ignores_only_diffusers_bookkeeping(tmp_path) -> None:
    import json

    from diffaudit.models.evaluator import Evaluator
    from diffaudit.models.export import model_fingerprint

    torch.manual_seed(0)
    Evaluator(1, 3, {"a": 2}, width=4).save_pretrained(tmp_path / "e", safe_serialization=True)
    before = model_fingerprint(tmp_path / "e")
    cfg_path = tmp_path / "e" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(cfg | {"_diffusers_version": "9.9.9"}))
    assert model_fingerprint(tmp_path / "e") == before  # a library upgrade rewrote its version stamp
    cfg_path.write_text(json.dumps(cfg | {"width": 8}))
    assert model_fingerprint(tmp_path / "e") != before  # another architecture
    torch.manual_seed(1)
    cfg_path.write_text(json.dumps(cfg))
    Evaluator(1, 3, {"a": 2}, width=4).save_pretrained(tmp_path / "e", safe_serialization=True)
    assert model_fingerprint(tmp_path / "e") != before  # other weights
