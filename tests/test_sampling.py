"""Sampling: per-image seeds make images independent of batching, guidance is one batched forward,
the objective conversions are exact inverses, every sampler runs and stays in range."""

from __future__ import annotations

import pytest
import torch

from diffaudit.config.schema import DiffusionCfg, ModelCfg
from diffaudit.diffusion.parameterization import eps_from_x0, to_x0_eps, training_target
from diffaudit.diffusion.sampling import generate, guided_output, sample, sample_seeds
from diffaudit.diffusion.schedulers import SAMPLERS, build_noise_scheduler, build_sampler
from diffaudit.models.unet import build_unet, null_class


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    cfg = ModelCfg(block_out_channels=[16, 32], layers_per_block=1, attention=[False, False], norm_num_groups=8,
                   dropout=0.0)
    return build_unet(cfg, image_size=8, channels=1, num_classes=3).eval()


def _sched_cfg(prediction_type: str = "epsilon") -> dict:
    cfg = DiffusionCfg(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    return dict(build_noise_scheduler(cfg).config)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_conversions_invert_the_training_target(prediction_type: str) -> None:
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    a = torch.tensor([0.9, 0.5, 0.1, 0.01])
    x_t = a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * noise
    out = training_target(x0, noise, a, prediction_type)
    x0_hat, eps_hat = to_x0_eps(out, x_t, a, prediction_type)
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, noise, atol=1e-4)
    assert torch.allclose(eps_from_x0(x0, x_t, a), noise, atol=1e-4)


def test_images_do_not_depend_on_the_batch_they_are_made_in(unet) -> None:
    labels = torch.tensor([0, 1, 2, 0, 1])
    seeds = sample_seeds(3, 5)
    sched = build_sampler("ddim", _sched_cfg())
    together = generate(unet, sched, labels, seeds, 4, 2.0, "epsilon", batch_size=5)
    apart = generate(unet, build_sampler("ddim", _sched_cfg()), labels, seeds, 4, 2.0, "epsilon", batch_size=2)
    assert torch.allclose(together, apart, atol=1e-5)
    again = generate(unet, build_sampler("ddim", _sched_cfg()), labels, seeds, 4, 2.0, "epsilon", batch_size=5)
    assert torch.equal(together, again)


def test_guidance_is_one_batched_forward(unet) -> None:
    calls: list[int] = []
    handle = unet.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    try:
        x = torch.randn(4, 1, 8, 8)
        labels = torch.tensor([0, 1, 2, 1])
        with torch.no_grad():
            guided, cond, uncond = guided_output(unet, x, torch.tensor(500), labels, null_class(unet), 3.0)
            plain, _, none = guided_output(unet, x, torch.tensor(500), labels, null_class(unet), 1.0)
    finally:
        handle.remove()
    assert calls == [8, 4]  # conditional and unconditional together, then conditional alone
    assert none is None and torch.allclose(plain, cond, atol=1e-5)
    assert torch.allclose(guided, uncond + 3.0 * (cond - uncond), atol=1e-5)


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_runs_in_range_and_reports_steps(unet, name: str) -> None:
    seen = []
    images = sample(unet, build_sampler(name, _sched_cfg()), torch.tensor([0, 2]), [1, 2], steps=5,
                    guidance_scale=2.0, null_class=null_class(unet), prediction_type="epsilon",
                    on_step=seen.append)
    assert images.shape == (2, 1, 8, 8) and images.abs().max() <= 1.0
    assert torch.isfinite(images).all()
    assert [s.index for s in seen] == list(range(len(seen))) and len(seen) >= 5
    # x0 clipped by every sampler (float32 rounding at large Euler sigmas: 1e-2)
    assert all(s.x0_pred.abs().max() <= 1.0 + 1e-2 for s in seen)


def test_unknown_sampler_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="ddpm, ddim, dpm_solver, euler"):
        build_sampler("heun", _sched_cfg())
