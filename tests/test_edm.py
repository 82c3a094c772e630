"""diffusion=edm (Karras et al. 2022): the preconditioning against the paper's formulas, training on the tiny
run (the loss falls), the export sampled by plain diffusers code, the sample stage and the explainability
trajectories on an EDM model, and the one-line errors for a sampler of the other family."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler, EDMDPMSolverMultistepScheduler, EDMEulerScheduler, UNet2DModel

from diffaudit.config.compose import compose_config
from diffaudit.config.schema import DiffusionCfg, ModelCfg
from diffaudit.data.store import load_meta, load_split
from diffaudit.diffusion import edm
from diffaudit.diffusion.pipeline import ClassConditionalPipeline
from diffaudit.diffusion.schedulers import build_noise_scheduler, build_sampler
from diffaudit.errors import ConfigError
from diffaudit.layout import Layout
from diffaudit.models.unet import build_unet
from diffaudit.training.diffusion_training import build_module
from diffaudit.utils.io import load_tensor_metadata, load_tensors
from tests.helpers.config import ROOT, TinyRun, pipeline_env, tiny_config, tiny_overrides

EDM = DiffusionCfg(family="edm")
TINY_UNET = ModelCfg(
    block_out_channels=[16, 32], layers_per_block=1, attention=[False, False], norm_num_groups=8, dropout=0.0
)


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """prepare -> evaluator -> train -> sample on the tiny config with diffusion=edm (sampler edm_euler)."""
    from pipelines import evaluator, prepare, sample, train

    root = tmp_path_factory.mktemp("edm_run")
    cfg = tiny_config(root, ["diffusion=edm"])
    with pipeline_env(root, "edm-session"):
        for stage in (prepare, evaluator, train, sample):
            stage.main(cfg)
    return TinyRun(root=root, cfg=cfg)


# -- the formulation -------------------------------------------------------------------------------------
def test_preconditioning_matches_the_papers_formulas() -> None:
    """Table 1 of Karras et al. at sigma_data = 0.5: known values at sigma = 0.5 (where c_skip = 1/2), and the
    same numbers as diffusers' EDM scheduler at every sigma of its grid."""
    sd, s = 0.5, torch.tensor([0.5], dtype=torch.float64)
    assert float(edm.c_skip(s, sd)) == pytest.approx(0.5)
    assert float(edm.c_out(s, sd)) == pytest.approx(0.25 / math.sqrt(0.5))  # sigma sd / sqrt(sigma^2 + sd^2)
    assert float(edm.c_in(s, sd)) == pytest.approx(1 / math.sqrt(0.5))
    assert float(edm.c_noise(s)) == pytest.approx(math.log(0.5) / 4)
    assert float(edm.loss_weight(s, sd)) == pytest.approx(8.0)  # (0.25 + 0.25) / 0.0625
    sigmas = torch.tensor([0.002, 0.1, 1.0, 10.0, 80.0], dtype=torch.float64)
    assert torch.allclose(edm.loss_weight(sigmas, sd), edm.c_out(sigmas, sd) ** -2)
    sched = edm.build_edm_scheduler(EDM)
    x, f = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.randn(2, 1, 4, 4, dtype=torch.float64)
    for sigma in sigmas:
        assert torch.allclose(sched.precondition_inputs(x, sigma), x * edm.c_in(sigma, sd))
        assert torch.allclose(sched.precondition_noise(sigma), edm.c_noise(sigma))
        d = edm.c_skip(sigma, sd) * x + edm.c_out(sigma, sd) * f
        assert torch.allclose(sched.precondition_outputs(x, f, sigma), d)


def test_the_loss_is_the_weighted_denoising_loss() -> None:
    """edm_loss (F against its effective target) equals lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2."""
    torch.manual_seed(0)
    unet = build_unet(TINY_UNET, 8, 1, 10).eval()
    x0, labels = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0, 3, 7, 10])
    sigmas = torch.tensor([0.01, 0.3, 2.0, 40.0])
    with torch.no_grad():
        got = edm.edm_loss(unet, x0, labels, EDM, torch.Generator().manual_seed(1), sigmas, reduce=False)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
        d, _ = edm.denoise(unet, x0 + sigmas.view(-1, 1, 1, 1) * noise, sigmas, labels, 0.5)
        want = edm.loss_weight(sigmas, 0.5) * (d - x0).pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(got, want, rtol=1e-4)


def test_training_sigmas_are_log_normal() -> None:
    s = edm.training_sigmas(50_000, -1.2, 1.2, generator=torch.Generator().manual_seed(0))
    assert float(s.log().mean()) == pytest.approx(-1.2, abs=0.02)
    assert float(s.log().std()) == pytest.approx(1.2, abs=0.02)


