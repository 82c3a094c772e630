"""Trust the explanations: the explainability audit against the scheduler, the evaluator and Captum's
own guarantees, on the tiny pipeline run (tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffaudit.audit.explain.attribution import (
    StepClassLogit,
    attribute,
    attribution_summary,
    rank_similarity,
    target_logit,
    trajectory_steps,
)
from diffaudit.audit.explain.emergence import commitment_steps, commitment_summary, emergence
from diffaudit.audit.explain.figures import emergence_figure
from diffaudit.audit.explain.spectrum import radial_power_spectrum, settle_steps
from diffaudit.audit.explain.timestep_profile import loss_by_timestep
from diffaudit.audit.explain.trajectory import Trajectory, explain_seeds, record_trajectories
from diffaudit.config.explain_schema import ExplainCfg
from diffaudit.config.schema import validate_config
from diffaudit.diffusion.pipeline import ClassConditionalPipeline
from diffaudit.diffusion.sampling import sample_seeds
from diffaudit.errors import ConfigError
from diffaudit.models.evaluator import Evaluator
from diffaudit.training.evaluator_training import predict

# Small enough for seconds on a shared 2-core CPU.
SMALL = {
    "emergence_per_class": 2,
    "filmstrip_per_class": 1,
    "attribution_steps": [0.5],
    "ig_steps": 8,
    "smoothgrad_samples": 4,
    "timestep_bins": 3,
    "loss_images": 30,
}


@pytest.fixture(scope="module")
def models(tiny_run) -> tuple[ClassConditionalPipeline, torch.nn.Module]:
    pipe = ClassConditionalPipeline.from_exported(
        tiny_run.root / "models" / "diffusion", tiny_run.cfg.sampler.name
    )
    return pipe, Evaluator.from_pretrained(tiny_run.root / "models" / "evaluator", use_safetensors=True)


@pytest.fixture(scope="module")
def traj(tiny_run, models) -> Trajectory:
    """One image per class (tiny sampler: 4 steps of DPM-Solver++ with guidance)."""
    pipe, _ = models
    s = tiny_run.cfg.sampler
    labels = torch.arange(10)
    return record_trajectories(
        pipe.with_sampler(s.name),
        labels,
        explain_seeds(0, 10, 1, 1),
        s.steps,
        s.guidance_scale,
        batch_size=64,
    )


def small_cfg(tiny_run, **extra: object) -> ExplainCfg:
    return tiny_run.cfg.explain.model_copy(update=SMALL | extra)


@pytest.mark.parametrize("sampler", ["dpm_solver", "ddim", "ddpm", "euler"])
def test_x0_is_the_schedulers_own(tiny_run, models, sampler: str) -> None:
    """The recorded x0-prediction (and the pipeline's StepInfo.x0_pred, and the function the attributions
    differentiate) equal what the scheduler itself used at each step, for every sampler the pipeline
    offers."""
    pipe, evaluator = models
    pipe = pipe.with_sampler(sampler)
    scheduler = pipe.scheduler
    own: list[torch.Tensor] = []
    step = scheduler.step

    def spy(*args: object, **kwargs: object) -> object:
        out = step(*args, **kwargs)
        x0 = getattr(out, "pred_original_sample", None)
        own.append((x0 if x0 is not None else scheduler.model_outputs[-1]).clone())
        return out

    scheduler.step = spy
    labels, seeds = torch.tensor([3, 7, 1]), [11, 12, 13]
    pt, w = pipe.prediction_type, tiny_run.cfg.sampler.guidance_scale
    traj = record_trajectories(pipe, labels, seeds, 4, w, batch_size=8)
    assert len(own) == traj.num_steps == 4
    infos = []
    pipe(labels=labels, seeds=seeds, num_inference_steps=4, guidance_scale=w, on_step=infos.append)
    for k in range(traj.num_steps):
        torch.testing.assert_close(traj.x0[k], own[k], rtol=0, atol=1e-6)
        torch.testing.assert_close(infos[k].x0_pred, own[k + 4], rtol=0, atol=1e-5)
        # Recomputing x0 = f(x_t) differs only by float32 rounding, which scales with |x_t| (Euler's first
        # sigma on the cosine schedule is ~1e4, so its x0 carries ~1/256 of cancellation error).
        atol = 1e-4 + 1e-6 * float(traj.x_t[k].abs().max())
        with torch.no_grad():
            f = StepClassLogit.at_step(pipe.unet, evaluator, traj, k, w, pt)
            torch.testing.assert_close(f.x0(traj.x_t[k], labels), traj.x0[k], rtol=0, atol=atol)


def test_last_step_emergence_is_the_final_prediction(models, traj: Trajectory) -> None:
    evaluator = models[1]
    em = emergence(evaluator, traj)
    on_final = predict(evaluator, traj.final)
    for head, p in on_final.items():
        torch.testing.assert_close(em.prob_final[head][-1], p.max(-1).values, rtol=0, atol=1e-4)
        assert torch.equal(em.argmax[head][-1], p.argmax(-1))
        assert (em.commitment[head] < traj.num_steps).all()


def test_commitment_step_definition() -> None:
    # Steps x images: image 0 settles at step 2, image 1 at 0, image 2 never (last step disagrees).
    argmax = torch.tensor([[1, 5, 0], [2, 5, 0], [3, 5, 0], [3, 5, 1]])
    final = torch.tensor([3, 5, 0])
    assert commitment_steps(argmax, final).tolist() == [2, 0, 4]


def test_commitment_summary_orders_attribute_and_class() -> None:
    class _Em:  # the fields commitment_summary reads
        heads = ["class", "thickness"]
        commitment = {"class": torch.tensor([3, 3, 1, 2]), "thickness": torch.tensor([1, 3, 2, 0])}

    out = commitment_summary(_Em(), torch.tensor([0, 0, 1, 1]), 4)  # type: ignore[arg-type]
    order = out["attribute_vs_class"]["thickness"]
    assert order == {
        "share_attribute_first": 0.5,
        "share_same_step": 0.25,
        "share_class_first": 0.25,
        "mean_step_difference": -0.75,
    }
    assert out["per_head"]["class"]["per_class"]["0"]["mean"] == 3.0


def test_integrated_gradients_completeness(tiny_run, models, traj: Trajectory) -> None:
    """sum(IG) = f(x_t) - f(baseline) within the convergence delta the audit reports."""
    pipe, evaluator = models
    cfg = small_cfg(tiny_run, randomization_check=False, ig_steps=16)
    target = emergence(evaluator, traj).final["class"]
    attr = attribute(pipe, evaluator, traj, target, cfg, tiny_run.cfg.sampler.guidance_scale, seed=0)
    k = attr.steps[0]
    f = StepClassLogit.at_step(
        pipe.unet, evaluator, traj, k, tiny_run.cfg.sampler.guidance_scale, pipe.prediction_type
    )
    x = traj.x_t[k]
    gap = target_logit(f, x, traj.labels, target) - target_logit(f, torch.zeros_like(x), traj.labels, target)
    total = attr.ig[0].flatten(1).sum(1)
    reported = attribution_summary(attr, traj)["ig_convergence_delta"]["max_abs"]
    assert ((total - gap).abs() <= attr.ig_delta[0].abs() + 1e-5).all()
    assert float((total - gap).abs().max()) <= reported + 1e-5
    assert attr.smoothgrad.shape == attr.ig.shape and (attr.smoothgrad >= 0).all()


def test_model_randomization_changes_the_attributions(tiny_run, models, traj: Trajectory) -> None:
    """Adebayo et al.: maps from a re-initialised UNet must differ clearly from the trained model's,
    while the trained model reproduces its own maps exactly."""
    pipe, evaluator = models
    cfg = small_cfg(tiny_run, randomization_check=True)
    target = emergence(evaluator, traj).final["class"]
    args = (cfg, tiny_run.cfg.sampler.guidance_scale)
    attr = attribute(pipe, evaluator, traj, target, *args, seed=0)
    assert attr.ig_random is not None and attr.smoothgrad_random is not None
    rho = attribution_summary(attr, traj)["randomization_spearman"]
    assert rho["integrated_gradients"] < 0.75 and rho["smoothgrad"] < 0.75
    cfg_again = cfg.model_copy(update={"randomization_check": False})
    again = attribute(pipe, evaluator, traj, target, cfg_again, *args[1:], seed=0)
    assert float(rank_similarity(attr.ig, again.ig).min()) > 0.999


def test_randomization_similarity_is_rank_based() -> None:
    a = torch.rand(2, 1, 6, 6)
    assert torch.allclose(rank_similarity(a, a * 3 + 1), torch.ones(2, dtype=torch.float64))
    assert float(rank_similarity(a, -a)[0]) == pytest.approx(1.0)  # magnitudes are compared
    assert float(rank_similarity(a, 1 / (a + 0.1))[0]) == pytest.approx(-1.0)


def test_spectrum_finds_the_frequency_and_settling() -> None:
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    low = torch.cos(2 * torch.pi * xx / 16).view(1, 1, 16, 16)
    high = torch.cos(2 * torch.pi * 6 * (xx + yy) / 16 / 1.0).view(1, 1, 16, 16)
    assert int(radial_power_spectrum(low)[0].argmax()) == 1
    assert int(radial_power_spectrum(high)[0].argmax()) in (8,)  # radius 6*sqrt(2) ~ 8.5, clipped to 8
    spectra = torch.stack(
        [
            torch.tensor([0, 1.0, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.1]),
            torch.tensor([0, 1.0, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5]),
            torch.tensor([0, 1.0, 1, 1, 1.0, 1.0, 1.0, 1.0, 1.0]),
        ]
    )
    settle = settle_steps(spectra, 0.1)
    assert settle["low"] == 0 and settle["high"] == 2


def test_loss_by_timestep(tiny_run, models) -> None:
    from diffaudit.data.store import load_split

    pipe, _ = models
    val = load_split(tiny_run.root / "data" / "prepared", "val")
    rows = loss_by_timestep(pipe, val.images, val.labels, 3, 20, seed=0)
    assert [r["t_lo"] for r in rows] == [0, 333, 667] and rows[-1]["t_hi"] == 999
    assert all(torch.isfinite(torch.tensor([r["loss"], r["x0_mse"]])).all() for r in rows)
    assert rows[0]["x0_mse"] < rows[-1]["x0_mse"]  # recovering x0 from little noise is easier
    again = loss_by_timestep(pipe, val.images, val.labels, 3, 20, seed=0)
    assert again == rows


def test_explain_seeds_reuse_the_sample_stage_seeds() -> None:
    per_sample = 5
    stage = sample_seeds(42, 10 * per_sample)
    seeds = explain_seeds(42, 10, 7, per_sample)
    assert seeds[7 * 3 : 7 * 3 + 5] == stage[3 * per_sample : 4 * per_sample]
    assert len(set(seeds)) == len(seeds) == 70
    assert trajectory_steps([0.0, 0.5, 1.0, 0.99], 4) == [0, 2, 3]


@pytest.mark.parametrize(
    "bad",
    [
        {"band": [0.9, 0.1]},
        {"attribution_steps": [1.5]},
        {"filmstrip_per_class": 5, "emergence_per_class": 2},
        {"unknown_key": 1},
    ],
)
def test_explain_config_is_validated(tiny_run, bad: dict) -> None:
    raw = tiny_run.cfg.model_dump(mode="json")
    raw["explain"] |= bad
    with pytest.raises(ConfigError, match="explain"):
        validate_config(raw)


@pytest.mark.slow
def test_explain_stage_writes_and_logs_everything(
    tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage end to end on the tiny run: every artifact, metrics/explain.json, and the MLflow run."""
    import mlflow

    from pipelines import explain

    cfg = tiny_run.cfg.model_copy(
        update={
            "explain": small_cfg(tiny_run, ig_steps=4, smoothgrad_samples=2),
            "paths": tiny_run.cfg.paths.model_copy(
                update={"metrics": str(tmp_path / "metrics"), "plots": str(tmp_path / "plots")}
            ),
        }
    )
    monkeypatch.setenv("DIFFAUDIT_PIPELINE_ID", "tiny-session")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    explain.main(cfg)
    figs = tmp_path / "plots" / "explain"
    for name in (
        "filmstrip",
        "emergence",
        "commitment",
        "guidance_maps",
        "guidance_profile",
        "attributions",
        "loss_by_timestep",
        "spectrum",
    ):
        assert (figs / f"{name}.png").stat().st_size > 1000, name
    assert (figs / "filmstrip.gif").is_file()
    for name in ("emergence", "loss_by_timestep"):
        assert (tmp_path / "plots" / f"explain_{name}.csv").read_text().count("\n") > 2
    m = json.loads((tmp_path / "metrics" / "explain.json").read_text())
    assert set(m["commitment"]["per_head"]) == {"class", "thickness"}
    assert "thickness" in m["commitment"]["attribute_vs_class"]
    assert m["attribution"]["ig_convergence_delta"]["max_abs"] >= 0
    assert "integrated_gradients" in m["attribution"]["randomization_spearman"]
    assert len(m["loss_by_timestep"]) == 3
    assert set(m["spectrum"]["settle_step"]) == {"low", "mid", "high"}

    mlflow.set_tracking_uri(cfg.tracking.uri)
    run = mlflow.search_runs(
        experiment_names=[cfg.tracking.experiment_name],
        output_format="list",
        filter_string="tags.`diffaudit.stage` = 'explain'",
    )[0]
    assert "explain.attribution.ig_convergence_delta.max_abs" in run.data.metrics
    history = mlflow.tracking.MlflowClient().get_metric_history(
        run.info.run_id, "explain.step.emergence.class"
    )
    assert len(history) == cfg.sampler.steps
    arts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id, "explain")}
    assert "explain/filmstrip.gif" in arts and "explain/attributions.png" in arts


def test_emergence_figure_says_what_groups_its_panels() -> None:
    """An unconditional model's panels group images by the class they end up as, not by a condition."""
    curve = {"mean": np.linspace(0, 1, 5), "lo": np.zeros(5), "hi": np.ones(5)}
    curves = {"class": {0: curve, 1: curve}}
    cond = emergence_figure(curves, ["zero", "one"], (0.1, 0.9))
    uncond = emergence_figure(curves, ["zero", "one"], (0.1, 0.9), conditional=False)
    assert "per conditioning class" in cond._suptitle.get_text()
    assert "conditioning" not in uncond._suptitle.get_text()
    assert "final class" in uncond._suptitle.get_text()
    assert [a.get_title() for a in uncond.axes[:2]] == ["ends as zero", "ends as one"]
