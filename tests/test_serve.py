"""`make serve`: the registry's champion served by `mlflow models serve` on loopback answers REST
requests with images, reproducibly per seed, and rejects a bad class id with a 400."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from tests.helpers.release import ReleaseRun, free_port, post_json, server


@pytest.fixture(scope="module")
def run(release_run: ReleaseRun) -> ReleaseRun:
    return release_run


@pytest.mark.slow
def test_serve_champion_generates_images_over_rest(run: ReleaseRun, tmp_path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "pipelines.serve", "--params", str(run.params), "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with server(cmd, f"{base}/ping", tmp_path / "serve.log", env=env):
        body = {
            "dataframe_split": {
                "columns": ["label", "guidance_scale", "seed"],
                "data": [[0, 2.0, 11], [7, 1.0, 12], [0, 2.0, 11]],
            },
            "params": {"steps": 2},
        }
        status, out = post_json(f"{base}/invocations", body)
        assert status == 200, out
        images = np.asarray(out["predictions"])
        size, channels = run.cfg.data.image_size, run.cfg.data.channels
        assert images.shape == (3, size, size, channels)
        assert images.min() >= 0 and images.max() <= 255
        assert (images[0] == images[2]).all()  # same label, guidance and seed: same image
        assert not (images[0] == images[1]).all()

        status, out = post_json(f"{base}/invocations", {"dataframe_records": [{"label": 99}]})
        assert status == 400 and "label must be a class id" in out.get("message", "")
    assert "models:/diffaudit-digits@champion" in (tmp_path / "serve.log").read_text()


def test_serve_without_a_champion_says_so(run: ReleaseRun, tmp_path, capsys) -> None:
    from pipelines import serve

    params = tmp_path / "params.yaml"
    params.write_text(run.params.read_text().replace(str(run.root / "mlflow.db"), str(tmp_path / "empty.db")))
    old = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        assert serve.main(["--params", str(params)]) == 1
    finally:
        if old is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old
    assert "diffaudit-digits@champion does not exist" in capsys.readouterr().err
