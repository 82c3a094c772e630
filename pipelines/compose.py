"""Compose conf/ (plus Hydra overrides from the command line) into params.yaml, validated."""

from __future__ import annotations

import sys

from diffaudit.config.compose import compose_config, write_params
from diffaudit.config.schema import validate_config
from diffaudit.errors import ConfigError, ModelFolderError
from diffaudit.models.imported import check_fits, fit_data_to_model, inspect_model_folder


def main(argv: list[str]) -> int:
    out = "params.yaml"
    if argv[:1] == ["--out"]:
        out, argv = argv[1], argv[2:]
    try:
        raw = compose_config(argv)
        note = fit_data_to_model(raw)  # an imported model: the dataset at the model's size
        if note:
            print(f"[compose] {note}", file=sys.stderr)
        cfg = validate_config(raw)
        if cfg.model.source == "pretrained":
            check_fits(inspect_model_folder(cfg.model.path), cfg)
        write_params(raw, out)
    except ConfigError as err:
        print(f"[compose] {err}", file=sys.stderr)
        return 1
    except ModelFolderError as err:
        print(f"[compose] model.path: {err}", file=sys.stderr)
        return 1
    print(f"[compose] wrote {out}" + (f" with overrides {argv}" if argv else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
