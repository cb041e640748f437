"""dvc.yaml tells DVC the truth: each stage lists the source files it imports."""

from __future__ import annotations

import pytest
import yaml
from repo_copy import committed_params

from conftest import REPO_ROOT
from imgpipe.closure import import_closure
from imgpipe.manifest import INDEX_NAMES

PIPELINE = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
PARAMS = committed_params()


@pytest.mark.parametrize("stage", list(PIPELINE["stages"]))
def test_stage_deps_list_exactly_the_library_modules_it_imports(stage: str) -> None:
    imported = {f"src/{name}" for name in import_closure(f"stages.{stage}",
                                                         src_dir=REPO_ROOT / "src")}
    deps = PIPELINE["stages"][stage]["deps"]
    listed = {d for d in deps if isinstance(d, str) and d.startswith("src/imgpipe/")}
    assert listed == imported
    assert f"src/stages/{stage}.py" in deps


@pytest.mark.parametrize("stage", list(PIPELINE["stages"]))
def test_stage_params_exist_in_params_yaml(stage: str) -> None:
    for entry in PIPELINE["stages"][stage].get("params", []):
        if isinstance(entry, dict):  # `params.yaml:` = the whole file
            continue
        node = PARAMS
        for key in entry.split("."):
            assert key in node, f"{stage} lists param {entry!r}, not in params.yaml"
            node = node[key]


@pytest.mark.parametrize("stage", [name for name, spec in PIPELINE["stages"].items()
                                   if "--prepared-dir ${prepared}" in spec["cmd"]])
def test_stages_reading_the_prepared_folder_depend_on_its_index_files(stage: str) -> None:
    """Not the folder (hashed again per stage on every no-op repro), but every file that
    stands for it: the manifest (each shard index's sha256, each index every image's), the
    split, the classes, the preprocessing."""
    deps = PIPELINE["stages"][stage]["deps"]
    assert "${prepared}" not in deps
    assert {f"${{prepared}}/{name}" for name in INDEX_NAMES} <= set(deps)
    assert "${prepared}" in PIPELINE["stages"]["prepare"]["outs"]
