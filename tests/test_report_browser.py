"""The audit page in a real browser (Debian's Chromium driven by Playwright): every section renders,
every image decodes, nothing is fetched from the network and the console stays clean. A full-page
screenshot is kept as a test artifact ($DIFFAUDIT_TEST_ARTIFACTS, default test-artifacts/).
$DIFFAUDIT_CHROMIUM names another Chromium binary (default /usr/bin/chromium)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from diffaudit.report.content import SECTIONS
from tests.helpers.release import ReleaseRun

CHROMIUM = os.environ.get("DIFFAUDIT_CHROMIUM", "/usr/bin/chromium")  # Debian's package
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(
    os.environ.get("DIFFAUDIT_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts")
)


@pytest.fixture(scope="module")
def run(release_run: ReleaseRun) -> ReleaseRun:
    return release_run


def _browser_or_skip() -> str:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} missing: CI must install Debian's chromium (.ci/run does)")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")


def test_report_renders_in_chromium(run: ReleaseRun) -> None:
    from playwright.sync_api import sync_playwright

    executable = _browser_or_skip()
    page_path = run.root / "reports" / "audit.html"
    errors: list[str] = []
    fetched: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.on(
                "request",
                lambda r: fetched.append(r.url) if not r.url.startswith(("file:", "data:")) else None,
            )
            page.goto(page_path.as_uri(), wait_until="load")

            ids = page.eval_on_selector_all("main > section", "els => els.map(e => e.id)")
            assert ids == ["verdict", "model", *[s.key for s in SECTIONS], "lineage"]
            for sid in ids:
                assert page.locator(f"section#{sid} h2").is_visible()
            assert "RELEASED" in page.inner_text("#verdict-banner")
            assert page.locator("#gates tbody tr").count() == 2
            images = page.eval_on_selector_all(
                "img",
                "els => els.map(e => ({ok: e.complete && e.naturalWidth > 0, src: e.src.slice(0, 15)}))",
            )
            assert len(images) >= 12, images
            assert all(i["ok"] for i in images), [i for i in images if not i["ok"]]
            assert {i["src"][:10] for i in images} == {"data:image"}
            for sid in ("samples", "quality", "explain", "fairness", "privacy", "sampler_study"):
                assert page.locator(f"section#{sid} img").count() >= 1, sid
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "audit_report.png"
            page.screenshot(path=str(shot), full_page=True)
            shutil.copy(page_path, ARTIFACTS / "audit.html")
        finally:
            browser.close()
    assert not errors, errors
    assert not fetched, fetched
    assert shot.stat().st_size > 10_000
