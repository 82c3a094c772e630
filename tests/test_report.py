"""The report stage: a self-contained audit page with the verdict first, every section rendered or
marked "not run", a model card from the run's numbers, and both logged to MLflow."""

from __future__ import annotations

import json
import re

import pytest

from diffaudit.report.content import SECTIONS, Lineage, fmt_cell, load_content, to_tables
from diffaudit.report.html import render_html
from diffaudit.report.model_card import render_model_card, render_model_card_appendix
from diffaudit.results import Estimate, Interval
from diffaudit.results.fairness import Discrepancy, PerGroup
from tests.helpers.release import ReleaseRun, copy_run


@pytest.fixture(scope="module")
def run(release_run: ReleaseRun) -> ReleaseRun:
    return release_run


def test_tables_render_intervals_by_type() -> None:
    # Intervals are recognised by their type, whatever their key; a dict that merely looks like one is not.
    tables = to_tables(
        {
            "fd": Estimate(value=0.1, ci=[0.05, 0.2], method="inversion"),
            "fid_ci": Interval(low=1.0, high=2.5, method="half_sample"),
            "lookalike": {"value": 0.3, "lo": 0.1, "hi": 0.4},
            "by_group": {"a": {"acc": 0.9}, "b": {"acc": 0.8}},
        }
    )
    cells = {r[0]: r[1] for r in tables[0].rows}
    assert cells == {"fd": "0.1 [0.05, 0.2] (test inversion)", "fid_ci": "[1, 2.5] (half-sample)"}
    assert fmt_cell(Estimate(value=0.3, ci=None, method=None)) == "0.3"  # no interval: the value alone
    assert tables[1].headers == ["", "value", "lo", "hi"]
    assert tables[1].rows == [["lookalike", "0.3", "0.1", "0.4"]]
    assert tables[2].title == "by_group" and tables[2].rows == [["a", "0.9"], ["b", "0.8"]]


def test_tables_walk_a_model_in_its_keys() -> None:
    # An estimate with more fields: estimate and interval in one cell, then the rest; only present keys.
    d = Discrepancy(
        value=0.2, ci=[0.1, 0.3], method="inversion", plug_in=0.25, null_q95=0.15, exceeds_null=True
    )
    (t,) = to_tables({"fd_l2": d, "tv": d})
    assert t.headers == ["", "value [CI]", "plug_in", "null_q95", "exceeds_null"]
    assert t.rows[0] == ["fd_l2", "0.2 [0.1, 0.3] (test inversion)", "0.25", "0.15", "yes"]
    group = PerGroup.model_validate(
        {
            "sizes": {"a": 3},
            "excluded_small_groups": ["a"],
            "real_sizes": {},
            "by_group": {},
            "overall": {},
            "gap": {},
        }
    )
    tables = to_tables(group)
    assert tables[0].rows == [["excluded_small_groups", "[a]"]] and tables[1].rows == [["sizes", "3"]]


def test_report_stage_writes_a_self_contained_page(run: ReleaseRun) -> None:
    page = (run.root / "reports" / "audit.html").read_text()
    ids = re.findall(r"<section id='(\w+)'", page)
    assert ids == ["verdict", "model", *[s.key for s in SECTIONS], "lineage"]  # the verdict comes first
    assert "class-conditional (with a null class: classifier-free guidance)" in page  # what was audited
    assert "RELEASED" in page and "conditional_accuracy" in page
    srcs = re.findall(r"src=['\"]([^'\"]+)", page)
    assert srcs and all(s.startswith("data:image/") for s in srcs)  # nothing fetched
    assert not re.search(r"<script|<link rel='stylesheet'|https?://[^'\"<]*\.(js|css|png)", page)
    assert "data:image/gif" in page  # explainability animations are embedded too
    # The quality section: FID's bias correction with its method, and the Vendi line against its floor
    # (tests/helpers/release.py: generated 2.5, real 2.8 in every class).
    assert "bias-corrected 1.6 [1.44, 1.76] (half-sample)" in page
    assert "Vendi score per class" in page and "(2.5 vs 2.8)" in page
    data = json.loads((run.root / "metrics" / "data.json").read_text())
    assert data["data_md5"] in page
    release = json.loads((run.root / "reports" / "release.json").read_text())
    assert release["record"]["run_id"] in page  # the MLflow run link


def test_missing_inputs_say_not_run(run: ReleaseRun, tmp_path) -> None:
    bare = copy_run(run, tmp_path / "bare")
    for name in ("fairness", "privacy", "explain", "sampler_study", "gates"):
        (bare.root / "metrics" / f"{name}.json").unlink()
    for sub in ("explain", "sampler_study", "audit"):
        for p in (bare.root / "plots" / sub).iterdir():
            p.unlink()
    content = load_content(bare.cfg, bare.params)
    page = render_html(content, Lineage("abc", None, None, None, "sqlite:///x.db"))
    status = dict(re.findall(r"<section id='(\w+)' data-status='([\w-]+)'", page))
    assert status == {
        "verdict": "ok",
        "model": "ok",
        "samples": "ok",
        "quality": "ok",
        "sampler_study": "not-run",
        "explain": "not-run",
        "fairness": "not-run",
        "privacy": "not-run",
        "lineage": "ok",
    }
    assert "NOT AUDITED" in page and "Gates not run" in page
    card = render_model_card(content, Lineage("abc", None, None, None, "sqlite:///x.db"))
    assert "The release gates were not evaluated" in card
    appendix = render_model_card_appendix(content)
    assert appendix.count("_Not measured for this run") == 4


