"""Determinism: one seed drives python, numpy and torch; deterministic kernels where torch has them."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False  # NaN-filling new tensors only debugs
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
