"""DVC's own views of a run, as a reviewer meets them in a terminal and a browser: `dvc metrics show`,
`dvc exp show`, `dvc metrics diff` at 200 columns, and `dvc plots show`'s page opened in Debian's
Chromium with every request that is not a local file refused (the network unavailable)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers.config import ROOT

COLUMNS = 200
CHROMIUM = os.environ.get("DIFFAUDIT_CHROMIUM", "/usr/bin/chromium")
TEMPLATE = Path(".dvc") / "offline_plots.html"  # .dvc/config plots.html_template (make install builds it)


def dvc(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    """A DVC command's stdout at COLUMNS terminal columns (it must succeed)."""
    proc = subprocess.run(
        ["dvc", *args],
        cwd=cwd,
        env=env | {"COLUMNS": str(COLUMNS), "LINES": "60"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"dvc {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def dvc_in_terminal(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    """A DVC command's screen as a reviewer's COLUMNS-wide terminal gets it: run on a pseudo-terminal, so
    DVC renders as it does interactively (`exp show` at full width, for its pager), with `cat` as the
    pager; ANSI styling stripped. What `less -S` would show first is each line's first COLUMNS chars."""
    import fcntl
    import pty
    import re
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, COLUMNS, 0, 0))
    proc = subprocess.Popen(
        ["dvc", *args],
        cwd=cwd,
        env={k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")} | {"DVC_PAGER": "cat"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    with contextlib.suppress(OSError):  # EIO: the command closed the terminal
        while chunk := os.read(master, 65536):
            chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=timeout) == 0, f"dvc {args} failed:\n{b''.join(chunks)[-3000:]!r}"
    text = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def widest(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


def install_template(repo: Path) -> None:
    """The offline plots template in a copy of the project (it is git-ignored, so copy_repo leaves it
    out): built from the npm registry when npm is here, else the checkout's own."""
    dest = repo / TEMPLATE
    if shutil.which("npm"):
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines.plots_template", str(dest)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
    elif (ROOT / TEMPLATE).is_file():
        shutil.copy(ROOT / TEMPLATE, dest)


def render_offline(page: Path, screenshot: Path | None = None) -> dict:
    """Open `page` in Chromium with every non-file request aborted. What drew: the plots (DVC's divs),
    the vega ones, each vega chart's ink (canvas pixels darker than the background, or svg marks),
    whether each image decoded, the requests refused and the page's errors."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    refused: list[str] = []
    errors: list[str] = []

    def route(r):  # noqa: ANN001
        if r.request.url.startswith(("file:", "data:", "blob:")):
            r.continue_()
        else:
            refused.append(r.request.url)
            r.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.route("**/*", route)
            pg.goto(page.as_uri(), wait_until="load")
            plots = pg.eval_on_selector_all("body > div[id]", "els => els.map(e => e.id)")
            divs = pg.eval_on_selector_all("body > div[id]:not(:has(img))", "els => els.map(e => e.id)")
            # vega-embed draws asynchronously; a chart that never draws is in the counts below
            with contextlib.suppress(PlaywrightTimeout):
                pg.wait_for_function(
                    "n => document.querySelectorAll('.vega-embed canvas, .vega-embed svg.marks').length >= n",
                    arg=len(divs),
                    timeout=30_000,
                )
            drawn = pg.evaluate(
                """() => [...document.querySelectorAll('.vega-embed')].map(e => {
                    const c = e.querySelector('canvas');
                    if (c) {
                        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                        let ink = 0;
                        for (let i = 0; i < d.length; i += 4)
                            if (d[i + 3] > 0 && Math.min(d[i], d[i + 1], d[i + 2]) < 200) ink++;
                        return ink;
                    }
                    const s = e.querySelector('svg.marks');
                    return s ? s.querySelectorAll('path, rect, line, symbol, text').length : 0;
                })"""
            )
            images = pg.eval_on_selector_all("img", "els => els.map(e => e.complete && e.naturalWidth > 0)")
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                pg.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {
        "plots": plots,
        "vega_divs": divs,
        "drawn": drawn,
        "images": images,
        "refused": refused,
        "errors": errors,
    }