def test_model_card_has_every_section_and_the_run_numbers(run: ReleaseRun) -> None:
    """The Hugging Face layout: YAML metadata, then its sections; the long tables in the linked appendix."""
    import yaml

    card = (run.root / "reports" / "MODEL_CARD.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "diffusers" and meta["datasets"] == ["digits"] and "license" in meta
    assert "diffusion" in meta["tags"]
    for heading in (
        "## Model details",
        "## Uses",
        "### Out-of-scope use",
        "## Bias, risks, and limitations",
        "## How to get started",
        "## Training details",
        "### Preprocessing",
        "### Training procedure",
        "## Evaluation",
        "### Results",
        "### Release gates",
        "## Environmental impact",
        "## Technical specifications",
    ):
        assert f"{heading}\n" in card
    assert "champion (released)" in card
    assert "`thickness` (thin, thick)" in card  # the audited groups
    assert "curl -s http" in card and "UNet2DModel.from_pretrained" in card
    assert "| memorized_fraction | 0 | <= 0.05 | passed |" in card  # the gates with their thresholds
    assert "torch 2.13.0" in card  # software versions
    # quality headline: the plug-in, its bias correction with the interval and method, the floor
    assert "| FID (evaluator features) | 2 (bias-corrected 1.6 [1.44, 1.76] (half-sample)) | 0.5 |" in card
    appendix = (run.root / "reports" / "MODEL_CARD_APPENDIX.md").read_text()
    assert "(MODEL_CARD_APPENDIX.md)" in card
    assert "| max_abs | 0.0123 |" in appendix  # a headline figure of the explainability file
    assert "| fd_l2 | 0.071 [0, 0.25] (test inversion) |" in appendix  # a fairness estimate, interval, method
    assert len(card.splitlines()) < len(appendix.splitlines())


def test_report_and_card_are_logged_to_mlflow(run: ReleaseRun) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(run.tracking_uri)
    release = json.loads((run.root / "reports" / "release.json").read_text())
    client = MlflowClient()
    names = {a.path for a in client.list_artifacts(release["record"]["run_id"], "report")}
    assert names == {
        "report/audit.html",
        "report/MODEL_CARD.md",
        "report/MODEL_CARD_APPENDIX.md",
        "report/release.json",
        "report/headline.json",
    }
    metrics = client.get_run(release["record"]["run_id"]).data.metrics
    assert metrics["release.promoted"] == 1.0


def test_every_section_states_its_finding_and_every_figure_says_what_it_shows(run: ReleaseRun) -> None:
    page = (run.root / "reports" / "audit.html").read_text()
    findings = dict(re.findall(r"<p class='finding' id='finding-(\w+)'>([^<]+)</p>", page))
    assert set(findings) == {s.key for s in SECTIONS}
    assert findings["quality"].startswith("FID 2 in the evaluator feature space, 4x its real-vs-real floor")
    assert "reach" in findings["sampler_study"] and "NFE" in findings["sampler_study"]
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", page)
    assert captions
    for cap in captions:
        assert not re.fullmatch(r"\S+\.(png|gif)", cap), f"a figure captioned by its file name alone: {cap}"
    assert any("balanced selection" in c for c in captions)  # what was mitigated, and how


def test_model_card_makes_html_in_data_names_inert(run: ReleaseRun, tmp_path) -> None:
    """Red team: the card embedded class and group names as raw HTML (Markdown renders it)."""
    content = load_content(run.cfg, run.params)
    content.class_names = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>"]
    content.attribute_groups = {"<b>tone</b>": ["<i>a</i>", "b"]}
    card = render_model_card(content, Lineage("abc", None, None, None, "sqlite:///x.db"))
    assert "<script" not in card and "<img" not in card and "<b>" not in card and "<i>" not in card
    assert "&lt;script>alert(1)&lt;/script>" in card
    assert "<= 0.05" in card  # our own comparison signs stay as they are


def test_report_page_escapes_html_in_data_names(run: ReleaseRun) -> None:
    """Red team, issue 18 (held up; kept tested): class and group names reach audit.html escaped."""
    content = load_content(run.cfg, run.params)
    content.class_names = ["<script>alert(1)</script>", *content.class_names[1:]]
    content.attribute_groups = {"<b>tone</b>": ["<i>a</i>", "b"]}
    page = render_html(content, Lineage("abc", None, None, None, "sqlite:///x.db"), None, 4)
    assert "<script>alert(1)" not in page and "<b>tone</b>" not in page and "<i>a</i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
