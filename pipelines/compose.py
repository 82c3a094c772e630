"""Compose conf/ (plus Hydra overrides from the command line) into params.yaml, validated."""

from __future__ import annotations

import sys

from diffaudit.config.compose import compose_config, write_params
from diffaudit.errors import ConfigError


def main(argv: list[str]) -> int:
    out = "params.yaml"
    if argv[:1] == ["--out"]:
        out, argv = argv[1], argv[2:]
    try:
        write_params(compose_config(argv), out)
    except ConfigError as err:
        print(f"[compose] {err}", file=sys.stderr)
        return 1
    print(f"[compose] wrote {out}" + (f" with overrides {argv}" if argv else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
