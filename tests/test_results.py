"""Typed result files: every file a stage writes reads back through its model and writes back identical;
an old or foreign file fails with one line naming the file and the field, in the reader and in every
consumer (report, model card, release rule, gates, retrain)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from diffaudit.errors import ConfigError, ResultFileError
from diffaudit.results import (
    METRICS_FILES,
    DataResult,
    EvaluatorResult,
    ExplainMetrics,
    FairnessResult,
    GatesResult,
    Interval,
    PrivacyResult,
    QualityResult,
    ReleaseSummary,
    ResultFile,
    RunResults,
    SamplerStudyResult,
    load_results,
    measured_by_evaluator,
    metric_value,
    read_result,
    space_key,
    space_of,
    write_result,
)
from tests.helpers.config import TinyRun
from tests.helpers.release import ReleaseRun, copy_run

MODELS: dict[str, type[ResultFile]] = {m.FILE: m for m in (*METRICS_FILES, ReleaseSummary)}


def same_json(a: Any, b: Any, at: str = "$") -> None:
    """Equal JSON values with equal types (an int stays an int), NaN equal to NaN, keys in the same order."""
    assert type(a) is type(b), f"{at}: {type(a).__name__} {a!r} != {type(b).__name__} {b!r}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{at}: keys {list(a)} != {list(b)}"
        for k in a:
            same_json(a[k], b[k], f"{at}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{at}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same_json(x, y, f"{at}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), at
    else:
        assert a == b, f"{at}: {a!r} != {b!r}"


# ---- real files of the tiny pipeline ---------------------------------------------------------------


@pytest.fixture(scope="module")
def real_files(
    tiny_run: TinyRun, release_run: ReleaseRun, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Every result file as its producer writes it, on the tiny run: prepare/evaluator/evaluate (the
    session's run), the audit stage (with mitigation), the explain and sampler-study producers, and the
    report stage's release.json (tests/helpers/release.py)."""
    from diffaudit.audit.explain import explain_model
    from diffaudit.config.eval_schema import GuidanceSweepCfg, StudyCfg
    from diffaudit.data.store import load_meta, load_split
    from diffaudit.diffusion.pipeline import ClassConditionalPipeline
    from diffaudit.metrics.features import FeatureCache
    from diffaudit.metrics.quality import feature_module
    from diffaudit.metrics.sampler_study import run_study
    from diffaudit.models.evaluator import Evaluator
    from pipelines import audit

    out = tmp_path_factory.mktemp("results")
    metrics = out / "metrics"
    metrics.mkdir()
    for name in ("data.json", "evaluator.json", "quality.json"):
        shutil.copy(tiny_run.root / "metrics" / name, metrics / name)
    cfg = tiny_run.cfg
    paths = cfg.paths.model_copy(update={"metrics": str(metrics), "plots": str(out / "plots")})
    own_store = cfg.tracking.model_copy(
        update={"uri": f"sqlite:///{out / 'mlflow.db'}"}
    )  # not the tiny run's
    audit.main(
        cfg.model_copy(
            update={
                "paths": paths,
                "tracking": own_store,
                "audit": cfg.audit.model_copy(update={"bootstrap": 30}),
            }
        )
    )

    data = Path(cfg.paths.data) / "prepared"
    meta, train, val, test = load_meta(data), *(load_split(data, s) for s in ("train", "val", "test"))
    pipe = ClassConditionalPipeline.from_exported(Path(cfg.paths.models) / "diffusion", cfg.sampler.name)
    evaluator = Evaluator.from_pretrained(Path(cfg.paths.models) / "evaluator", use_safetensors=True)
    small = {
        "emergence_per_class": 2,
        "filmstrip_per_class": 1,
        "attribution_steps": [0.5],
        "ig_steps": 4,
        "smoothgrad_samples": 2,
        "timestep_bins": 3,
        "loss_images": 20,
    }
    explained = explain_model(
        cfg.explain.model_copy(update=small), cfg.sampler, cfg.seed, pipe, evaluator, meta, val
    )
    write_result(metrics / ExplainMetrics.FILE, explained.metrics)
    study = StudyCfg(
        num_per_class=2, nfe={"ddim": [2], "euler": [2]}, guidance=GuidanceSweepCfg(scales=[1.0, 2.0])
    )
    cache = FeatureCache(feature_module(cfg.eval, evaluator))
    result = run_study(
        pipe,
        evaluator,
        cache,
        meta,
        train,
        test,
        cfg.eval.model_copy(update={"study": study}),
        cfg.sampler,
        cfg.seed,
    )
    write_result(metrics / SamplerStudyResult.FILE, result)

    files = {p.name: p for p in metrics.glob("*.json")}
    files[ReleaseSummary.FILE] = release_run.root / "reports" / ReleaseSummary.FILE
    return files


