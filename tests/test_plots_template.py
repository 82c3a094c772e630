"""The offline page of `dvc plots show` (pipelines/plots_template.py): what DVC is told to use is what
`make install` builds and git ignores; libraries are inlined safely and checked; without npm the page
is DVC's own CDN page and says so. (That every plot draws offline: tests/test_pipeline_e2e.py.)"""

from __future__ import annotations

import configparser
import io
import tarfile
from pathlib import Path

import pytest

from pipelines import plots_template as pt
from tests.helpers.config import ROOT


def _tgz(path: Path, member: str, text: str) -> Path:
    data = text.encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"package/{member}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_dvc_uses_the_template_make_install_builds() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".dvc" / "config")
    # DVC reads a relative html_template from .dvc/
    assert Path(".dvc") / cfg["plots"]["html_template"] == pt.DEFAULT_OUT
    assert f"/{pt.DEFAULT_OUT}" in (ROOT / ".gitignore").read_text().splitlines()
    makefile = (ROOT / "Makefile").read_text()
    assert (
        f"PLOTS_TEMPLATE := {pt.DEFAULT_OUT}" in makefile
        and "install: $(STAMP) $(PLOTS_TEMPLATE)" in makefile
    )


def test_the_page_has_dvcs_placeholders_and_no_cdn() -> None:
    page = pt.PAGE.replace("SCRIPTS", "")
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "{scripts}" not in page  # DVC puts its CDN <script> tags there


def test_a_script_is_inlined_safely(tmp_path: Path) -> None:
    tgz = _tgz(tmp_path / "x.tgz", "build/x.min.js", 'var s = "</script>";')
    out = pt.script(tgz, "build/x.min.js", "x 1.0")
    assert '</script>"' not in out and '"<\\/script>"' in out
    with pytest.raises(pt.TemplateError, match="placeholder"):
        pt.script(_tgz(tmp_path / "y.tgz", "build/y.min.js", "a('{plot_divs}')"), "build/y.min.js", "y")
    with pytest.raises(pt.TemplateError, match="has no package/build/z.min.js"):
        pt.script(tgz, "build/z.min.js", "x")


def test_every_pin_has_an_integrity() -> None:
    assert [p[0] for p in pt.PACKAGES] == ["vega", "vega-lite", "vega-embed"]
    assert all(sha.startswith("sha512-") and len(sha) == 95 for *_, sha, _ in pt.PACKAGES)


def test_without_npm_the_page_says_it_needs_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm here
    out = tmp_path / "page.html"
    assert pt.main([str(out)]) == 1 and not out.exists()
    assert pt.main([str(out), "--allow-cdn"]) == 0
    page = out.read_text()
    assert "{scripts}" in page and "{plot_divs}" in page and "vanish offline" in page
