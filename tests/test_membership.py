"""Membership inference (audit/membership.py): the metrics against scikit-learn, the intervals' coverage
on simulated scores, the epsilon conversion across prediction types, and the attacks on a model that
memorised 64 digits (members found) and on models that saw neither set (chance)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve

from diffaudit.audit.gates import evaluate_gates, measurements
from diffaudit.audit.membership import (
    AUC_METHOD,
    TPR_METHOD,
    auc,
    auc_interval,
    denoising_errors,
    membership_audit,
    pia_distances,
    select_sets,
    tpr_at_fpr,
    tpr_interval,
)
from diffaudit.config.audit_schema import GatesCfg, MembershipCfg
from diffaudit.config.compose import compose_config
from diffaudit.config.schema import DiffusionCfg, ModelCfg
from diffaudit.data.digits import load_digits
from diffaudit.data.store import to_model_tensor
from diffaudit.diffusion.lit_module import DiffusionModule
from diffaudit.diffusion.pipeline import ClassConditionalPipeline
from diffaudit.diffusion.schedulers import build_noise_scheduler
from diffaudit.errors import ConfigError
from diffaudit.models.unet import build_unet
from diffaudit.results import PrivacyResult
from diffaudit.results.fairness import BAHeadlineFigure, FairnessReport, Headline, HeadlineFigure
from diffaudit.results.intervals import Estimate
from diffaudit.results.membership import MembershipResult

CFG = MembershipCfg(timesteps=[50, 100, 200, 300, 500], noise_draws=4, pia_timesteps=[200], max_images=64)
TINY = ModelCfg(
    block_out_channels=[8, 16], layers_per_block=1, attention=[False, False], norm_num_groups=8, dropout=0.0
)
COSINE = DiffusionCfg(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")


def _intervals(result: MembershipResult) -> list[Estimate]:
    points = [p for by_t in result.attacks.values() for p in by_t.values()]
    h = result.headline
    return [e for p in points for e in (p.auc, p.tpr_at_1pct_fpr)] + [h.auc, h.tpr_at_1pct_fpr]


def _holds(e: Estimate) -> bool:
    return e.ci[0] <= e.value <= e.ci[1] and e.method in (AUC_METHOD, TPR_METHOD)


# -- the metrics -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "m", "decimals"), [(64, 64, 1), (100, 37, 1), (300, 300, 3), (50, 500, 0)])
def test_auc_and_tpr_at_fpr_match_sklearn(n: int, m: int, decimals: int) -> None:
    rng = np.random.default_rng(n + m)
    member, nonmember = rng.normal(1, 1, n).round(decimals), rng.normal(0, 1, m).round(decimals)  # ties
    y, s = np.r_[np.ones(n), np.zeros(m)], np.r_[member, nonmember]
    assert auc(member, nonmember) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    for drop in (False, True):
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=drop)
        for alpha in (0.0, 0.01, 0.05, 0.1, 0.5):
            assert tpr_at_fpr(member, nonmember, alpha) == pytest.approx(tpr[fpr <= alpha].max(), abs=1e-12)


def test_auc_of_gaussian_scores_is_phi_of_d_over_root_two() -> None:
    rng = np.random.default_rng(0)
    for d in (0.0, 0.5, 1.0, 2.0):
        member, nonmember = rng.normal(d, 1, 20_000), rng.normal(0, 1, 20_000)
        assert auc(member, nonmember) == pytest.approx(norm.cdf(d / math.sqrt(2)), abs=0.01)
        # TPR at 1 % FPR of two unit Gaussians d apart: P(N(d, 1) > z_0.99).
        assert tpr_at_fpr(member, nonmember) == pytest.approx(norm.cdf(d - norm.ppf(0.99)), abs=0.02)


def test_auc_interval_covers_the_true_auc_at_its_level() -> None:
    """300 simulated audits (100 members, 100 non-members, AUC 0.760): the 95 % percentile bootstrap
    covers the true AUC in 90-99 % of them (measured: 0.96), and every interval holds its estimate."""
    rng = np.random.default_rng(1)
    d = 1.0
    true, reps, covered = norm.cdf(d / math.sqrt(2)), 300, 0
    for _ in range(reps):
        e = auc_interval(rng.normal(d, 1, 100), rng.normal(0, 1, 100), 500, 0.95, rng)
        assert e.ci[0] <= e.value <= e.ci[1] and e.method == AUC_METHOD
        covered += e.ci[0] <= true <= e.ci[1]
    assert 0.90 <= covered / reps <= 0.99, covered / reps


def test_tpr_interval_is_conservative_and_holds_its_estimate() -> None:
    """At 64 a side the percentile bootstrap of TPR at 1 % FPR covers the truth in only ~73 % of audits
    (docs/privacy.md); the distribution-free interval covers it in at least 95 % (measured: 1.0)."""
    rng = np.random.default_rng(2)
    d = 2.0
    true, reps, covered = norm.cdf(d - norm.ppf(0.99)), 300, 0
    for _ in range(reps):
        e = tpr_interval(rng.normal(d, 1, 64), rng.normal(0, 1, 64), 0.95)
        assert e.ci[0] <= e.value <= e.ci[1] and e.method == TPR_METHOD
        covered += e.ci[0] <= true <= e.ci[1]
    assert covered / reps >= 0.95, covered / reps
    # Enough non-members bound the threshold from above too: the lower end leaves 0.
    big = tpr_interval(rng.normal(d, 1, 2000), rng.normal(0, 1, 2000), 0.95)
    assert 0.0 < big.ci[0] < true < big.ci[1] and big.ci[1] - big.ci[0] < 0.25


def test_intervals_hold_their_estimates_at_the_edges() -> None:
    rng = np.random.default_rng(3)
    separated = (rng.normal(10, 1, 40), rng.normal(0, 1, 40))
    tied = (np.zeros(30), np.zeros(30))
    for member, nonmember in (separated, tied, separated[::-1]):
        for e in (auc_interval(member, nonmember, 200, 0.95, rng), tpr_interval(member, nonmember, 0.95)):
            assert e.ci[0] <= e.value <= e.ci[1]
    assert auc_interval(*separated, 200, 0.95, rng).ci == [1.0, 1.0]
    assert auc_interval(*tied, 200, 0.95, rng).value == 0.5
    none = auc_interval(*separated, 0, 0.95, rng)  # audit.bootstrap 0: no interval, and it says so
    assert none.ci is None and none.method is None


def test_an_interval_without_its_estimate_is_refused() -> None:
    with pytest.raises(ValidationError, match="does not contain its estimate"):
        Estimate(value=0.5, ci=[0.6, 0.7], method="percentile")


# -- the sets and the epsilon conversion -------------------------------------------------------------------
def test_sets_are_class_matched_balanced_and_seeded() -> None:
    train = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)
    test = torch.tensor([0] * 10 + [1] * 12 + [2] * 8 + [3] * 4)
    mi, ni = select_sets(train, test, max_images=1000, seed=0)
    for c, k in ((0, 10), (1, 12), (2, 5), (3, 0)):
        assert (train[mi] == c).sum() == k and (test[ni] == c).sum() == k
    assert len(set(mi.tolist())) == len(mi) == 27
    capped = select_sets(train, test, max_images=20, seed=0)
    assert len(capped[0]) == len(capped[1]) == 20
    assert torch.equal(
        torch.bincount(train[capped[0]], minlength=4), torch.bincount(test[capped[1]], minlength=4)
    )
    assert all(
        np.array_equal(a, b) for a, b in zip(capped, select_sets(train, test, 20, seed=0), strict=True)
    )
    assert not np.array_equal(capped[0], select_sets(train, test, 20, seed=1)[0])


class _AsPrediction(torch.nn.Module):
    """An epsilon UNet re-expressed as a v- or x0-predicting one (same function, another output)."""

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str) -> None:
        super().__init__()
        self.unet, self.ac, self.prediction_type = unet, alphas_cumprod, prediction_type
        self.config = unet.config  # class-conditional, as the wrapped UNet

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> object:
        eps = self.unet(x, t, class_labels=class_labels).sample
        a = self.ac[t].view(-1, 1, 1, 1)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        out = x0 if self.prediction_type == "sample" else a.sqrt() * eps - (1 - a).sqrt() * x0
        return type("Out", (), {"sample": out})()


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_attacks_read_epsilon_whatever_the_model_predicts(prediction_type: str) -> None:
    torch.manual_seed(0)
    unet = build_unet(TINY, 16, 1, 10).eval()
    ns = build_noise_scheduler(COSINE)
    other = ns.from_config(ns.config, prediction_type=prediction_type)
    wrapped = _AsPrediction(unet, ns.alphas_cumprod, prediction_type).eval()
    x = to_model_tensor(load_digits().images[:12], 16)
    y = torch.arange(12) % 10
    ref = denoising_errors(unet, ns, x, y, [10, 300, 900], 2, seed=0, batch_size=5)
    got = denoising_errors(wrapped, other, x, y, [10, 300, 900], 2, seed=0, batch_size=12)
    np.testing.assert_allclose(got, ref, rtol=1e-3)  # and the noise does not depend on the batch size
    ref_pia = pia_distances(unet, ns, x, y, [50, 200], batch_size=7)
    got_pia = pia_distances(wrapped, other, x, y, [50, 200], batch_size=12)
    np.testing.assert_allclose(got_pia, ref_pia, rtol=1e-2)


class _Echo(torch.nn.Module):
    """A "denoiser" that predicts its input: its epsilon error grows with the image's own magnitude."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(num_class_embeds=3)  # read as class-conditional

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> object:
        return type("Out", (), {"sample": x})()