def test_every_stage_writes_every_result_file(real_files: dict[str, Path]) -> None:
    assert set(real_files) == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_real_file_round_trips_equal(real_files: dict[str, Path], name: str, tmp_path: Path) -> None:
    path = real_files[name]
    model = read_result(path, MODELS[name])
    same_json(json.loads(json.dumps(model.dump())), json.loads(path.read_text()))
    write_result(tmp_path / name, model)
    assert (tmp_path / name).read_text() == path.read_text()  # byte for byte what the producer wrote


def test_real_files_keep_the_values_consumers_need(real_files: dict[str, Path]) -> None:
    q = read_result(real_files["quality.json"], QualityResult)
    assert q.space() == q.feature_space == "evaluator" and q.sampler is not None and q.has_cas
    assert isinstance(q.fid_evaluator_debiased_ci, Interval) and q.space_value("fid") == q.fid_evaluator
    assert [r.key for r in q.rows()] == [
        "fid_evaluator",
        "kid_evaluator",
        "precision",
        "recall",
        "density",
        "coverage",
        "conditional_accuracy",
        "cas",
    ]
    f = read_result(real_files["fairness.json"], FairnessResult)
    assert f.mitigation is not None and set(f.mitigation.selection.per_class) <= {str(c) for c in range(10)}
    assert f.mitigation.report.headline.estimate == f.headline.estimate == "corrected"
    g = read_result(real_files["gates.json"], GatesResult)
    assert g.with_mitigation is not None and set(g.failed) == {n for n, e in g.gates.items() if not e.passed}
    ev = read_result(real_files["evaluator.json"], EvaluatorResult)
    assert set(ev.heads) == {"class", "thickness"} and ev.heads["class"].labels[0] == "0"
    s = read_result(real_files["sampler_study.json"], SamplerStudyResult)
    assert set(s.nfe_sweep) == {"ddim", "euler"} and s.floor.space() == "evaluator"


# ---- malformed files: the reader ------------------------------------------------------------------


def _set(data: Any, dotted: str, value: Any = None, *, delete: bool = False) -> None:
    *head, last = dotted.split(".")
    node = data
    for part in head:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if delete:
        del node[last]
    else:
        node[last] = value


# (file, a field to give the wrong type, a mapping to add an unknown key to, a required field to remove)
CASES = [
    ("data.json", "splits.train.n", "splits.train", "data_md5"),
    ("evaluator.json", "class.accuracy", "class", "class.confusion"),
    ("quality.json", "conditional_accuracy", "fid_evaluator_debiased_ci", "n_test"),
    ("sampler_study.json", "guidance_sweep.nfe", "target", "floor.recall"),
    ("explain.json", "spectrum.coarse_to_fine", "seconds", "attribution.logit_gap_mean"),
    (
        "fairness.json",
        "headline.fairness_discrepancy.value",
        "representation.thickness",
        "per_group.thickness.sizes",
    ),
    ("privacy.json", "memorization.pixel.n_flagged", "memorization.pixel.real_test_floor", "ratio"),
    (
        "gates.json",
        "gates.conditional_accuracy.passed",
        "gates.conditional_accuracy",
        "gates.conditional_accuracy.op",
    ),
    ("release.json", "record.promoted", "record", "candidate_metrics"),
]
WRONG = {
    "data.json": "420",
    "evaluator.json": "high",
    "quality.json": "0.1",
    "sampler_study.json": 2.5,
    "explain.json": 1,
    "fairness.json": "high",
    "privacy.json": 0.5,
    "gates.json": "yes",
    "release.json": "no",
}