def test_the_vp_view_is_the_denoiser_on_the_vp_grid() -> None:
    """The audit's VP view of an EDM network: x_t = sqrt(a) x0 + sqrt(1 - a) eps gives D at sigma =
    sqrt((1 - a) / a) of x_t / sqrt(a), i.e. of x0 + sigma eps."""
    torch.manual_seed(0)
    unet = build_unet(TINY_UNET, 8, 1, 10).eval()
    vp = edm.vp_schedule()
    view = edm.VPView(unet, vp.alphas_cumprod, 0.5)
    x0, eps, labels = torch.rand(2, 1, 8, 8) * 2 - 1, torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    t = torch.tensor([100, 700])
    a = vp.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        got = view(a.sqrt() * x0 + (1 - a).sqrt() * eps, t, class_labels=labels).sample
        sigma = edm.vp_sigma(vp.alphas_cumprod[t]).float()
        want, _ = edm.denoise(unet, x0 + sigma.view(-1, 1, 1, 1) * eps, sigma, labels, 0.5)
    assert torch.allclose(got, want, atol=1e-4)


# -- the config ------------------------------------------------------------------------------------------
def test_diffusion_edm_composes_with_its_samplers_and_keeps_ddpm_configs_as_they_were(tmp_path) -> None:
    raw = compose_config(tiny_overrides(tmp_path, ["diffusion=edm"]), ROOT / "conf")
    assert raw["diffusion"]["family"] == "edm" and raw["sampler"]["name"] == "edm_euler"
    assert set(raw["eval"]["study"]["nfe"]) == {"edm_euler", "edm_dpm_solver"}
    assert all(10 <= n <= 35 for ns in raw["eval"]["study"]["nfe"].values() for n in ns)
    ddpm = compose_config(tiny_overrides(tmp_path), ROOT / "conf")["diffusion"]
    assert set(ddpm) == {"num_train_timesteps", "beta_schedule", "prediction_type"}
    dumped = DiffusionCfg(**ddpm).model_dump()  # the training config hash of every DDPM is unchanged
    assert dumped == ddpm


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["diffusion=edm", "sampler=ddim"], ["sampler.name=ddim", "diffusion.family='edm'"]),
        (["sampler=edm_euler"], ["sampler.name=edm_euler", "diffusion.family='ddpm'"]),
        (["diffusion=edm", "+diffusion.beta_schedule=linear"], ["beta_schedule", "sigma_data"]),
        (["diffusion=edm", "diffusion.family=score"], ["'score'", "ddpm, edm"]),
    ],
)
def test_a_sampler_or_key_of_the_other_family_is_refused_at_compose_time(tmp_path, overrides, names) -> None:
    with pytest.raises(ConfigError) as err:
        compose_config(tiny_overrides(tmp_path, overrides), ROOT / "conf")
    assert all(n in str(err.value) for n in names), str(err.value)


def test_a_sampler_of_the_other_family_is_a_one_line_error_naming_both() -> None:
    ddpm = dict(DDPMScheduler().config)
    edm_config = dict(edm.build_edm_scheduler(EDM).config) | {"_class_name": "EDMEulerScheduler"}
    with pytest.raises(ValueError) as err:
        build_sampler("edm_euler", ddpm)
    msg = str(err.value)
    assert "\n" not in msg and "'edm_euler'" in msg and "DDPM-trained" in msg and "DDPMScheduler" in msg
    with pytest.raises(ValueError) as err:
        build_sampler("ddim", edm_config)
    msg = str(err.value)
    assert "\n" not in msg and "'ddim'" in msg and "EDM-trained" in msg and "edm_euler, edm_dpm_solver" in msg
    assert isinstance(build_sampler("edm_dpm_solver", edm_config), EDMDPMSolverMultistepScheduler)


# -- training, export, sampling --------------------------------------------------------------------------
def test_edm_training_lowers_the_loss(edm_run) -> None:
    """The exported network's EDM loss on fixed training images, noise and sigmas is well below the same
    network's at initialisation (same seed)."""
    import lightning as L

    cfg, layout = edm_run.cfg, Layout.of(edm_run.cfg)
    meta = load_meta(layout.prepared)
    train = load_split(layout.prepared, "train")
    x0, labels = train.images[:128], train.labels[:128]
    L.seed_everything(cfg.seed, verbose=False)
    initial = build_module(cfg, meta, config_hash="").unet.eval()
    trained = UNet2DModel.from_pretrained(layout.diffusion / "unet").eval()

    def loss(unet: UNet2DModel) -> float:
        with torch.no_grad():
            return float(edm.edm_loss(unet, x0, labels, cfg.diffusion, torch.Generator().manual_seed(0)))

    before, after = loss(initial), loss(trained)
    print(f"EDM loss before {before:.3f}, after {cfg.train.max_steps} steps {after:.3f}")
    assert after < 0.7 * before


