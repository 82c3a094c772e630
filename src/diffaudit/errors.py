"""Every typed failure of diffaudit. A stage entry point (pipelines/_stage.py) turns each of them into a
one-line message and exit 1; anything else is a bug and keeps its traceback.

Kept free of heavy imports: every stage imports this, and stages that never train (prepare, report)
should not pay for importing Lightning and diffusers (~10 s on 2 cores).
"""

from __future__ import annotations

import errno


class ConfigError(ValueError):
    """The composed config is invalid; the message lists every bad key with what is allowed."""


class DataError(ValueError):
    """Bad or missing input data; the message names the file, column or class at fault."""


class ResultFileError(ValueError):
    """A result file (metrics/*.json, reports/release.json) is missing, not JSON, or not of its schema;
    the message names the file and the field."""


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be reached or used."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops and the last good checkpoint is kept."""


class CheckpointMismatchError(ValueError):
    """A checkpoint was made by a different model/diffusion/data config than the one asked for."""


class ModelFolderError(ValueError):
    """A model folder given to audit is not a supported diffusers model (not one, pickle-only weights, an
    unsupported class, a shape the data cannot match); the message names the file and what was expected."""


class DiskFullError(OSError):
    """No space was left on the device (or the quota) while writing an output; what was being written is
    removed (utils.io.atomic_path)."""


def is_disk_full(err: BaseException) -> bool:
    """Whether `err` reports a full device: OSError's ENOSPC/EDQUOT, or a library that words it (safetensors'
    "No space left on device (os error 28)", torch's stream writer)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(err) or "os error 28" in str(err)


class GateFailedError(RuntimeError):
    """A release gate failed and the config (audit.fail_on_gate) says that fails the stage."""


# What a stage reports in one line and exit 1 (FileNotFoundError: an input stage has not run).
STAGE_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    DataError,
    ResultFileError,
    TrackingError,
    NonFiniteLossError,
    CheckpointMismatchError,
    ModelFolderError,
    GateFailedError,
    DiskFullError,
    FileNotFoundError,
)
