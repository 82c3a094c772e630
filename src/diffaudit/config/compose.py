"""Compose conf/ with Hydra (defaults list plus command-line overrides) into a validated dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffaudit.config.schema import validate_config
from diffaudit.errors import ConfigError
from diffaudit.utils.io import write_text

HEADER = "# Composed from conf/ by `make params` (or DVC's Hydra composition). Edit conf/, not this file.\n"


def compose_config(overrides: list[str] | None = None, config_dir: str | Path = "conf") -> dict[str, Any]:
    """Compose and validate; a bad override or value raises ConfigError naming the key."""
    config_dir = Path(config_dir).resolve()
    if not (config_dir / "config.yaml").is_file():
        raise ConfigError(f"{config_dir}/config.yaml not found")
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides or []))
        raw = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"cannot compose config: {err}") from None
    validate_config(raw)
    return raw


def write_params(raw: dict[str, Any], path: str | Path = "params.yaml") -> None:
    write_text(path, HEADER + yaml.safe_dump(raw, sort_keys=False))
