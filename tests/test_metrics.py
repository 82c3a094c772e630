"""Quality metrics are right: FID/KID against closed forms and limits, precision/recall's symmetries,
CAS against the evaluator's own test accuracy, inception's refusal to run without weights, and the
evaluate stage's full key set on the tiny pipeline run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from diffaudit.config.compose import compose_config
from diffaudit.config.schema import validate_config
from diffaudit.data.store import load_meta, load_split
from diffaudit.errors import ConfigError
from diffaudit.metrics.bootstrap import half_indices, half_sample_ci, mean_ci
from diffaudit.metrics.features import FeatureCache
from diffaudit.metrics.fid import fid_features, kid_features, kid_half_samples
from diffaudit.metrics.precision_recall import density_coverage_indicators, precision_recall
from diffaudit.metrics.quality import cas_score, class_hits, evaluate_quality, feature_module
from diffaudit.metrics.vendi import vendi_per_class, vendi_score
from diffaudit.models.evaluator import Evaluator
from diffaudit.results import Interval, QualityResult
from diffaudit.utils.io import load_tensors, read_json

ROOT = Path(__file__).resolve().parents[1]


def gaussian(
    n: int, d: int, mean: float | torch.Tensor = 0.0, scale: float = 1.0, seed: int = 0
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + mean


def closed_form_fid(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


# --- FID / KID ---------------------------------------------------------------------------------


def test_fid_of_a_set_against_itself_is_zero() -> None:
    x = gaussian(400, 16)
    assert fid_features(x, x) == pytest.approx(0.0, abs=1e-6)


def test_fid_matches_the_gaussian_closed_form() -> None:
    d = 6
    a = gaussian(3000, d, seed=1)
    mix = torch.linalg.qr(gaussian(d, d, seed=2))[0]
    b = gaussian(3000, d, mean=0.5, scale=1.5, seed=3) @ mix.T
    # Exactly the Fréchet distance of the sample moments ...
    expected = closed_form_fid(a.mean(0).numpy(), np.cov(a.numpy().T), b.mean(0).numpy(), np.cov(b.numpy().T))
    assert fid_features(a, b) == pytest.approx(expected, rel=1e-6)
    # ... and close to that of the populations: N(0, I) vs N(0.5 M 1, 2.25 I) -> |mu|^2 + d (1.5 - 1)^2.
    mu = (0.5 * mix @ torch.ones(d, dtype=torch.float64)).numpy()
    population = closed_form_fid(np.zeros(d), np.eye(d), mu, 2.25 * np.eye(d))
    assert population == pytest.approx(float((mu**2).sum()) + d * 0.25)
    assert fid_features(a, b) == pytest.approx(population, rel=0.1)


def test_fid_and_kid_shrink_as_generated_features_approach_the_real_ones() -> None:
    real, other = gaussian(300, 32, seed=4), gaussian(300, 32, seed=5)
    shift = torch.linspace(-1, 1, 32, dtype=torch.float64)
    fids, kids = [], []
    for delta in (2.0, 1.0, 0.5, 0.1):
        fake = other + delta * shift + 0.3 * delta * other.flip(1)
        fids.append(fid_features(real, fake))
        kids.append(kid_features(real, fake, subset_size=100, subsets=20, seed=0)[0])
    assert fids == sorted(fids, reverse=True) and fids[-1] < 0.1 * fids[0]
    assert kids == sorted(kids, reverse=True) and kids[-1] < 0.1 * kids[0]
    assert abs(kid_features(real, other, 100, 20, 0)[0]) < 0.05 * kids[0]  # same distribution: about 0


def test_kid_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    a, b = gaussian(200, 8, seed=6), gaussian(200, 8, mean=0.2, seed=7)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = kid_features(a, b, 50, 10, seed=3)
    assert torch.rand(1) == before
    assert kid_features(a, b, 50, 10, seed=3) == first


# --- precision / recall ------------------------------------------------------------------------


def test_precision_and_recall_are_one_for_identical_sets() -> None:
    x = gaussian(200, 8)
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)


def test_precision_and_recall_fall_as_the_sets_separate() -> None:
    real, fake = gaussian(300, 8, seed=8), gaussian(300, 8, seed=9)
    values = [precision_recall(real, fake + shift, k=3) for shift in (0.0, 0.5, 1.0, 2.0, 4.0)]
    precisions, recalls = zip(*values, strict=True)
    assert (
        list(precisions) == sorted(precisions, reverse=True) and precisions[0] > 0.8 and precisions[-1] < 0.05
    )
    assert list(recalls) == sorted(recalls, reverse=True) and recalls[0] > 0.8 and recalls[-1] < 0.05


def test_swapping_real_and_generated_swaps_precision_and_recall() -> None:
    real, fake = gaussian(250, 8, seed=10), gaussian(180, 8, mean=0.3, scale=0.5, seed=11)
    p, r = precision_recall(real, fake, k=3)
    assert p != r
    assert precision_recall(fake, real, k=3) == (r, p)


def test_chunking_does_not_change_precision_recall() -> None:
    real, fake = gaussian(230, 8, seed=12), gaussian(170, 8, mean=0.4, seed=13)
    assert precision_recall(real, fake, k=3, chunk=17) == precision_recall(real, fake, k=3, chunk=4096)


def _density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    dens, cov = density_coverage_indicators(real, fake, k)
    return float(dens.mean()), float(cov.mean())


def test_density_and_coverage_by_hand() -> None:
    """Naeem et al. 2020 on points whose balls are known: reals 0, 1, 2, 10 (k=1 radii 1, 1, 1, 8)."""
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=torch.float64)
    fake = torch.tensor([[0.5], [20.0]], dtype=torch.float64)
    dens, cov = density_coverage_indicators(real, fake, k=1)
    # 0.5 lies in the balls of 0 and 1 (radius 1) and not of 10 (|10 - 0.5| > 8); 20 in none.
    assert dens.tolist() == [2.0, 0.0] and cov.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_identical_sets_score_perfectly() -> None:
    real = gaussian(300, 6, seed=20)
    p, r = precision_recall(real, real.clone(), k=3)
    density, coverage = _density_coverage(real, real.clone())
    assert p == r == coverage == 1.0
    # Each copy sits in its own ball and in the k balls that reach it: (k + 1) / k, less the few ties the
    # float distances break at a ball's edge.
    assert density == pytest.approx(1.0 + 1.0 / 3, abs=0.02)
    assert fid_features(real, real.clone()) == pytest.approx(0.0, abs=1e-9)


def test_a_mode_collapsed_set_has_high_precision_low_recall_and_low_coverage() -> None:
    real = gaussian(400, 6, seed=21)
    # Collapse: every generated image is a jittered copy of one of 5 real points near the centre.
    centre = real[real.norm(dim=1).argsort()[:5]]
    fake = centre.repeat(80, 1) + gaussian(400, 6, scale=0.01, seed=22)
    p, r = precision_recall(real, fake, k=3)
    density, coverage = _density_coverage(real, fake)
    fair_p, fair_r = precision_recall(real, gaussian(400, 6, seed=23), k=3)
    fair_density, fair_coverage = _density_coverage(real, gaussian(400, 6, seed=23))
    assert p > 0.95 and r < 0.1 and coverage < 0.1
    assert fair_r > 0.6 and fair_coverage > 0.6 and coverage < fair_coverage / 5
    assert density > fair_density  # collapsed samples crowd a few real balls
    one_mode = centre[:1].repeat(400, 1) + gaussian(400, 6, scale=0.01, seed=25)
    feats = torch.cat([one_mode, fake, gaussian(400, 6, seed=24)])
    labels = torch.arange(3).repeat_interleave(400)
    vendi = vendi_per_class(feats, labels, ["one_mode", "five_modes", "diverse"])
    # Effective numbers of distinct images: 1, at most 5, and near the 6 dimensions' limit.
    assert vendi["one_mode"] < 1.1 and vendi["five_modes"] <= 5.0 < vendi["diverse"] <= 6.0 + 1e-9


def test_vendi_score_counts_distinct_items() -> None:
    eye = torch.eye(5, dtype=torch.float64)
    assert vendi_score(eye) == pytest.approx(5.0)  # five orthogonal items
    assert vendi_score(eye[:1].repeat(7, 1)) == pytest.approx(1.0)  # one item seven times
    assert vendi_score(torch.cat([eye[:2]] * 3)) == pytest.approx(2.0)  # two items, three copies each
    assert math.isnan(vendi_score(eye[:0]))


# --- bootstrap and caching ---------------------------------------------------------------------


def test_bootstrap_intervals_cover_the_estimate_and_are_reproducible() -> None:
    hits = (torch.arange(400) % 4 != 0).float()  # 0.75
    ci = mean_ci(hits, reps=300, seed=0)
    assert isinstance(ci, Interval)
    assert ci.low < 0.75 < ci.high and ci.high - ci.low < 0.15
    assert mean_ci(hits, reps=300, seed=0) == ci and mean_ci(hits, reps=0, seed=0) is None
    assert ci.method == "percentile"
    a, b = gaussian(200, 4, seed=14), gaussian(200, 4, mean=0.5, seed=15)
    plug_in = fid_features(a, b)
    out = half_sample_ci(fid_features, plug_in, a, b, reps=50, seed=0)
    assert out is not None and out == half_sample_ci(fid_features, plug_in, a, b, reps=50, seed=0)
    corrected, fci = out
    # The correction lowers the upward-biased plug-in, and the interval holds the corrected estimate.
    assert corrected < plug_in and fci.low <= corrected <= fci.high and fci.method == "half_sample"


def test_half_samples_are_drawn_without_replacement() -> None:
    idx = half_indices(11, reps=30, gen=torch.Generator().manual_seed(0))
    assert idx.shape == (30, 5)
    assert all(len(set(row.tolist())) == 5 for row in idx) and int(idx.max()) <= 10


def test_kid_half_samples_from_weights_equal_the_subsets() -> None:
    from torchmetrics.image.kid import maximum_mean_discrepancy, poly_kernel

    real, fake = gaussian(60, 5, seed=16), gaussian(46, 5, mean=0.4, seed=17)
    fast = kid_half_samples(real, fake, reps=4, seed=3, chunk=7)
    # the same draws, done the slow way: index the sets, full kernels, torchmetrics' MMD^2
    gen = torch.Generator().manual_seed(3)
    i_r, i_g = half_indices(60, 4, gen), half_indices(46, 4, gen)
    for r in range(4):
        x, y = real.double()[i_r[r]], fake.double()[i_g[r]]
        assert len(x) != len(y)  # torchmetrics' formula needs equal sizes only for the cross term's mean
        kxx, kyy, kxy = poly_kernel(x, x), poly_kernel(y, y), poly_kernel(x, y)
        m, n = len(x), len(y)
        slow = (
            (kxx.sum() - kxx.diag().sum()) / (m * (m - 1))
            + (kyy.sum() - kyy.diag().sum()) / (n * (n - 1))
            - 2 * kxy.mean()
        )
        assert float(fast[r]) == pytest.approx(float(slow), rel=1e-9, abs=1e-12)
    x, y = real.double()[i_r[0][:23]], fake.double()[i_g[0]]
    assert float(maximum_mean_discrepancy(poly_kernel(x, x), poly_kernel(x, y), poly_kernel(y, y))) == (
        pytest.approx(
            float(
                (poly_kernel(x, x).sum() - poly_kernel(x, x).diag().sum()) / (23 * 22)
                + (poly_kernel(y, y).sum() - poly_kernel(y, y).diag().sum()) / (23 * 22)
                - 2 * poly_kernel(x, y).mean()
            ),
            rel=1e-9,
        )
    )  # the slow formula is torchmetrics' own at equal sizes
    assert torch.allclose(kid_half_samples(real, fake, reps=4, seed=3, chunk=1000), fast, rtol=1e-12)


class CountingFeatures(torch.nn.Module):
    """A stand-in feature space: mean and std of each image, counting the images it sees."""

    def __init__(self, space: str = "stub") -> None:
        super().__init__()
        self.space = space
        self.num_features = 2
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        flat = x.flatten(1)
        return torch.stack([flat.mean(1), flat.std(1)], 1)


def test_feature_cache_computes_each_image_set_once() -> None:
    module = CountingFeatures()
    cache = FeatureCache(module)
    images = torch.randn(30, 1, 4, 4)
    first = cache(images)
    assert torch.equal(cache(images.clone()), first) and module.seen == 30 and cache.misses == 1
    cache(images[:10])
    assert module.seen == 40 and cache.misses == 2


# --- inception ---------------------------------------------------------------------------------


def test_inception_without_weights_fails_with_how_to_supply_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"eval\.inception_weights=.*pt_inception.*nothing is downloaded"):
        validate_config(compose_config(["eval.feature=inception"], ROOT / "conf"))
    cfg = validate_config(
        compose_config(
            [f"eval.inception_weights={tmp_path / 'missing.pth'}", "eval.feature=inception"], ROOT / "conf"
        )
    )
    with pytest.raises(ConfigError, match=r"eval\.inception_weights=.*not a file"):
        feature_module(cfg.eval, evaluator=None)  # type: ignore[arg-type]


def test_inception_with_weights_but_without_torch_fidelity_says_what_to_install(tmp_path: Path) -> None:
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if _TORCH_FIDELITY_AVAILABLE:
        pytest.skip("torch-fidelity is installed here")
    weights = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(1)}, weights)
    cfg = validate_config(
        compose_config([f"eval.inception_weights={weights}", "eval.feature=inception"], ROOT / "conf")
    )
    with pytest.raises(ConfigError, match="torch-fidelity"):
        feature_module(cfg.eval, evaluator=None)  # type: ignore[arg-type]


# --- on the tiny pipeline run ------------------------------------------------------------------

QUALITY_KEYS = [
    "feature_space",
    "n_images",
    "n_generated",
    "n_test",
    "bootstrap",
    "pr_k",
    "sampler",
    *(
        f"{m}{s}{t}"
        for m in ("kid_evaluator", "precision", "recall", "density", "coverage")
        for s in ("", "_floor")
        for t in ("", "_ci")
    ),
    *(f"fid_evaluator{s}{t}" for s in ("", "_floor") for t in ("", "_debiased", "_debiased_ci")),
    "vendi_per_class",
    "vendi_floor_per_class",
    "kid_evaluator_std",
    "kid_evaluator_floor_std",
    *(
        f"conditional_accuracy{s}{t}"
        for s in ("", "_floor")
        for t in ("", "_ci", "_per_class", "_per_class_ci", "_per_class_n")
    ),
    "cas",
    "cas_ci",
    "cas_floor",
    "cas_floor_ci",
    "cas_n_train",
    "cas_floor_n_train",
    "cas_n_test",
    "labels",
    "not_applicable",
]


def test_evaluate_stage_writes_every_quality_key(tiny_run) -> None:
    q = read_json(Path(tiny_run.cfg.paths.metrics) / "quality.json")
    assert sorted(QUALITY_KEYS) == sorted(q)
    assert list(q) == [k for k in QualityResult.model_fields if k in q]  # written in the model's order
    assert q["feature_space"] == "evaluator" and q["n_generated"] == 60 and q["n_images"] == 60
    for key in (
        "fid_evaluator_debiased",
        "kid_evaluator",
        "precision",
        "recall",
        "density",
        "coverage",
        "conditional_accuracy",
        "cas",
    ):
        for k in (key, key.replace("_debiased", "_floor_debiased") if "fid" in key else f"{key}_floor"):
            assert math.isfinite(q[k]), k
            ci = q[f"{k}_ci"]
            assert ci["low"] <= q[k] <= ci["high"], k
            assert ci["method"] in ("percentile", "half_sample"), k
    assert sorted(q["vendi_per_class"]) == sorted(q["vendi_floor_per_class"])
    assert q["fid_evaluator_floor"] < q["fid_evaluator"]  # 30 training steps: far from the real images
    assert 0 <= q["precision"] <= 1 and 0 <= q["conditional_accuracy"] <= 1
    meta = load_meta(Path(tiny_run.cfg.paths.data) / "prepared")
    assert sorted(q["conditional_accuracy_per_class"]) == sorted(meta.class_names)
    assert sum(q["conditional_accuracy_per_class_n"].values()) == q["n_generated"]
    rows = (Path(tiny_run.cfg.paths.plots) / "conditional_accuracy.csv").read_text().splitlines()
    assert rows[0].startswith("class,conditional_accuracy") and len(rows) == 1 + len(meta.class_names)


def _tiny_inputs(tiny_run):  # noqa: ANN202 - a tuple of the tiny run's artifacts
    data = Path(tiny_run.cfg.paths.data) / "prepared"
    splits = {s: load_split(data, s) for s in ("train", "val", "test")}
    evaluator = Evaluator.from_pretrained(Path(tiny_run.cfg.paths.models) / "evaluator", use_safetensors=True)
    samples = load_tensors(Path(tiny_run.cfg.paths.samples) / "samples.safetensors")
    return load_meta(data), splits, evaluator, samples


def test_cas_of_real_trained_against_real_is_the_classifiers_test_accuracy(tiny_run) -> None:
    """Fed the real training split, CAS retrains the evaluator stage's classifier: same accuracy, same
    hits."""
    meta, s, evaluator, _ = _tiny_inputs(tiny_run)
    cfg = tiny_run.cfg
    accuracy, hits = cas_score(s["train"], s["val"], s["test"], meta, cfg.eval.evaluator, cfg.seed)
    stage = read_json(Path(cfg.paths.metrics) / "evaluator.json")["class"]["accuracy"]
    assert accuracy == pytest.approx(stage, abs=1e-12)
    assert torch.equal(hits, class_hits(evaluator, s["test"].images, s["test"].labels))


def test_metric_keys_name_the_feature_space(tiny_run) -> None:
    meta, s, evaluator, samples = _tiny_inputs(tiny_run)
    cfg = tiny_run.cfg.eval.model_copy(update={"bootstrap": 0, "cas": False})
    result = evaluate_quality(
        cfg,
        evaluator,
        meta,
        s["train"],
        s["test"],
        samples["images"],
        samples["labels"],
        seed=0,
        cache=FeatureCache(CountingFeatures("inception")),
    )
    assert isinstance(result, QualityResult) and result.space() == "inception"
    q = result.dump()
    assert q["feature_space"] == "inception" and "fid_inception" in q and "kid_inception_floor" in q
    assert not any("evaluator" in k for k in q) and q["fid_inception_debiased_ci"] is None and "cas" not in q
    assert result.space_value("fid_floor") == q["fid_inception_floor"] and not result.has_cas
    assert QualityResult.model_validate(q) == result  # what the stage writes reads back


def test_inception_features_come_from_the_local_weights_file(tmp_path: Path) -> None:
    """Where torch-fidelity is importable: random weights saved locally give 2048-d `inception` features."""
    from unittest import mock

    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE:
        pytest.skip("torch-fidelity is not installed here")
    from torchmetrics.image.fid import NoTrainInceptionV3

    with mock.patch("torch.load", return_value={}), mock.patch.object(torch.nn.Module, "load_state_dict"):
        net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path="-"
        )
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    cfg = validate_config(
        compose_config(
            ["eval.feature=inception", f"eval.inception_weights={tmp_path / 'inception.pth'}"], ROOT / "conf"
        )
    )
    cache = FeatureCache(feature_module(cfg.eval, evaluator=None))  # type: ignore[arg-type]
    feats = cache(torch.rand(4, 1, 16, 16) * 2 - 1)
    assert cache.space == "inception" and feats.shape == (4, 2048) and torch.isfinite(feats).all()
