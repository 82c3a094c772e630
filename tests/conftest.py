"""Shared fixtures: one tiny pipeline run (prepare -> evaluate) and one release-loop run per session,
so most tests reuse real artifacts instead of training their own. Helpers live in tests/helpers/."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers.config import TinyRun, pipeline_env, tiny_config
from tests.helpers.release import ReleaseRun, build_release_run

# One intra-op thread per test process (pytest-xdist runs two): the tests' tensors are small, and
# two processes with two threads each on two cores spend their time spinning. Subprocesses inherit it.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _mlflow_uri_restored():
    """`mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI, which wins over a config's store
    (tracking_uri): a test that calls it must not point the next test in this process at its store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """prepare -> evaluator -> train -> sample -> evaluate on the tiny config, in process."""
    from pipelines import evaluate, evaluator, prepare, sample, train

    root = tmp_path_factory.mktemp("tiny_run")
    cfg = tiny_config(root)
    with pipeline_env(root, "tiny-session"):
        for stage in (prepare, evaluator, train, sample, evaluate):
            stage.main(cfg)
    return TinyRun(root=root, cfg=cfg)


@pytest.fixture(scope="session")
def release_run(tmp_path_factory: pytest.TempPathFactory) -> ReleaseRun:
    """The release-loop run (tests/helpers/release.py) shared by the report, registry, serve and
    dashboard tests, built on first use in this process."""
    return build_release_run(tmp_path_factory.mktemp("release_run"))
