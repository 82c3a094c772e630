"""Configuration: the typed schema of the composed config, and its composition from conf/."""

from diffaudit.config.schema import Config, load_params, validate_config

__all__ = ["Config", "load_params", "validate_config"]
