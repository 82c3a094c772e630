"""Samplers clip their x0-prediction (Euler included), and the sampler study stage writes its table
and plots on the tiny pipeline run."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from diffaudit.config.eval_schema import GuidanceSweepCfg, SamplerCfg, StudyCfg
from diffaudit.diffusion.pipeline import ClassConditionalPipeline
from diffaudit.diffusion.sampling import StepInfo
from diffaudit.diffusion.schedulers import (
    DDPM_SAMPLERS,
    EDM_SAMPLERS,
    build_noise_scheduler,
    build_sampler,
)
from diffaudit.metrics.features import single_thread
from diffaudit.metrics.sampler_study import StudyPoint, plan
from diffaudit.results import SamplerStudyResult, read_result
from diffaudit.utils.io import read_json


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: on a busy 2-core machine two threads' spin-waits make small ops 10x slower."""
    with single_thread():
        yield


class ExplodingUNet(torch.nn.Module):
    """A stand-in denoiser whose output is huge, so an unclipped x0-prediction would be far outside [-1,
    1]."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(in_channels=1, sample_size=4, num_class_embeds=3)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=torch.full_like(x, -50.0) + self.w)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", DDPM_SAMPLERS)
def test_every_sampler_clips_its_x0_prediction(name: str, prediction_type: str) -> None:
    from diffaudit.config.schema import DiffusionCfg

    noise = build_noise_scheduler(
        DiffusionCfg(
            num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type
        )
    )
    pipe = ClassConditionalPipeline.from_unet(ExplodingUNet(), noise, name)
    steps, out = _draw(pipe, seeds=[1, 2], steps=6)
    assert len(steps) == 6 and torch.isfinite(out).all()
    for s in steps:  # Euler's own x0 = x - sigma * eps is float32 at sigma ~ 1e3 here: rounding ~ 1e-4
        assert s.x0_pred.abs().max() <= 1.0 + 1e-3, (name, s.index, float(s.x0_pred.abs().max()))


def _draw(
    pipe: ClassConditionalPipeline, *, seeds: list[int], steps: int
) -> tuple[list[StepInfo], torch.Tensor]:
    """Two images (classes 0 and 1) at guidance 2, with every step the pipeline reports."""
    seen: list[StepInfo] = []
    out = pipe(
        labels=torch.tensor([0, 1]),
        seeds=seeds,
        num_inference_steps=steps,
        guidance_scale=2.0,
        on_step=seen.append,
    ).images
    return seen, out


class OracleUNet(ExplodingUNet):
    """The exact denoiser of a point mass at `target`: every x0-prediction is the target itself."""

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str, target: float) -> None:
        super().__init__()
        self.a, self.prediction_type, self.target = alphas_cumprod, prediction_type, target

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> SimpleNamespace:
        # Euler steps at fractional timesteps, its sigma linearly interpolated: do the same.
        sigma = ((1 - self.a) / self.a).sqrt().double()
        lo = t.double().floor().long().clamp(max=len(sigma) - 2)
        s = sigma[lo] + (t.double() - lo) * (sigma[lo + 1] - sigma[lo])
        a = (1 / (s**2 + 1)).reshape(-1, 1, 1, 1).to(x.dtype)
        eps = (x - a.sqrt() * self.target) / (1 - a).sqrt()
        out = eps if self.prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * self.target
        return SimpleNamespace(sample=out)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", DDPM_SAMPLERS)
def test_every_sampler_lands_on_the_data_with_the_exact_denoiser(name: str, prediction_type: str) -> None:
    from diffaudit.config.schema import DiffusionCfg

    noise = build_noise_scheduler(
        DiffusionCfg(
            num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type
        )
    )
    unet = OracleUNet(noise.alphas_cumprod, prediction_type, target=0.4)
    pipe = ClassConditionalPipeline.from_unet(unet, noise, name)
    steps, out = _draw(pipe, seeds=[3, 4], steps=8)
    assert torch.allclose(out, torch.full_like(out, 0.4), atol=2e-3), (name, float((out - 0.4).abs().max()))
    for s in steps:  # the x0-prediction the explainability audit films is the data at every step
        # (to float32 rounding: Euler's x0 = x - sigma * eps with x ~ 5e4 at sigma ~ 2e4 in its first step)
        assert torch.allclose(s.x0_pred, torch.full_like(s.x0_pred, 0.4), atol=1e-2), (name, s.index)


class EDMOracleUNet(ExplodingUNet):
    """The exact EDM network of a point mass at `target`: F = (target - c_skip x) / c_out, so D = target
    (x recovered from F's input c_in x, sigma from the timestep c_noise = ln(sigma) / 4)."""

    def __init__(self, target: float, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.target, self.sd = target, sigma_data

    def forward(self, x_in: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> SimpleNamespace:
        from diffaudit.diffusion import edm

        sigma = (4 * t.double()).exp().reshape(-1, 1, 1, 1)
        x = x_in.double() / edm.c_in(sigma, self.sd)
        out = (self.target - edm.c_skip(sigma, self.sd) * x) / edm.c_out(sigma, self.sd)
        return SimpleNamespace(sample=out.to(x_in.dtype))


def _edm_noise():
    from diffaudit.config.schema import DiffusionCfg

    return build_noise_scheduler(DiffusionCfg(family="edm"))


@pytest.mark.parametrize("name", EDM_SAMPLERS)
def test_every_edm_sampler_clips_its_x0_prediction(name: str) -> None:
    pipe = ClassConditionalPipeline.from_unet(ExplodingUNet(), _edm_noise(), name)
    steps, out = _draw(pipe, seeds=[1, 2], steps=6)
    assert len(steps) == 6 and torch.isfinite(out).all()
    assert all(s.x0_pred.abs().max() <= 1.0 + 1e-3 for s in steps), name


@pytest.mark.parametrize("name", EDM_SAMPLERS)
def test_every_edm_sampler_lands_on_the_data_with_the_exact_denoiser(name: str) -> None:
    pipe = ClassConditionalPipeline.from_unet(EDMOracleUNet(target=0.4), _edm_noise(), name)
    steps, out = _draw(pipe, seeds=[3, 4], steps=10)
    assert torch.allclose(out, torch.full_like(out, 0.4), atol=2e-3), (name, float((out - 0.4).abs().max()))
    sigmas = pipe.scheduler.sigmas
    for s in steps:  # D is the data at every sigma, as the explainability audit films it ...
        assert torch.allclose(s.x0_pred, torch.full_like(s.x0_pred, 0.4), atol=1e-2), (name, s.index)
        # ... and the passes are the noise (x - D) / sigma of the step's own sigma
        assert torch.allclose(s.eps_cond, (s.x_t - 0.4) / sigmas[s.index], atol=1e-3), (name, s.index)


def test_euler_is_built_for_the_epsilon_it_is_handed() -> None:
    from diffaudit.config.schema import DiffusionCfg

    train = dict(
        build_noise_scheduler(
            DiffusionCfg(num_train_timesteps=100, beta_schedule="linear", prediction_type="v_prediction")
        ).config
    )
    assert build_sampler("euler", train).config.prediction_type == "epsilon"
    assert build_sampler("ddim", train).config.prediction_type == "v_prediction"


def test_study_plan_fills_nulls_from_the_sampler_group_and_shares_points() -> None:
    study = StudyCfg(
        num_per_class=2,
        nfe={"ddim": [20, 10, 10], "euler": [5]},
        guidance=GuidanceSweepCfg(scales=[4.0, 1.0, 2.0]),
    )
    sampler = SamplerCfg(name="ddim", steps=10, guidance_scale=2.0, eta=0.0, num_per_class=5, batch_size=8)
    nfe, guidance = plan(study, sampler)
    assert nfe == [StudyPoint("ddim", 10, 2.0), StudyPoint("ddim", 20, 2.0), StudyPoint("euler", 5, 2.0)]
    assert guidance == [StudyPoint("ddim", 10, w) for w in (1.0, 2.0, 4.0)]
    assert len(dict.fromkeys(nfe + guidance)) == 5  # ddim at 10 steps, w=2 is sampled once


def test_sampler_study_stage_writes_table_and_plots(
    tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines import sampler_study

    monkeypatch.setenv("DIFFAUDIT_PIPELINE_ID", "tiny-session")
    monkeypatch.setenv("DIFFAUDIT_PROGRESS", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_run.cfg
    study = StudyCfg(
        num_per_class=4,
        nfe={"ddpm": [2], "ddim": [2, 3], "dpm_solver": [2], "euler": [2]},
        guidance_scale=2.0,  # the NFE sweep's, whatever the default sampler's
        guidance=GuidanceSweepCfg(sampler="ddim", nfe=2, scales=[1.0, 2.0]),
    )
    cfg = cfg.model_copy(
        update={
            "eval": cfg.eval.model_copy(update={"study": study}),
            "paths": cfg.paths.model_copy(
                update={"metrics": str(tmp_path / "metrics"), "plots": str(tmp_path / "plots")}
            ),
        }
    )
    sampler_study.main(cfg)
    result = read_json(tmp_path / "metrics" / "sampler_study.json")
    assert result["feature_space"] == "evaluator" and result["n_images"] == 40
    assert {s: sorted(p) for s, p in result["nfe_sweep"].items()} == {
        "ddpm": ["2"],
        "ddim": ["2", "3"],
        "dpm_solver": ["2"],
        "euler": ["2"],
    }
    point = result["nfe_sweep"]["ddim"]["2"]
    for key in (
        "fid_evaluator",
        "kid_evaluator",
        "precision",
        "recall",
        "conditional_accuracy",
        "fid_over_floor",
        "seconds",
        "unet_evals",
        "reaches_target",
    ):
        assert key in point
    assert point["unet_evals"] == 4 and result["guidance_sweep"]["points"]["1.0"]["unet_evals"] == 2
    assert result["guidance_sweep"]["points"]["2.0"] == point  # shared point, sampled once
    assert set(result["fewest_nfe_to_target"]) == {"ddpm", "ddim", "dpm_solver", "euler"}
    assert {"fid_evaluator", "precision", "recall", "n_images"} <= set(result["floor"])
    plots = tmp_path / "plots" / "sampler_study"
    for name in ("quality_vs_nfe.png", "precision_recall_guidance.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(plots / "nfe_ddim.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["nfe"] for r in rows] == ["2", "3"] and "fid_over_floor" in rows[0]
    assert list(rows[0])[2:5] == [
        "fid_evaluator",
        "fid_over_floor",
        "kid_evaluator",
    ]  # space keys spelled out
    assert float(rows[0]["fid_evaluator"]) == pytest.approx(point["fid_evaluator"], rel=1e-5)
    typed = read_result(tmp_path / "metrics" / "sampler_study.json", SamplerStudyResult)
    assert typed.nfe_sweep["ddim"]["2"].space_value("fid") == point["fid_evaluator"]
    with open(plots / "guidance.csv") as f:
        assert [r["guidance_scale"] for r in csv.DictReader(f)] == ["1", "2"]
    assert len((plots / "nfe_sweep.csv").read_text().splitlines()) == 1 + 5
    assert os.environ["DIFFAUDIT_PROGRESS"] == "0"


def test_best_sampler_is_the_fewest_nfe_and_ties_are_not_broken_by_seconds() -> None:
    from diffaudit.metrics.sampler_study import best_point

    def point(seconds: float) -> SimpleNamespace:
        return SimpleNamespace(seconds=seconds)

    sweep = {"ddim": {"10": point(0.5)}, "dpm_solver": {"10": point(0.4)}, "ddpm": {"50": point(2.0)}}
    best = best_point(sweep, {"ddim": 10, "dpm_solver": 10, "ddpm": 50, "euler": None})
    assert (best.sampler, best.nfe, best.ties) == ("ddim", 10, ["dpm_solver"])  # not dpm_solver by 0.1 s
    assert best_point(sweep, {"ddim": None}) is None
    assert best_point(sweep, {"ddpm": 50, "ddim": 10}).ties == []
