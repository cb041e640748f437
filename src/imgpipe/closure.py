"""The library modules a module imports: the one list behind dvc.yaml deps and cache keys.

DVC re-runs a stage when a file in its deps changes, and prepare and extract key their
per-image caches by the code that computes one image's value. Both lists are import
closures, computed here in one way: import the module in a fresh interpreter and list
the `imgpipe` source files then in `sys.modules` (`__init__.py` files are left out: they
hold no code). tests/test_dvc_yaml.py checks dvc.yaml against it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import imgpipe

SRC_DIR = Path(imgpipe.__file__).resolve().parents[1]  # holds imgpipe/ and stages/
_LIST_IMPORTS = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(
    "imgpipe/" + m.__file__.replace("\\\\", "/").rsplit("/imgpipe/", 1)[1]
    for m in list(sys.modules.values())
    if (getattr(m, "__file__", None) or "").replace("\\\\", "/").count("/imgpipe/")
    and not m.__file__.endswith("__init__.py"))))
"""


def import_closure(*modules: str, src_dir: Path = SRC_DIR) -> list[str]:
    """The `imgpipe/*.py` files (relative to `src_dir`) that importing `modules` loads.

    Args:
        modules: dotted names, such as `stages.extract` or `imgpipe.featurize`.
        src_dir: the folder holding the `imgpipe` package to import from.
    """
    return list(_closure(tuple(modules), src_dir.resolve()))


@functools.cache
def _closure(modules: tuple[str, ...], src_dir: Path) -> tuple[str, ...]:
    # A fresh interpreter: what this process has already imported must not count.
    result = subprocess.run([sys.executable, "-c", _LIST_IMPORTS, *modules], cwd=src_dir,
                            capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(src_dir), "PATH": ""})
    return tuple(json.loads(result.stdout))


def code_digests(*modules: str, src_dir: Path = SRC_DIR) -> dict[str, str]:
    """File -> sha256 (16 hex digits) of every file in the import closure of `modules`.

    The code part of a cache key: an edit to any of these files gives a new key, an
    edit anywhere else keeps it. Kept per file so that key.json shows which file changed.
    """
    return {name: hashlib.sha256((src_dir / name).read_bytes()).hexdigest()[:16]
            for name in import_closure(*modules, src_dir=src_dir)}