def test_the_headline_reads_an_attack_either_way_and_on_the_other_half() -> None:
    """Members brighter than non-members: the Echo model's loss is higher for members, so every attack's
    AUC is near 0; the headline takes the attack reversed, chosen and reported on separate halves."""
    gen = torch.Generator().manual_seed(0)
    members = (0.9 + 0.05 * torch.randn(40, 1, 8, 8, generator=gen), torch.arange(40) % 4)
    nonmembers = (0.05 * torch.randn(40, 1, 8, 8, generator=gen), torch.arange(40) % 4)
    cfg = MembershipCfg(timesteps=[100, 500], noise_draws=2, pia_timesteps=[200], max_images=40)
    result = membership_audit(
        _Echo(), build_noise_scheduler(COSINE), members, nonmembers, cfg, seed=0, bootstrap=200, ci_level=0.95
    )
    assert all(p.auc.value < 0.1 for by_t in result.attacks.values() for p in by_t.values())
    h = result.headline
    assert h.reversed and h.auc.value > 0.9 and h.selection_auc > 0.9
    assert h.n_members == h.n_nonmembers == 20 and result.n_members == 40
    assert all(_holds(e) for e in _intervals(result))


def test_timesteps_beyond_the_schedule_are_a_config_error() -> None:
    unet = build_unet(TINY, 16, 1, 10).eval()
    ns = build_noise_scheduler(COSINE)
    data = (torch.zeros(8, 1, 16, 16), torch.zeros(8, dtype=torch.long))
    cfg = MembershipCfg(timesteps=[100, 1000], pia_timesteps=[200])
    with pytest.raises(ConfigError, match=r"\[1000\].*num_train_timesteps=1000"):
        membership_audit(unet, ns, data, data, cfg, seed=0, bootstrap=10, ci_level=0.95)
    # The pipeline's own config catches it at compose time, before anything trains.
    root = Path(__file__).resolve().parents[1] / "conf"
    with pytest.raises(ConfigError, match=r"timesteps \[1000\] are not below diffusion.num_train_timesteps"):
        compose_config(["audit.membership.pia_timesteps=[1000]"], root)
    with pytest.raises(ConfigError, match="pia_timesteps"):
        compose_config(["audit.membership.pia_timesteps=[-1]"], root)


