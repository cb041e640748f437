"""Caches kept across runs, keyed by content and by everything else that changes the result.

prepare and extract keep one entry per image, so that after adding images to a dataset
they only process the new ones; the inference runtimes keep one exported network per
backbone. Layout:

    <cache_dir>/<kind>/<key>/key.json         what the key was made of, for a person to read
    <cache_dir>/<kind>/<key>/items.sqlite     ItemStore: per-image entries, by content id
    <cache_dir>/<kind>/<key>/<name><suffix>   FileCache: whole files (an exported network)

`kind` is the stage ("prepared", "features", "exported"); `key` hashes the params,
library versions and source code that the entries depend on (imgpipe.prepare_image and
imgpipe.featurize derive them), so a change to any of them starts a new folder and never
reads a stale entry. Per-image entries live in one SQLite file per key, not one file per
image: a million images are a handful of files, and SQLite's locking makes concurrent
writers (queued experiments run side by side) safe. Old folders are never read again;
deleting the cache directory is always safe (the stages then recompute everything).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from imgpipe.io import write_json

KEY_NAME = "key.json"
STORE_NAME = "items.sqlite"
_BUSY_SECONDS = 600.0  # how long a writer waits for another process's write to finish
_CHUNK = 500  # ids per `IN (...)` query, well under SQLite's variable limit


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def key_folder(cache_dir: Path, kind: str, key_parts: dict[str, Any]) -> Path:
    """The folder of one cache key, created with its key.json on first use."""
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir / kind / key
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / KEY_NAME).is_file():
        write_json(folder / KEY_NAME, key_parts)
    return folder


class ItemStore:
    """Byte values by item id (an image's content id) in one SQLite file per key.

    Each `put` is one transaction: a crash leaves every entry whole or absent. Write-ahead
    logging lets readers and one writer work at once; a second writer waits its turn.
    """

    def __init__(self, cache_dir: Path, kind: str, key_parts: dict[str, Any]) -> None:
        self.folder = key_folder(cache_dir, kind, key_parts)
        self.path = self.folder / STORE_NAME
        self._db = sqlite3.connect(self.path, timeout=_BUSY_SECONDS, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; fsync at checkpoints
        self._db.execute("CREATE TABLE IF NOT EXISTS items "
                         "(id TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")

    def get(self, item_id: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def get_many(self, item_ids: Sequence[str]) -> Iterator[tuple[str, bytes]]:
        """The stored (id, value) pairs among `item_ids`, a chunk of ids at a time."""
        for chunk in _chunks(item_ids):
            marks = ",".join("?" * len(chunk))
            yield from ((item_id, bytes(value)) for item_id, value in self._db.execute(
                f"SELECT id, value FROM items WHERE id IN ({marks})", chunk))

    def missing(self, item_ids: Sequence[str]) -> set[str]:
        """The ids among `item_ids` that have no entry."""
        stored: set[str] = set()
        for chunk in _chunks(item_ids):
            marks = ",".join("?" * len(chunk))
            stored.update(row[0] for row in self._db.execute(
                f"SELECT id FROM items WHERE id IN ({marks})", chunk))
        return set(item_ids) - stored

    def put(self, items: Iterable[tuple[str, bytes]]) -> None:
        """Store the entries in one transaction; an id already stored keeps its value."""
        with self._db:  # BEGIN ... COMMIT, or ROLLBACK on an exception
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR IGNORE INTO items (id, value) VALUES (?, ?)", items)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM items").fetchone()[0])

    def close(self) -> None:
        self._db.close()


def stored_entries(cache_dir: Path) -> int:
    """How many per-image entries every store under `cache_dir` holds (the benchmark's count)."""
    total = 0
    for path in sorted(cache_dir.rglob(STORE_NAME)):
        db = sqlite3.connect(path)
        try:
            total += int(db.execute("SELECT count(*) FROM items").fetchone()[0])
        finally:
            db.close()
    return total


class FileCache:
    """Whole files by name in one key folder; writes are atomic (temp + rename)."""

    def __init__(self, cache_dir: Path, kind: str, key_parts: dict[str, Any]) -> None:
        self.folder = key_folder(cache_dir, kind, key_parts)

    def path(self, name: str, suffix: str) -> Path:
        return self.folder / f"{name}{suffix}"

    def has(self, name: str, suffix: str) -> bool:
        return self.path(name, suffix).is_file()

    def store(self, name: str, suffix: str, write: Callable[[Path], None]) -> Path:
        """Create the entry with `write(temporary_path)`; a crash leaves no partial entry."""
        target = self.path(name, suffix)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            write(temporary)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        return target


def _chunks(item_ids: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(item_ids), _CHUNK):
        yield list(item_ids[start:start + _CHUNK])
