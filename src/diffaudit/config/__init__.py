"""Configuration: the typed schema of the composed config, and its composition from conf/."""

from diffaudit.config.schema import Config, load_params, validate_config
from diffaudit.errors import ConfigError

__all__ = ["Config", "ConfigError", "load_params", "validate_config"]
