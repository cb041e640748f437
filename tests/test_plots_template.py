"""The offline page for `dvc plots show`: configured, self-contained, licences kept."""

from __future__ import annotations

import configparser

from make_plots_template import PACKAGES

from conftest import REPO_ROOT


def test_dvc_config_names_the_offline_page() -> None:
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / ".dvc" / "config")
    # DVC resolves a relative html_template against the .dvc folder.
    assert (REPO_ROOT / ".dvc" / config["plots"]["html_template"]).is_file()


def test_page_inlines_each_library_with_its_licence_and_loads_nothing() -> None:
    page = (REPO_ROOT / ".dvc" / "plots_offline.html").read_text(encoding="utf-8")
    assert page.count("{plot_divs}") == 1 and "{scripts}" not in page
    assert "<script src" not in page and "cdn." not in page
    for package, (version, sha256) in PACKAGES.items():
        assert f"<!-- {package} {version} (npm), BSD-3-Clause, sha256 of the tarball " \
               f"{sha256} -->" in page
    assert page.count("Redistribution and use in source and binary forms") == 3
