"""Writing the prepared folder's index files (imgpipe.manifest describes and reads them).

Only prepare imports this module, so an edit here re-runs prepare alone; the stages that
read the index depend on imgpipe.manifest.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from itertools import groupby
from pathlib import Path

from imgpipe.manifest import (
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    SHARD_COLUMNS,
    SPLITS_COLUMNS,
    SPLITS_NAME,
    shard_index,
)
from imgpipe.shards import Placement


def write_index(folder: Path, rows: Sequence[tuple[str, str, str]], split: Sequence[str],
                placements: Sequence[Placement]) -> None:
    """Write the shards' .csv files, manifest.csv and splits.csv into `folder`.

    Args:
        rows: (image_id, source, label) per image.
        split: each row's split.
        placements: where `imgpipe.shards.write_shards` put each image, in shard order.
    """
    _write_shard_indexes(folder, rows, placements)
    with (folder / SPLITS_NAME).open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(SPLITS_COLUMNS)
        for i in sorted(range(len(rows)), key=lambda i: rows[i][0]):
            writer.writerow((rows[i][0], split[i]))


def _write_shard_indexes(folder: Path, rows: Sequence[tuple[str, str, str]],
                         placements: Sequence[Placement]) -> None:
    """Each shard's .csv, and manifest.csv listing them with their sha256."""
    # The rows themselves by id, no tuple per image; freed before splits.csv is sorted
    # (prepare's peak memory at 100,000 images is within a few MB of its bound).
    described = {row[0]: row for row in rows}
    with (folder / MANIFEST_NAME).open("w", newline="") as manifest:
        listing = csv.writer(manifest, lineterminator="\n")
        listing.writerow(MANIFEST_COLUMNS)
        for shard, members in groupby(placements, key=lambda place: place.shard):
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(SHARD_COLUMNS)
            count = 0
            for place in members:
                _, source, label = described[place.image_id]
                writer.writerow((place.image_id, place.offset, place.size, source, label,
                                 place.sha256))
                count += 1
            data = text.getvalue().encode("utf-8")
            (folder / shard_index(shard)).write_bytes(data)
            listing.writerow((shard, count, hashlib.sha256(data).hexdigest()))
