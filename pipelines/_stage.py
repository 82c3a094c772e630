"""What every stage entry point shares: load and validate params.yaml, turn known failures into a
one-line message and a non-zero exit (no traceback for bad input)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from diffaudit.config.schema import Config, load_params
from diffaudit.errors import STAGE_ERRORS, is_disk_full
from diffaudit.utils.process import mark_stage_process


def progress_enabled() -> bool:
    return os.environ.get("DIFFAUDIT_PROGRESS", "1") != "0"


def run(stage: str, main: Callable[[Config], None]) -> None:
    mark_stage_process(stage)  # its stage run logs the start-up (diffaudit.utils.process)
    params = os.environ.get("DIFFAUDIT_PARAMS", "params.yaml")
    try:
        cfg = load_params(params)
        main(cfg)
    except STAGE_ERRORS as err:
        print(f"[{stage}] error: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:  # a full disk met outside atomic_path (e.g. a Lightning checkpoint)
        if not is_disk_full(err):
            raise
        print(f"[{stage}] error: no space left on the device: {err}", file=sys.stderr)
        sys.exit(1)