def _broken(real: Path, dest: Path, change: str, case: tuple[str, str, str, str]) -> tuple[Path, str]:
    """A copy of `real` with one defect; (path, the dotted field the message must name)."""
    name, wrong, parent, required = case
    data = json.loads(real.read_text())
    if change == "wrong type":
        _set(data, wrong, WRONG[name])
        field = wrong
    elif change == "unknown key":
        _set(data, f"{parent}.bogus", 1)
        field = f"{parent}.bogus"
    else:
        _set(data, required, delete=True)
        field = required
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(data))
    return dest, field


@pytest.mark.parametrize("change", ["wrong type", "unknown key", "missing field"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_malformed_file_names_the_file_and_the_field(
    real_files: dict[str, Path], tmp_path: Path, case: tuple[str, str, str, str], change: str
) -> None:
    path, field = _broken(real_files[case[0]], tmp_path / "metrics" / case[0], change, case)
    with pytest.raises(ResultFileError) as err:
        read_result(path, MODELS[case[0]])
    msg = str(err.value)
    assert msg.startswith(f"{path}: field {field}: ") and "\n" not in msg, msg
    expected = {
        "wrong type": "Input should be",
        "unknown key": "Extra inputs are not permitted",
        "missing field": "Field required",
    }[change]
    assert expected in msg, msg


def test_the_gate_example_message(
    real_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = json.loads(real_files["gates.json"].read_text())
    data["gates"]["fid_over_floor"] = dict(data["gates"]["conditional_accuracy"], passed="yes")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "gates.json").write_text(json.dumps(data))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ResultFileError) as err:
        read_result("metrics/gates.json", GatesResult)
    assert str(err.value) == (
        "metrics/gates.json: field gates.fid_over_floor.passed: Input should be a valid boolean, got 'yes'"
    )


def test_missing_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(ResultFileError, match=r"quality\.json: not found: run the stage that writes quality"):
        read_result(tmp_path / "quality.json", QualityResult)
    (tmp_path / "gates.json").write_text('{"passed": tru')
    with pytest.raises(ResultFileError, match=r"gates\.json: not valid JSON: .* at line 1 column"):
        read_result(tmp_path / "gates.json", GatesResult)
    (tmp_path / "privacy.json").write_text("[]")
    with pytest.raises(
        ResultFileError, match=r"privacy\.json: field \(top level\): Input should be a valid dict"
    ):
        read_result(tmp_path / "privacy.json", PrivacyResult)


def test_quality_keys_belong_to_one_feature_space(real_files: dict[str, Path], tmp_path: Path) -> None:
    data = json.loads(real_files["quality.json"].read_text())
    (tmp_path / "q.json").write_text(json.dumps(data | {"fid_inception": 1.0}))
    with pytest.raises(
        ResultFileError, match=r"q\.json: field fid_inception: a key of the inception feature"
    ):
        read_result(tmp_path / "q.json", QualityResult)
    (tmp_path / "q.json").write_text(
        json.dumps({k: v for k, v in data.items() if k != "kid_evaluator_floor_std"})
    )
    with pytest.raises(ResultFileError, match=r"field kid_evaluator_floor_std: Field required"):
        read_result(tmp_path / "q.json", QualityResult)
    (tmp_path / "q.json").write_text(json.dumps({k: v for k, v in data.items() if k != "cas_n_test"}))
    with pytest.raises(ResultFileError, match=r"field cas_n_test: Field required \(the CAS keys come all"):
        read_result(tmp_path / "q.json", QualityResult)


# ---- writing ----------------------------------------------------------------------------------------


def test_write_keeps_nan_null_and_absent_keys_apart(tmp_path: Path) -> None:
    from tests.helpers.release import gates

    g = GatesResult.model_validate(gates(True))
    g.gates["memorized_fraction"] = g.gates["memorized_fraction"].model_copy(update={"value": float("nan")})
    g.gates["conditional_accuracy"] = g.gates["conditional_accuracy"].model_copy(update={"value": None})
    write_result(tmp_path / "gates.json", g)
    text = (tmp_path / "gates.json").read_text()
    assert '"value": NaN' in text and '"value": null' in text and "with_mitigation" not in text
    assert text.endswith("}\n") and text.startswith('{\n  "passed": true')
    back = read_result(tmp_path / "gates.json", GatesResult)
    assert (
        math.isnan(back.gates["memorized_fraction"].value)
        and back.gates["conditional_accuracy"].value is None
    )
    back.with_mitigation = {"fairness_discrepancy": True}  # assigned: now written
    write_result(tmp_path / "gates.json", back)
    assert read_result(tmp_path / "gates.json", GatesResult).with_mitigation == {"fairness_discrepancy": True}


def test_write_refuses_what_the_reader_would_refuse(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from tests.helpers.release import gates

    g = GatesResult.model_validate(gates(True))
    with pytest.raises(ValidationError):
        g.passed = "yes"  # type: ignore[assignment]  # assignments are validated
    g.failed.append("memorized_fraction")  # a change in place the model cannot see ...
    with pytest.raises(ValidationError, match="failing gates"):
        write_result(tmp_path / "gates.json", g)  # ... is caught before the file exists
    assert not (tmp_path / "gates.json").exists()


# ---- feature spaces and metric names -------------------------------------------------------------------


def test_space_keys_are_one_table() -> None:
    assert space_key("fid_floor", "evaluator") == "fid_evaluator_floor"
    assert space_key("kid_floor_std", "inception") == "kid_inception_floor_std"
    assert (
        space_of("fid_inception_debiased_ci") == "inception" and space_of("kid_evaluator_std") == "evaluator"
    )
    assert space_of("precision") is None and space_of("cas") is None
    for key in ("fid_evaluator_floor", "kid_inception_floor_ci"):
        assert key in QualityResult.model_fields  # every table key is a declared field
    assert measured_by_evaluator("quality.fid_evaluator") and measured_by_evaluator(
        "quality.conditional_accuracy"
    )
    assert not measured_by_evaluator("quality.fid_inception")
    assert not measured_by_evaluator("quality.kid_inception_floor")
    assert measured_by_evaluator("fairness.headline.fairness_discrepancy.value")


def test_release_rule_skips_only_the_evaluators_metrics_across_spaces() -> None:
    from diffaudit.config.release_schema import CompareMetric
    from diffaudit.release.policy import compare

    spec = [
        CompareMetric(metric="quality.fid_inception", mode="min", tolerance=0.1, relative=True),
        CompareMetric(metric="quality.fid_evaluator", mode="min", tolerance=0.1, relative=True),
    ]
    cand, ref = {"quality.fid_inception": 30.0, "quality.fid_evaluator": 30.0}, {m.metric: 10.0 for m in spec}
    inception, evaluator = compare(cand, ref, spec, same_space=False)
    assert not inception.ok and "regressed" in inception.note  # InceptionV3 features: comparable anywhere
    assert evaluator.ok and "another evaluator" in evaluator.note


def test_metric_value_resolves_through_the_models(real_files: dict[str, Path]) -> None:
    results = RunResults(
        quality=read_result(real_files["quality.json"], QualityResult),
        fairness=read_result(real_files["fairness.json"], FairnessResult),
        evaluator=read_result(real_files["evaluator.json"], EvaluatorResult),
    )
    q = results.quality
    assert q is not None and metric_value(results, "quality.fid_evaluator") == q.fid_evaluator
    assert metric_value(results, "quality.fid_inception") is None  # a key of the other space: absent
    ev = results.evaluator
    assert ev is not None and metric_value(results, "evaluator.class.accuracy") == ev.heads["class"].accuracy
    assert metric_value(results, "fairness.headline.fairness_discrepancy.value") is not None
    assert metric_value(results, "privacy.memorization.pixel.fraction") is None  # file absent
    assert metric_value(RunResults(), "quality.conditional_accuracy") is None
    for bad, why in (
        ("quality.fid", "has no field 'fid'"),
        ("qualty.fid_evaluator", "no metrics file qualty.json"),
        ("quality.bootstrap", "is not a number"),
        ("gates.gates.x.source", "is not a number"),
    ):
        with pytest.raises(ConfigError, match=why):
            metric_value(results, bad)


# ---- consumers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(release_run: ReleaseRun) -> ReleaseRun:
    return release_run


def _break(path: Path, dotted: str, value: Any) -> None:
    data = json.loads(path.read_text())
    _set(data, dotted, value)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("name", "dotted", "value"),
    [
        ("data.json", "image_size", "16"),
        ("quality.json", "n_images", 30.0),
        ("fairness.json", "bootstrap", None),
        ("privacy.json", "memorization.pixel.closest_pairs.0.train", "3"),
        ("explain.json", "num_images", [20]),
        ("sampler_study.json", "best.nfe", "10"),
        ("gates.json", "passed", 1),
    ],
)
def test_report_content_reads_strictly(
    run: ReleaseRun, tmp_path: Path, name: str, dotted: str, value: Any
) -> None:
    """The report and the model card render from load_content: a malformed file stops them with its name and
    field (a missing one is "not run": tests/test_report.py)."""
    from diffaudit.report.content import load_content

    mine = copy_run(run, tmp_path / "copy")
    path = mine.root / "metrics" / name
    _break(path, dotted, value)
    field = dotted.replace(".0.", "[0].")
    with pytest.raises(ResultFileError, match=rf"^{re.escape(f'{path}: field {field}: ')}"):
        load_content(mine.cfg, mine.params)
    with pytest.raises(ResultFileError, match=rf"{re.escape(name)}: field"):
        load_results(mine.root / "metrics")  # what metric_value and the release rule read


def test_report_stage_fails_on_a_malformed_gates_file(run: ReleaseRun, tmp_path: Path) -> None:
    from pipelines import report
    from tests.helpers.config import pipeline_env
    from tests.helpers.release import create_experiment

    mine = copy_run(run, tmp_path / "copy")
    _break(mine.root / "metrics" / "gates.json", "gates.conditional_accuracy.threshold", "0.8")
    with pipeline_env(mine.root, "results-test"):
        create_experiment(mine.cfg, mine.root)
        with pytest.raises(
            ResultFileError, match=r"gates\.json: field gates\.conditional_accuracy\.threshold: "
        ):
            report.main(mine.cfg)
    assert not (mine.root / "reports" / "release.json").exists()  # nothing registered, nothing written


def test_audit_stage_reads_quality_strictly(tiny_run: TinyRun, tmp_path: Path) -> None:
    """The gates read quality.json through its model: a malformed one stops the audit, nothing written."""
    from pipelines import audit

    (tmp_path / "metrics").mkdir()
    shutil.copy(tiny_run.root / "metrics" / "quality.json", tmp_path / "metrics" / "quality.json")
    _break(tmp_path / "metrics" / "quality.json", "fid_evaluator_floor", "low")
    cfg = tiny_run.cfg
    paths = cfg.paths.model_copy(update={"metrics": str(tmp_path / "metrics"), "plots": str(tmp_path / "p")})
    store = cfg.tracking.model_copy(update={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    with pytest.raises(
        ResultFileError, match=r"quality\.json: field fid_evaluator_floor: Input should be a valid"
    ):
        audit.main(cfg.model_copy(update={"paths": paths, "tracking": store}))
    assert not (tmp_path / "metrics" / "gates.json").exists()


def test_retrain_check_names_a_malformed_release_file(
    run: ReleaseRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines import retrain

    mine = copy_run(run, tmp_path / "copy")
    shutil.copytree(run.root / "reports", mine.root / "reports")
    release = mine.root / "reports" / "release.json"
    _break(release, "record.reasons", "all good")
    assert retrain.main(["--check", "--params", str(mine.params)]) == 1
    err = capsys.readouterr().err
    assert f"[retrain] error: {release}: field record.reasons: Input should be a valid list" in err
    assert len(err.strip().splitlines()) == 1


def test_data_card_and_release_summary_types(real_files: dict[str, Path]) -> None:
    d = read_result(real_files["data.json"], DataResult)
    assert d.bias is None and d.splits["train"].n == sum(d.splits["train"].per_class.values())
    r = read_result(real_files["release.json"], ReleaseSummary)
    assert r.registered and r.record is not None and r.revoked is None and "revoked" not in r.dump()
    assert all(isinstance(c.ok, bool) for c in r.record.comparisons)
