"""The composed config is validated at start-up: bad keys, types and values fail fast with the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffaudit.config.compose import compose_config, write_params
from diffaudit.config.schema import load_params, validate_config
from diffaudit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def test_default_config_composes_and_validates() -> None:
    raw = compose_config([], CONF)
    cfg = validate_config(raw)
    assert cfg.data.name == "digits" and cfg.data.image_size == 16
    assert cfg.model.block_out_channels and cfg.sampler.name == "ddpm" and cfg.sampler.steps <= 20


def test_overrides_land_in_the_config() -> None:
    cfg = validate_config(compose_config(["train.max_steps=200", "sampler=ddim", "sampler.steps=20"], CONF))
    assert cfg.train.max_steps == 200 and cfg.sampler.name == "ddim" and cfg.sampler.steps == 20


def test_committed_params_yaml_matches_conf() -> None:
    """params.yaml in the repo is exactly what conf/ composes to (so `dvc repro` alone is consistent)."""
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert committed == compose_config([], CONF)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.max_steps=0", "train.max_steps"),
        ("train.max_steps=-5", "train.max_steps"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.max_steps=abc", "train.max_steps"),
        ("sampler.name=heun", "'ddpm', 'ddim', 'dpm_solver', 'euler', 'edm_euler' or 'edm_dpm_solver'"),
        ("sampler.steps=0", "sampler.steps"),
        ("data.image_size=18", "multiple of 4"),
        ("+train.bogus=1", "train.bogus: unknown key"),
        ("trainer.precision=fp8", "trainer.precision"),
        ("diffusion.prediction_type=noise", "diffusion.prediction_type"),
    ],
)
def test_bad_values_name_the_key(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        compose_config([override], CONF)
    assert needle in str(err.value)


def test_unknown_group_option_lists_the_choices() -> None:
    with pytest.raises(ConfigError) as err:
        compose_config(["data=nope"], CONF)
    assert "data" in str(err.value) and "digits" in str(err.value)


def test_unknown_top_level_key_in_params_file(tmp_path: Path) -> None:
    raw = compose_config([], CONF) | {"trian": {"max_steps": 3}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="trian: unknown key"):
        load_params(path)


def test_compose_cli_fails_fast_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "params.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.compose", "--out", str(out), "train.max_steps=0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1
    assert "train.max_steps" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_stage_rejects_bad_params_with_a_message(tmp_path: Path) -> None:
    raw = compose_config([], CONF)
    raw["train"]["lr"] = -1.0
    path = tmp_path / "params.yaml"
    write_params(raw, path)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.train"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"DIFFAUDIT_PARAMS": str(path), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 1
    assert "train.lr" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.lr=inf", "train.lr"),
        ("train.weight_decay=inf", "train.weight_decay"),
        ("sampler.guidance_scale=inf", "sampler.guidance_scale"),
        ("audit.gates.max_fairness_discrepancy=inf", "audit.gates.max_fairness_discrepancy"),
        ("train.lr=nan", "train.lr"),
        ("sampler.num_per_class=1000000000", "sampler.num_per_class"),
        ("eval.study.num_per_class=1000000000", "eval.study.num_per_class"),
        ("seed=4294967296", "seed"),
        ("trainer.devices=0", "trainer.devices"),
    ],
)
def test_out_of_range_values_are_refused_at_compose(override: str, key: str, tmp_path) -> None:
    """Red team: inf passed every float bound, and 10^9 images, seed 2^32 and 0 devices passed the schema
    and failed later with tracebacks (after the earlier stages had run)."""
    import subprocess
    import sys

    out = tmp_path / "params.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.compose", "--out", str(out), override],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and not out.exists(), proc.stderr
    assert f"{key}: " in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_registered_model_name_follows_the_data() -> None:
    """Red team: a model trained on another dataset registered under diffaudit-digits."""
    assert validate_config(compose_config([], CONF)).tracking.registered_model_name == "diffaudit-digits"
    other = validate_config(compose_config(["data=mnist", "data.root=/datasets/mnist"], CONF))
    assert other.tracking.registered_model_name == "diffaudit-mnist"
