"""Build `.dvc/plots_offline.html`: DVC's plots page with Vega, Vega-Lite and vega-embed inlined.

`dvc plots show` writes a page that loads the three libraries from a CDN, so offline the
Vega plots (probe sweep, fine-tuning curve, confusion matrix) stay empty. DVC fills a
custom page instead when `plots.html_template` names one (set in `.dvc/config`). Build
it from the npm packages, at the versions DVC's own page loads (dvc_render/vega.py):

    cd /tmp && npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
    python scripts/make_plots_template.py /tmp/vega-5.20.2.tgz /tmp/vega-lite-5.2.0.tgz \\
        /tmp/vega-embed-6.18.2.tgz

The three are BSD-3-Clause; each licence is copied into the page above its code.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import tarfile
from pathlib import Path

_logger = logging.getLogger(__name__)
# package -> (version, sha256 of the npm tarball as `npm pack` fetched it on 2026-11-29)
PACKAGES = {
    "vega": ("5.20.2", "d77deab01d6104b1239228720721f93003e60797d2faced7ffdd759fa70f989d"),
    "vega-lite": ("5.2.0", "f64ca4745f043447ac86b67dc9e9592ec2b85ac8b8dafc35faf970f142463e4b"),
    "vega-embed": ("6.18.2", "93aeee312e92077b0252ef026c0fe0ec8fa430c19825aeada6cd3a6804e68e1b"),
}
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <title>DVC Plot</title>
    <meta charset="utf-8">
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def inline_script(tarball: Path, package: str) -> str:
    """A `<script>` element with the package's minified browser build and its licence."""
    version, sha256 = PACKAGES[package]
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{tarball}: sha256 {digest}, expected {sha256} for {package} "
                         f"{version}; fetch it again with `npm pack {package}@{version}`")
    with tarfile.open(tarball) as archive:
        code = archive.extractfile(f"package/build/{package}.min.js").read().decode()
        licence = archive.extractfile("package/LICENSE").read().decode()
    if "</script" in code.lower():
        raise SystemExit(f"{package}: its code contains </script>, cannot be inlined")
    licence = licence.replace("*/", "* /")
    return (f"    <!-- {package} {version} (npm), BSD-3-Clause, sha256 of the tarball "
            f"{digest} -->\n    <script>/*\n{licence}*/\n{code}\n    </script>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tarballs", nargs=3, type=Path,
                        help="the vega, vega-lite and vega-embed tarballs from `npm pack`")
    parser.add_argument("--out", type=Path, default=Path(".dvc/plots_offline.html"),
                        help="the page to write (the path `plots.html_template` names)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[make_plots_template] %(message)s")
    scripts = [inline_script(tarball, package)
               for tarball, package in zip(args.tarballs, PACKAGES)]
    page = PAGE.format(scripts="\n".join(scripts))
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
        # DVC replaces each placeholder everywhere: the libraries must not contain one.
        expected = 0 if placeholder == "{scripts}" else 1
        if page.count(placeholder) != expected:
            raise SystemExit(f"{placeholder} appears {page.count(placeholder)} times")
    args.out.write_text(page, encoding="utf-8")
    _logger.info("wrote %s (%d bytes)", args.out, len(page.encode()))


if __name__ == "__main__":
    main()
