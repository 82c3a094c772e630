"""What a user reads in the terminal: training draws one progress bar over its steps with an ETA (not one
per epoch), without the warnings a user cannot act on; `make serve` with an alias that does not exist
says so in one line and lists the aliases that do."""

from __future__ import annotations

import csv
import os
import re
import shutil
import warnings

import pytest
from lightning.pytorch.loggers import CSVLogger

from diffaudit.data.store import load_meta, load_split
from diffaudit.training.diffusion_training import train_diffusion
from tests.helpers.release import ReleaseRun


def test_training_draws_one_bar_over_the_steps_with_an_eta(tiny_run, tmp_path, capfd) -> None:
    """Resume the tiny run's 30 steps to 56: 26 more steps cross two epoch ends (13 batches an epoch) and
    one validation, with a logger whose interval (25) is longer than an epoch."""
    ckpt_dir = tmp_path / "checkpoints"
    shutil.copytree(tiny_run.root / "models" / "checkpoints", ckpt_dir)
    data = tiny_run.root / "data" / "prepared"
    # Training on past max_steps is an explicit resume (a changed max_steps never resumes by itself).
    named = str(tiny_run.root / "models" / "checkpoints" / "last.ckpt")
    train = tiny_run.cfg.train.model_copy(
        update={"max_steps": 56, "log_every_n_steps": 25, "resume_from": named}
    )
    cfg = tiny_run.cfg.model_copy(update={"train": train})
    logger = CSVLogger(tmp_path / "logs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, trainer = train_diffusion(
            cfg, load_split(data, "train"), load_split(data, "val"), load_meta(data), ckpt_dir, logger
        )
    assert trainer.global_step == 56 and trainer.current_epoch >= 2
    out = capfd.readouterr()
    text = out.out + out.err
    frames = [f for f in re.split(r"[\r\n]", text) if f.strip()]
    bars = [f for f in frames if re.search(r"\d+/\d+ \[", f)]
    assert bars, text
    others = [f for f in bars if not f.lstrip().startswith("train:")]
    assert not others, f"bars other than the training one: {others}"
    assert not [f for f in frames if "Epoch" in f or "Validation" in f]
    assert all(re.search(r"/56 \[", f) for f in bars)  # one total: the steps, not an epoch's batches
    assert re.search(r"56/56 \[\d+:\d+<\d+:\d+", bars[-1])  # elapsed < remaining: the ETA
    assert re.search(r"\b30/56\b", bars[0])  # starts at the resumed step
    # Bar lines finished with a newline: one, the bar left on screen when training ends.
    assert sum("train:" in line for line in text.split("\n")) == 1
    # The noise a user cannot act on is gone: none of these printed or warned.
    assert not any(s in text for s in ("GPU available", "TPU available", "💡 Tip", "`Trainer.fit` stopped"))
    messages = [str(w.message) for w in caught]
    assert not any("logging interval" in m or "LeafSpec" in m for m in messages), messages
    # What the warning said would not happen did: the loss was logged every 25 steps counted across epoch
    # ends (once in steps 31..56: the 50th), though no epoch is 25 batches long.
    with open(next((tmp_path / "logs").rglob("metrics.csv"))) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] in ([49], [50]), rows


def test_training_draws_no_bar_when_progress_is_off(tiny_run, tmp_path, capfd, monkeypatch) -> None:
    from pipelines._stage import progress_enabled

    monkeypatch.setenv("DIFFAUDIT_PROGRESS", "0")
    ckpt_dir = tmp_path / "checkpoints"
    shutil.copytree(tiny_run.root / "models" / "checkpoints", ckpt_dir)
    data = tiny_run.root / "data" / "prepared"
    cfg = tiny_run.cfg.model_copy(update={"train": tiny_run.cfg.train.model_copy(update={"max_steps": 32})})
    train_diffusion(
        cfg,
        load_split(data, "train"),
        load_split(data, "val"),
        load_meta(data),
        ckpt_dir,
        progress=progress_enabled(),
    )
    out = capfd.readouterr()
    assert "train:" not in out.out + out.err


def test_serve_names_the_aliases_that_exist(release_run: ReleaseRun, capsys) -> None:
    from pipelines import serve

    old = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        assert serve.main(["--params", str(release_run.params), "--alias", "production"]) == 1
    finally:
        if old is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    name = release_run.cfg.tracking.registered_model_name
    assert f"{name}@production does not exist" in err
    assert re.search(r"aliases: candidate \(v\d+\), champion \(v\d+\)", err), err


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "https://alice:pw@mlflow.example/"])
def test_links_come_from_the_setting_or_the_tracking_server(uri: str) -> None:
    from diffaudit.tracking.links import MAKE_UI, ui_base

    assert ui_base(uri, "https://mlflow.team.example/") == "https://mlflow.team.example"
    expected = MAKE_UI if uri.startswith("sqlite") else "https://mlflow.example"
    assert ui_base(uri) == expected


def test_the_report_stage_and_the_end_of_repro_say_what_matters(tmp_path, capfd) -> None:
    """The report stage logs and registers the model without MLflow's input-example warning or its
    "Downloading artifacts" bar; the pipeline's last lines are the verdict, the report and `make ui`."""
    from tests.helpers.release import build_release_run

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = build_release_run(tmp_path)
    out, err = capfd.readouterr()
    assert "Downloading artifacts" not in out + err
    assert not [str(w.message) for w in caught if "input example" in str(w.message).lower()]
    last = out.strip().splitlines()[-3:]
    name = run.cfg.tracking.registered_model_name
    assert last[0].startswith(f"[pipeline] RELEASED: {name} v1 is champion (all 2 applicable gates pass")
    assert last[1] == f"[pipeline] report: {run.root / 'reports' / 'audit.html'} (open it in a browser)"
    assert last[2].startswith("[pipeline] dashboard: make ui; this run: http")
    assert last[2].endswith("?workflowType=machine_learning")
