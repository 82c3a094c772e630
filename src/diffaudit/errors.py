"""Typed failures that every stage entry point turns into a one-line message and exit 1.

Kept free of heavy imports: pipelines/_stage.py imports this in every stage, and stages that never
train (prepare, report) should not pay for importing Lightning and diffusers (~10 s on 2 cores).
"""

from __future__ import annotations


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops and the last good checkpoint is kept."""


class CheckpointMismatchError(ValueError):
    """A checkpoint was made by a different model/diffusion/data config than the one asked for."""
