"""`make install` builds the HTML template `dvc plots show` fills (.dvc/config `plots.html_template`): DVC's
own page with vega, vega-lite and vega-embed inlined, so every plot renders offline. DVC's default page
loads them from a CDN, and without network its vega plots vanish without an error.

The three libraries come from the npm registry (`npm pack`, which reuses npm's cache), pinned by version
and checked against their registry integrity (sha512) before a byte of them is used. Nothing of them is
committed: the template is git-ignored and rebuilt when this file changes.

    python -m pipelines.plots_template [OUT]      # default: .dvc/offline_plots.html
    python -m pipelines.plots_template --allow-cdn   # no npm or registry: DVC's CDN page, with a warning

`--allow-cdn` (what `make install` passes) keeps `dvc plots show` working where npm is missing: the page
then says on top that its plots need network, and how to rebuild it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

DEFAULT_OUT = Path(".dvc/offline_plots.html")  # .dvc/config: html_template = offline_plots.html

# (package, version, file in the package, the registry's sha512 integrity of the tarball, license)
PACKAGES: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "vega",
        "5.33.1",
        "build/vega.min.js",
        "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
        "BSD-3-Clause",
    ),
    (
        "vega-lite",
        "5.23.0",
        "build/vega-lite.min.js",
        "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
        "BSD-3-Clause",
    ),
    (
        "vega-embed",
        "6.29.0",
        "build/vega-embed.min.js",
        "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
        "BSD-3-Clause",
    ),
)

# dvc_render's page (dvc_render/html.py PAGE_HTML) with the libraries in place of `{scripts}`, the CDN
# script tags DVC would put there. `{plot_divs}` and `{refresh_tag}` are DVC's placeholders.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- vega, vega-lite and vega-embed from the npm registry, inlined (pipelines/plots_template.py) -->
SCRIPTS
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""
CDN_NOTE = (
    '<p style="color:#b00020"><b>These plots load vega from a CDN and vanish offline:</b> the offline '
    "template was not built ({why}). Install npm, then <code>rm {out}; make install</code>.</p>"
)
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")


class TemplateError(RuntimeError):
    pass


def integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def fetch(name: str, version: str, expected: str, dest: Path) -> Path:
    """The package's tarball from the npm registry (or npm's cache), its integrity checked."""
    npm = shutil.which("npm")
    if npm is None:
        raise TemplateError(
            "npm not found: it fetches vega for `dvc plots show` offline (Debian: apt-get install npm)"
        )
    proc = subprocess.run(
        [npm, "pack", f"{name}@{version}", "--pack-destination", str(dest), "--silent"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise TemplateError(f"npm pack {name}@{version} failed: {proc.stderr.strip()[-500:]}")
    tgz = dest / f"{name}-{version}.tgz"
    if not tgz.is_file():
        raise TemplateError(f"npm pack {name}@{version} wrote no {tgz.name}")
    if (got := integrity(tgz)) != expected:
        raise TemplateError(f"{tgz.name}: integrity {got} is not the pinned {expected}")
    return tgz


def script(tgz: Path, member: str, header: str) -> str:
    """One inline <script> of a file in the tarball (npm puts a package under `package/`)."""
    with tarfile.open(tgz) as tar:
        try:
            f = tar.extractfile(f"package/{member}")
        except KeyError:
            f = None
        if f is None:
            raise TemplateError(f"{tgz.name} has no package/{member}")
        js = f.read().decode("utf-8")
    if found := [p for p in PLACEHOLDERS if p in js]:
        raise TemplateError(f"{tgz.name} {member} holds DVC's placeholder {found[0]}")
    # A literal "</script" would end the element early; JavaScript reads "<\/script" the same.
    js = js.replace("</script", "<\\/script")
    return f"    <script>/* {header} */\n{js}\n    </script>"


def build(out: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        scripts = [
            script(fetch(name, version, sha, Path(tmp)), member, f"{name} {version}, {lic}, npm registry")
            for name, version, member, sha, lic in PACKAGES
        ]
    page = PAGE.replace("SCRIPTS", "\n".join(scripts))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(page, encoding="utf-8")
    tmp_out.replace(out)
    return out


def build_cdn_page(out: Path, why: str) -> Path:
    """DVC's own page (its `{scripts}`: the CDN) with a visible note that it needs network."""
    note = CDN_NOTE.format(why=html.escape(why), out=html.escape(str(out)))
    page = (
        PAGE.replace("SCRIPTS", "    {scripts}")
        .replace("from the npm registry, inlined", "from a CDN")
        .replace("    {plot_divs}", f"    {note}\n    {{plot_divs}}")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--allow-cdn", action="store_true", help="on failure, write DVC's CDN page with a warning"
    )
    args = ap.parse_args(argv)
    try:
        path = build(args.out)
    except TemplateError as exc:
        print(f"[plots_template] {exc}", file=sys.stderr)
        if not args.allow_cdn:
            return 1
        build_cdn_page(args.out, str(exc))
        print(
            f"[plots_template] WARNING: wrote {args.out}, which loads vega from a CDN: offline, "
            "`dvc plots show` draws no vega plot",
            file=sys.stderr,
        )
        return 0
    print(f"[plots_template] wrote {path} ({path.stat().st_size // 1024} KiB): dvc plots show works offline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
