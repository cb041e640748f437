"""imgpipe.closure: the import closure read from the source equals what importing loads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imgpipe.closure import SRC_DIR, import_closure

# What a fresh interpreter has loaded from imgpipe/ after importing one module.
_LOADED = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(
    "imgpipe/" + m.__file__.replace("\\\\", "/").rsplit("/imgpipe/", 1)[1]
    for m in list(sys.modules.values())
    if "/imgpipe/" in (getattr(m, "__file__", None) or "").replace("\\\\", "/")
    and not m.__file__.endswith("__init__.py"))))
"""
# The closures the pipeline uses: dvc.yaml's deps, the cache keys, the model's requirements.
USED = ["stages.prepare", "stages.extract", "stages.train_head", "stages.finetune_full",
        "stages.evaluate", "imgpipe.prepare_image", "imgpipe.featurize", "imgpipe.exported",
        "imgpipe.backbones", "imgpipe.pyfunc"]


@pytest.mark.slow  # ten child interpreters, each importing torch
def test_the_closures_in_use_equal_what_a_fresh_interpreter_loads() -> None:
    children = {name: subprocess.Popen(  # in parallel: each one imports torch
        [sys.executable, "-c", _LOADED, name], cwd=SRC_DIR, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={"PYTHONPATH": str(SRC_DIR), "PATH": ""})
        for name in USED}
    for name, child in children.items():
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-2000:]
        assert import_closure(name) == json.loads(out), name


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return _package(tmp_path, {
        "imgpipe/__init__.py": "from imgpipe import always\n",
        "imgpipe/always.py": "",
        "imgpipe/top.py": """
            from __future__ import annotations
            import json
            from typing import TYPE_CHECKING
            from imgpipe import direct
            from . import relative
            from imgpipe.from_module import something
            try:
                import imgpipe.in_try
            except ImportError:
                import imgpipe.in_except
            if TYPE_CHECKING:
                from imgpipe import type_only
            else:
                import imgpipe.in_else

            def later():
                from imgpipe import lazy
            """,
        "imgpipe/direct.py": "import imgpipe.transitive\n",
        "imgpipe/relative.py": "", "imgpipe/from_module.py": "something = 1\n",
        "imgpipe/in_try.py": "", "imgpipe/in_except.py": "", "imgpipe/in_else.py": "",
        "imgpipe/transitive.py": "", "imgpipe/type_only.py": "", "imgpipe/lazy.py": "",
        "stages/run.py": "from imgpipe import top\n",
    })


def test_module_level_imports_count_and_lazy_or_type_only_ones_do_not(src: Path) -> None:
    assert import_closure("stages.run", src_dir=src) == [
        f"imgpipe/{name}.py" for name in sorted([
            "always", "top", "direct", "transitive", "relative", "from_module", "in_try",
            "in_except", "in_else"])]


def test_a_module_outside_the_packages_has_an_empty_closure(src: Path) -> None:
    assert import_closure("json", src_dir=src) == []
