"""The library modules a module imports: the one list behind dvc.yaml deps and cache keys.

DVC re-runs a stage when a file in its deps changes, and prepare and extract key their
per-image caches by the code that computes one image's value. Both lists are import
closures, computed here in one way: the `imgpipe` source files that importing the module
loads, read from the source (`ast`), not by importing it. An import counts when it runs
at import time: a module-level `import` / `from ... import`, also inside a module-level
`if`, `try` or `with`, but not one inside a function (a lazy import) or under
`if TYPE_CHECKING:`. Importing `imgpipe.x` also runs `imgpipe/__init__.py`, which is
followed but not listed (`__init__.py` files hold no code). tests/test_closure.py checks
this against a fresh interpreter's `sys.modules`; tests/test_dvc_yaml.py checks dvc.yaml
against it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Iterator
from pathlib import Path

import imgpipe

SRC_DIR = Path(imgpipe.__file__).resolve().parents[1]  # holds imgpipe/ and stages/
_PACKAGES = ("imgpipe", "stages")  # followed; only imgpipe/ files are listed


def import_closure(*modules: str, src_dir: Path = SRC_DIR) -> list[str]:
    """The `imgpipe/*.py` files (relative to `src_dir`) that importing `modules` loads.

    Args:
        modules: dotted names, such as `stages.extract` or `imgpipe.featurize`.
        src_dir: the folder holding the `imgpipe` package to read.
    """
    return list(_closure(tuple(modules), src_dir.resolve()))


@functools.cache
def _closure(modules: tuple[str, ...], src_dir: Path) -> tuple[str, ...]:
    seen: set[Path] = set()
    pending = [path for name in modules for path in _files_run_by(name, src_dir)]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name in _imported_names(tree.body, _package_of(path, src_dir)):
            pending.extend(_files_run_by(name, src_dir))
    return tuple(sorted(path.relative_to(src_dir).as_posix() for path in seen
                        if path.parts[len(src_dir.parts)] == "imgpipe"
                        and path.name != "__init__.py"))


def _files_run_by(name: str, src_dir: Path) -> list[Path]:
    """The source files that `import name` runs: each package's __init__.py on the way,
    then the module. Names outside imgpipe and stages, or not found, run none of ours."""
    if name.split(".")[0] not in _PACKAGES:
        return []
    files, folder = [], src_dir
    for part in name.split("."):
        folder = folder / part
        if (folder / "__init__.py").is_file():
            files.append(folder / "__init__.py")
        elif folder.with_suffix(".py").is_file():
            files.append(folder.with_suffix(".py"))
            break
        elif not folder.is_dir():  # a folder without __init__.py: a namespace package
            break
    return files


def _package_of(path: Path, src_dir: Path) -> str:
    parts = path.relative_to(src_dir).with_suffix("").parts
    return ".".join(parts if path.name == "__init__.py" else parts[:-1])


def _imported_names(body: list[ast.stmt], package: str) -> Iterator[str]:
    """Dotted names of the modules `body` imports when it runs at module level.

    `from a import b` yields `a` and `a.b` (b may be a submodule; `_files_run_by` keeps
    only what exists)."""
    for node in body:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y, from .. import z
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _imported_names(node.body, package)
            yield from _imported_names(node.orelse, package)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse,
                          node.finalbody):
                yield from _imported_names(block, package)
        elif isinstance(node, ast.With):
            yield from _imported_names(node.body, package)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def code_digests(*modules: str, src_dir: Path = SRC_DIR) -> dict[str, str]:
    """File -> sha256 (16 hex digits) of every file in the import closure of `modules`.

    The code part of a cache key: an edit to any of these files gives a new key, an
    edit anywhere else keeps it. Kept per file so that key.json shows which file changed.
    """
    return {name: hashlib.sha256((src_dir / name).read_bytes()).hexdigest()[:16]
            for name in import_closure(*modules, src_dir=src_dir)}