# -- the attacks on real models ----------------------------------------------------------------------------
def _three_disjoint_sets(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three disjoint sets of 64 digits at 16x16 with the same count per class (7 of 0-3, 6 of 4-9)."""
    ds = load_digits()
    x, y = to_model_tensor(ds.images, 16), torch.from_numpy(ds.labels)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for c in range(10):
        k = 7 if c < 4 else 6
        idx = rng.choice(np.flatnonzero(ds.labels == c), size=3 * k, replace=False)
        for i in range(3):
            parts[i] += idx[i * k : (i + 1) * k].tolist()
    return [(x[p], y[p]) for p in map(sorted, parts)]


def _overfit(images: torch.Tensor, labels: torch.Tensor, steps: int) -> ClassConditionalPipeline:
    """The project's Lightning module and loss, trained full-batch on `images` (no label dropout)."""
    torch.manual_seed(0)
    train = dict(
        max_steps=steps,
        batch_size=len(images),
        lr=3e-3,
        weight_decay=0.0,
        warmup_steps=0,
        ema_decay=0.0,
        grad_clip=0.0,
        cond_drop_prob=0.0,
        checkpoint_every_n_steps=steps,
        log_every_n_steps=steps,
        num_workers=0,
    )
    module = DiffusionModule(TINY.model_dump(), COSINE.model_dump(), train, 16, 1, 10)
    opt = torch.optim.AdamW(module.unet.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = module.diffusion_loss(images, labels, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ClassConditionalPipeline.from_unet(module.unet.eval(), module.noise_scheduler, "ddim")


@pytest.fixture(scope="module")
def memorised() -> tuple[ClassConditionalPipeline, list[tuple[torch.Tensor, torch.Tensor]], float]:
    sets = _three_disjoint_sets()
    t0 = time.perf_counter()
    pipe = _overfit(*sets[0], steps=600)
    return pipe, sets, time.perf_counter() - t0


def _audit(pipe: ClassConditionalPipeline, members: tuple, nonmembers: tuple) -> MembershipResult:
    return membership_audit(
        pipe.unet, pipe.noise_scheduler, members, nonmembers, CFG, seed=0, bootstrap=1000, ci_level=0.95
    )


def test_the_loss_attack_finds_the_members_of_an_overfit_model(memorised) -> None:
    """600 full-batch steps on 64 digits: the loss attack tells them from 64 held-out digits (AUC >= 0.9)."""
    pipe, sets, train_s = memorised
    t0 = time.perf_counter()
    result = _audit(pipe, sets[0], sets[1])
    print(f"\n[membership] trained {train_s:.1f}s, audited {time.perf_counter() - t0:.1f}s")
    print({a: {t: round(p.auc.value, 3) for t, p in by_t.items()} for a, by_t in result.attacks.items()})
    print(result.headline.model_dump())
    assert result.n_members == result.n_nonmembers == 64
    loss = result.attacks["loss"]
    assert set(loss) == {"50", "100", "200", "300", "500"} and set(result.attacks["pia"]) == {"200"}
    assert all(p.auc.value >= 0.9 for t, p in loss.items() if int(t) <= 300)  # every early timestep
    assert all(p.member_mean < p.nonmember_mean for p in loss.values())
    assert all(_holds(e) for e in _intervals(result))
    h = result.headline
    # The headline, chosen on one half and measured on the other: no in-sample selection.
    assert h.n_members == h.n_nonmembers == 32 and h.auc.value >= 0.9 and h.auc.ci[0] > 0.5
    # The result reads back as written, and the gate catches it.
    assert MembershipResult.model_validate(result.dump()) == result
    (v,) = evaluate_gates(
        GatesCfg(
            min_conditional_accuracy=None,
            max_fairness_discrepancy=None,
            max_abs_bias_amplification=None,
            max_worst_group_gap=None,
            max_memorized_fraction=None,
            max_mia_auc=0.6,
        ),
        {"mia_auc": (h.auc.value, "membership")},
    )
    assert v.gate == "mia_auc" and not v.passed


def _assert_at_chance(result: MembershipResult) -> None:
    """Every attack within 0.15 of AUC 0.5, the headline's interval holding 0.5, every interval its own."""
    assert all(abs(p.auc.value - 0.5) < 0.15 for by_t in result.attacks.values() for p in by_t.values())
    assert result.headline.auc.ci is not None
    assert result.headline.auc.ci[0] <= 0.5 <= result.headline.auc.ci[1]
    assert all(_holds(e) for e in _intervals(result))


def test_images_the_model_never_saw_are_at_chance(memorised) -> None:
    """The same model, two sets it never saw: every attack near 0.5, the headline's interval holds 0.5."""
    pipe, sets, _ = memorised
    result = _audit(pipe, sets[1], sets[2])
    print({a: {t: round(p.auc.value, 3) for t, p in by_t.items()} for a, by_t in result.attacks.items()})
    _assert_at_chance(result)


def test_an_untrained_model_is_at_chance() -> None:
    torch.manual_seed(0)
    sets = _three_disjoint_sets(seed=1)
    unet = build_unet(TINY, 16, 1, 10).eval()
    pipe = ClassConditionalPipeline.from_unet(unet, build_noise_scheduler(COSINE), "ddim")
    result = _audit(pipe, sets[0], sets[1])
    _assert_at_chance(result)


# -- the stage ---------------------------------------------------------------------------------------------
def test_measurements_read_the_membership_headline() -> None:
    torch.manual_seed(0)
    sets = _three_disjoint_sets(seed=2)
    pipe = ClassConditionalPipeline.from_unet(
        build_unet(TINY, 16, 1, 10).eval(), build_noise_scheduler(COSINE), "ddim"
    )
    cfg = MembershipCfg(timesteps=[100], noise_draws=1, pia_timesteps=[200], max_images=16)
    result = membership_audit(
        pipe.unet, pipe.noise_scheduler, sets[0], sets[1], cfg, seed=0, bootstrap=50, ci_level=0.9
    )
    fairness, privacy = _minimal_fairness_and_privacy()
    m = measurements(fairness, privacy.model_copy(update={"membership": result}), None)
    assert m["mia_auc"][0] == result.headline.auc.value and "held-out half" in m["mia_auc"][1]
    assert "mia_auc" not in measurements(fairness, privacy, None)  # not run: not measured (a set gate fails)


def _minimal_fairness_and_privacy() -> tuple[FairnessReport, PrivacyResult]:
    """Only the parts measurements() reads (as tests/test_gates.py builds them)."""
    fig = HeadlineFigure(value=0.0, where="class")
    head = Headline(
        estimate="corrected",
        statistic="estimate",
        fairness_discrepancy=fig,
        bias_amplification=BAHeadlineFigure(value=0.0, where="class", measure="worst_cell"),
        worst_group_gap=fig,
    )
    return FairnessReport.model_construct(headline=head), PrivacyResult.model_construct(
        memorization={}, near_copies={}, membership=None
    )


def test_audit_stage_logs_membership_to_mlflow(tiny_run, tmp_path: Path, monkeypatch) -> None:
    import shutil

    from mlflow.tracking import MlflowClient

    from diffaudit.tracking.mlflow_tracking import STAGE_TAG
    from pipelines import audit

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "metrics").mkdir()
    shutil.copy(tiny_run.root / "metrics" / "quality.json", tmp_path / "metrics" / "quality.json")
    cfg = tiny_run.cfg
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = cfg.model_copy(
        update={
            "paths": cfg.paths.model_copy(
                update={"metrics": str(tmp_path / "metrics"), "plots": str(tmp_path / "plots")}
            ),
            "tracking": cfg.tracking.model_copy(update={"uri": uri}),
            "audit": cfg.audit.model_copy(
                update={
                    "bootstrap": 50,
                    "mitigation": cfg.audit.mitigation.model_copy(update={"enabled": False}),
                    "membership": MembershipCfg(timesteps=[100, 300], noise_draws=1, max_images=32),
                }
            ),
        }
    )
    audit.main(cfg)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment_name)
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`{STAGE_TAG}` = 'audit'")
    logged = run.data.metrics
    assert {"membership.auc", "membership.auc_ci_low", "membership.tpr_at_1pct_fpr"} <= set(logged)
    assert {"membership.loss.t100.auc", "membership.loss.t300.auc", "membership.pia.t200.auc"} <= set(logged)
    assert logged["membership.auc_ci_low"] <= logged["membership.auc"] <= logged["membership.auc_ci_high"]
    assert "memorized_fraction.pixel" in logged  # beside the other privacy metrics