def test_the_export_samples_in_plain_diffusers(edm_run) -> None:
    """unet/ + scheduler/ load with diffusers alone; its documented loop (scale_model_input, UNet at the
    scheduler's timestep, step) samples, with either EDM scheduler."""
    folder = Layout.of(edm_run.cfg).diffusion
    unet = UNet2DModel.from_pretrained(folder / "unet").eval()
    for cls in (EDMEulerScheduler, EDMDPMSolverMultistepScheduler):
        sched = cls.from_pretrained(folder / "scheduler")
        assert sched.config.sigma_data == 0.5 and sched.config.sigma_max == 80.0
        sched.set_timesteps(12)
        gen = torch.Generator().manual_seed(0)
        side = unet.config.sample_size
        x = torch.randn(4, 1, side, side, generator=gen) * sched.init_noise_sigma
        labels = torch.tensor([0, 1, 2, 3])
        with torch.no_grad():
            for t in sched.timesteps:
                out = unet(sched.scale_model_input(x, t), t, class_labels=labels).sample
                x = sched.step(out, t, x).prev_sample
        assert x.shape == (4, 1, side, side) and torch.isfinite(x).all()
        assert float(x.abs().max()) < 3.0  # in the data's range, not the initial sigma_max = 80's


def test_the_sample_stage_on_an_edm_model(edm_run) -> None:
    layout = Layout.of(edm_run.cfg)
    samples = load_tensors(layout.samples)
    n = edm_run.cfg.sampler.num_per_class * 10
    side = edm_run.cfg.data.image_size
    assert samples["images"].shape == (n, 1, side, side) and float(samples["images"].abs().max()) <= 1.0
    assert load_tensor_metadata(layout.samples)["sampler"] == "edm_euler"
    assert samples["images"].std() > 0.1  # not a constant image


def test_both_edm_samplers_and_the_trajectories_through_the_pipeline(edm_run) -> None:
    """The pipeline samples an EDM model with both samplers at 10 and 35 NFE, and the explainability
    recorder sees x0 = D(x; sigma) at every sigma."""
    from diffaudit.audit.explain.trajectory import record_trajectories

    pipe = ClassConditionalPipeline.from_exported(Layout.of(edm_run.cfg).diffusion, "edm_euler")
    assert pipe.is_edm
    labels, seeds = torch.tensor([0, 5]), [11, 12]
    for name in ("edm_euler", "edm_dpm_solver"):
        for nfe in (10, 35):
            out = pipe.with_sampler(name)(
                labels=labels, seeds=seeds, num_inference_steps=nfe, guidance_scale=2.0
            )
            assert out.images.shape == (2, *pipe.image_shape) and torch.isfinite(out.images).all()
    traj = record_trajectories(pipe.with_sampler("edm_euler"), labels, seeds, 10, 2.0, 2)
    assert traj.x0.shape[:2] == (10, 2) and traj.guidance is not None
    sigmas = edm.vp_sigma(traj.alpha_bar)
    assert sigmas[0] == pytest.approx(80.0, rel=1e-4) and bool((sigmas[1:] < sigmas[:-1]).all())
    assert traj.step_name(0) == "sigma=80" and traj.subset(torch.tensor([1])).edm  # figures name sigma
    with pytest.raises(ValueError, match="EDM-trained"):
        pipe.with_sampler("ddpm")


def test_the_edm_noise_scheduler_is_what_the_module_saves() -> None:
    sched = build_noise_scheduler(EDM)
    assert isinstance(sched, EDMEulerScheduler) and sched.config.prediction_type == "epsilon"
    assert edm.is_edm_scheduler(dict(sched.config) | {"_class_name": "EDMEulerScheduler"})


def test_serving_an_edm_model(edm_run) -> None:
    """The served model loads with its family's sampler, samples the requested labels, and refuses a DDPM
    sampler with a 400 naming the allowed ones."""
    from types import SimpleNamespace

    import pandas as pd
    from mlflow.exceptions import MlflowException

    from diffaudit.tracking.pyfunc_model import DiffusionPyfunc

    model = DiffusionPyfunc()
    folder = str(Layout.of(edm_run.cfg).diffusion)
    model.load_context(
        SimpleNamespace(artifacts={"diffusion": folder}, model_config={"sampler": "edm_euler"})
    )
    rows = pd.DataFrame({"label": [1, 7], "seed": [0, 1]})
    out = model.predict(None, rows, {"steps": 4})
    assert out.shape[0] == 2 and out.dtype.name == "uint8"
    with pytest.raises(MlflowException, match="edm_euler, edm_dpm_solver"):
        model.predict(None, rows, {"steps": 4, "sampler": "ddim"})


@pytest.mark.slow
def test_the_later_stages_run_unchanged_on_an_edm_model(edm_run) -> None:
    """evaluate, sampler_study, explain and audit on the tiny EDM run: each writes its result, with finite
    numbers (explain's guidance maps are drawn at each step's own sigma), and membership runs on the VP
    view."""
    import json

    from pipelines import audit, evaluate, explain, sampler_study

    layout = Layout.of(edm_run.cfg)
    with pipeline_env(edm_run.root, "edm-session"):
        for stage in (evaluate, sampler_study, explain, audit):
            stage.main(edm_run.cfg)
    study = json.loads(layout.sampler_study.read_text())
    assert set(study["nfe_sweep"]) == {"edm_euler", "edm_dpm_solver"}
    assert {int(n) for n in study["nfe_sweep"]["edm_euler"]} == {10, 20, 35}
    text = layout.explain.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["guidance"]["mean_magnitude"] > 0
    membership = json.loads(layout.privacy.read_text())["membership"]
    assert membership["n_members"] > 0 and membership["n_nonmembers"] > 0
