"""Writing outputs so that a killed stage never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success it replaces `path` in one rename.

    Works for files and folders. On any exception the temporary is removed and `path`
    is left as it was. Temporaries left by a killed process (no `finally` runs on
    SIGKILL) are removed first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temporary
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(temporary, path)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()


def write_json(path: Path, data: Any) -> None:
    """Write indented, key-sorted JSON atomically (stable bytes for DVC)."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def save_torch(path: Path, payload: Any) -> None:
    """`torch.save` atomically, with the same bytes for the same payload.

    Saved through a file handle: given a path, torch names the archive's inner folder
    after the file, and the temporary file's random name would change the bytes.
    """
    import torch

    with atomic_path(path) as temporary, temporary.open("wb") as handle:
        torch.save(payload, handle)
