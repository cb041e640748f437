"""Per-image caches, keyed by content and by everything else that changes the result.

prepare and extract keep one file per image here, so that after adding images to a
dataset they only process the new ones. Layout:

    <cache_dir>/<kind>/<key>/key.json         what the key was made of, for a person to read
    <cache_dir>/<kind>/<key>/<content id><suffix>

`kind` is the stage ("prepared", "features"); `key` hashes the params, library versions
and source code that the entries depend on (imgpipe.prepare_image and imgpipe.featurize
derive them), so a change to any of them starts a new folder and never reads a stale
entry. Old folders are never read again; deleting the cache directory is always safe (the
stages then recompute everything).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgpipe.io import write_json

KEY_NAME = "key.json"


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ItemCache:
    """Files named by content id in one key folder; writes are atomic (temp + rename)."""

    def __init__(self, cache_dir: Path, kind: str, key_parts: dict[str, Any]) -> None:
        key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = cache_dir / kind / key
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / KEY_NAME).is_file():
            write_json(self.folder / KEY_NAME, key_parts)

    def path(self, item_id: str, suffix: str) -> Path:
        return self.folder / f"{item_id}{suffix}"

    def has(self, item_id: str, suffix: str) -> bool:
        return self.path(item_id, suffix).is_file()

    def store(self, item_id: str, suffix: str, write: Callable[[Path], None]) -> Path:
        """Create the entry with `write(temporary_path)`; a crash leaves no partial entry."""
        target = self.path(item_id, suffix)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            write(temporary)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        return target


def place(entry: Path, target: Path) -> None:
    """Put a cached file at `target`: a hard link when possible (no copy), else a copy."""
    try:
        os.link(entry, target)
    except OSError:  # another file system, or links not supported
        shutil.copyfile(entry, target)
