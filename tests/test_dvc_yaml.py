"""dvc.yaml tells DVC the truth: each stage lists the source files it imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import REPO_ROOT
from imgpipe.manifest import INDEX_NAMES

PIPELINE = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
_LIST_IMPORTS = """
import importlib, json, sys
importlib.import_module("stages." + sys.argv[1])
print(json.dumps(sorted(
    "src/imgpipe/" + m.__file__.replace("\\\\", "/").rsplit("/imgpipe/", 1)[1]
    for m in list(sys.modules.values())
    if (getattr(m, "__file__", None) or "").replace("\\\\", "/").count("/imgpipe/")
    and not m.__file__.endswith("__init__.py"))))
"""


@pytest.mark.parametrize("stage", list(PIPELINE["stages"]))
def test_stage_deps_list_exactly_the_library_modules_it_imports(stage: str) -> None:
    result = subprocess.run([sys.executable, "-c", _LIST_IMPORTS, stage], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": ""})
    imported = set(json.loads(result.stdout))
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
    stands for it: the manifest with each image's sha256, the classes, the preprocessing."""
    deps = PIPELINE["stages"][stage]["deps"]
    assert "${prepared}" not in deps
    assert {f"${{prepared}}/{name}" for name in INDEX_NAMES} <= set(deps)
    assert "${prepared}" in PIPELINE["stages"]["prepare"]["outs"]
