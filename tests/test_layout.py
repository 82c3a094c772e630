"""One artifact layout: the paths DVC resolves from dvc.yaml are the ones the stages write (layout.py),
for the default paths and for overridden ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dvc.repo import Repo

from diffaudit.config.compose import compose_config, write_params
from diffaudit.config.schema import validate_config
from diffaudit.layout import STAGE_OUTPUTS, Layout
from tests.helpers.config import ROOT


def _resolved(root: Path) -> dict[str, tuple[set[str], set[str]]]:
    """stage -> (outs incl. metrics and plots, deps) as DVC resolves them, relative to `root`."""
    with Repo(str(root)) as repo:
        return {
            s.name: ({str(o.def_path) for o in s.outs}, {str(d.def_path) for d in s.deps})
            for s in repo.index.stages
        }


def _repo_with(tmp_path: Path, overrides: list[str]) -> tuple[Path, Layout]:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    raw = compose_config(overrides, ROOT / "conf")
    write_params(raw, root / "params.yaml")
    Repo.init(str(root), no_scm=True)
    return root, Layout.of(validate_config(raw))


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        [
            "paths.data=store/d",
            "paths.metrics=out/m",
            "paths.plots=out/p",
            "paths.reports=rep",
            "paths.models=mdl",
        ],
    ],
    ids=["default", "overridden"],
)
def test_dvc_stages_write_exactly_the_layout(tmp_path: Path, overrides: list[str]) -> None:
    root, layout = _repo_with(tmp_path, overrides)
    resolved = _resolved(root)
    assert set(resolved) == set(STAGE_OUTPUTS)
    paths = {k: str(v) for k, v in layout.as_dict().items()}
    for stage, names in STAGE_OUTPUTS.items():
        assert resolved[stage][0] == {paths[n] for n in names}, stage


def test_every_artifact_dep_is_an_earlier_stage_output(tmp_path: Path) -> None:
    root, layout = _repo_with(tmp_path, ["paths.samples=gen", "paths.models=mdl"])
    resolved = _resolved(root)
    produced: set[str] = set()
    folders = {str(p) for p in (layout.metrics_dir, layout.plots_dir)}  # the report reads them whole
    for stage in STAGE_OUTPUTS:  # dvc.yaml's order is the pipeline's order
        outs, deps = resolved[stage]
        artifacts = {d for d in deps if not d.startswith(("src/", "pipelines/")) and d != "params.yaml"}
        assert artifacts <= produced | folders, (stage, artifacts - produced)
        produced |= outs
    assert "mdl/diffusion" in resolved["sample"][1] and "gen" in resolved["evaluate"][1]
