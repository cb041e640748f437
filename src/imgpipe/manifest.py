"""The prepared dataset on disk: image shards, their index files and the class map.

Layout of the prepared folder (the `prepare` stage's output):

    shards/NNNNN.tar        RGB squares as JPEG members <image_id>.jpg, where image_id is
                            the content id of the source file (see imgpipe.shards)
    shards/NNNNN.csv        that shard's images, in tar order: image_id, offset, size (of
                            its bytes in the tar), source, label, sha256 (of its bytes)
    manifest.csv            one row per shard: shard (the tar), images, sha256 (of the
                            shard's .csv)
    splits.csv              one row per image: image_id, split; ordered by image_id
    classes.json            class names, index i is label_index i
    preprocess.json         how raw images were turned into these: {"image_size": N}

A shard and its .csv depend only on the images in the shard, so adding images rewrites
the shards they land in, their .csv files, and the two small tables: `dvc push` moves
those, not an index of every image. The split is a file of its own because it is drawn
over each class as a whole and moves when a class grows (imgpipe.splits).

manifest.csv holds each shard .csv's hash, which holds each image's: it changes whenever
any image does. The later stages therefore depend on the four small files of
`INDEX_NAMES` rather than on the whole folder, so a no-op `dvc repro` hashes the shards
once, not four times; reading checks every shard .csv against its hash.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from itertools import groupby
from pathlib import Path

import pandas as pd

from imgpipe.errors import DataError
from imgpipe.io import read_json
from imgpipe.shards import Placement, ShardMember

MANIFEST_NAME = "manifest.csv"
SPLITS_NAME = "splits.csv"
CLASSES_NAME = "classes.json"
PREPROCESS_NAME = "preprocess.json"
INDEX_NAMES = (MANIFEST_NAME, SPLITS_NAME, CLASSES_NAME, PREPROCESS_NAME)
MANIFEST_COLUMNS = ("shard", "images", "sha256")
SHARD_COLUMNS = ("image_id", "offset", "size", "source", "label", "sha256")
SPLITS_COLUMNS = ("image_id", "split")
_TEXT_COLUMNS = {"image_id": str, "source": str, "label": str, "sha256": str, "split": str}


def write_index(folder: Path, rows: Sequence[tuple[str, str, str]], split: Sequence[str],
                placements: Sequence[Placement]) -> None:
    """Write the shards' .csv files, manifest.csv and splits.csv into `folder`.

    Args:
        rows: (image_id, source, label) per image.
        split: each row's split.
        placements: where `imgpipe.shards.write_shards` put each image, in shard order.
    """
    described = {row[0]: row for row in rows}  # the rows themselves: no tuple per image
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
            (folder / _shard_index(shard)).write_bytes(data)
            listing.writerow((shard, count, hashlib.sha256(data).hexdigest()))
    with (folder / SPLITS_NAME).open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(SPLITS_COLUMNS)
        for i in sorted(range(len(rows)), key=lambda i: rows[i][0]):
            writer.writerow((rows[i][0], split[i]))


def read_manifest(prepared_dir: Path, split: str | None = None) -> pd.DataFrame:
    """Every image's row (or one split's), ordered by split, class and image id: image_id,
    shard, offset, size, source, label, label_index, split, sha256, and `image`, where its
    bytes are (a ShardMember, which `imgpipe.shards.load_prepared` opens).

    Raises:
        DataError: the prepared folder is missing, from an older imgpipe, or incomplete.
    """
    listing = _read_listing(prepared_dir)
    shards = [_read_shard(prepared_dir, shard, sha256)
              for shard, sha256 in zip(listing["shard"], listing["sha256"])]
    table = (pd.concat(shards, ignore_index=True) if shards
             else pd.DataFrame(columns=["shard", *SHARD_COLUMNS]))
    splits = pd.read_csv(prepared_dir / SPLITS_NAME, dtype=_TEXT_COLUMNS)
    if len(splits) != len(table) or set(splits["image_id"]) != set(table["image_id"]):
        raise DataError(f"{prepared_dir / SPLITS_NAME} and the shard listings of "
                        f"{prepared_dir / MANIFEST_NAME} name different images: the "
                        "prepared folder is incomplete; run `dvc repro prepare` again")
    table = table.merge(splits, on="image_id", validate="one_to_one")
    class_index = {label: index for index, label in enumerate(read_classes(prepared_dir))}
    unknown = set(table["label"]) - set(class_index)
    if unknown:
        raise DataError(f"labels {sorted(unknown)} of {prepared_dir} are not in "
                        f"{CLASSES_NAME}: run `dvc repro prepare` again")
    table["label_index"] = table["label"].map(class_index)
    if split is not None:
        table = table[table["split"] == split]
    table = table.sort_values(["split", "label_index", "image_id"], kind="stable")
    table = table[["image_id", "shard", "offset", "size", "source", "label", "label_index",
                   "split", "sha256"]].reset_index(drop=True)
    table["image"] = [ShardMember(prepared_dir / shard, int(offset), int(size))
                      for shard, offset, size in zip(table["shard"], table["offset"],
                                                     table["size"])]
    return table


def _read_listing(prepared_dir: Path) -> pd.DataFrame:
    path = prepared_dir / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro prepare` first")
    listing = pd.read_csv(path, dtype={"shard": str, "sha256": str})
    if list(listing.columns) != list(MANIFEST_COLUMNS) or not (prepared_dir
                                                               / SPLITS_NAME).is_file():
        raise DataError(f"{path} was written by an older imgpipe (one row per image, not "
                        "per shard): run `dvc repro prepare` again")
    return listing


def _read_shard(prepared_dir: Path, shard: str, sha256: str) -> pd.DataFrame:
    path = prepared_dir / _shard_index(shard)
    data = path.read_bytes() if path.is_file() else b""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(f"{path} is {'not' if data else 'missing, not'} the file "
                        f"{MANIFEST_NAME} lists: the prepared folder is incomplete or was "
                        "edited; run `dvc checkout` or `dvc repro prepare` again")
    rows = pd.read_csv(io.BytesIO(data), dtype=_TEXT_COLUMNS)
    rows.insert(0, "shard", shard)
    return rows


def shard_indexes(prepared_dir: Path) -> list[str]:
    """The shards' .csv files manifest.csv lists, relative to `prepared_dir` (none for a
    manifest from an older imgpipe)."""
    listing = pd.read_csv(prepared_dir / MANIFEST_NAME, dtype=str)
    return [_shard_index(shard) for shard in listing.get("shard", [])
            if "images" in listing.columns]


def _shard_index(shard: str) -> str:
    """shards/00000.tar -> shards/00000.csv"""
    return shard.removesuffix(".tar") + ".csv"


def dataset_digest(prepared_dir: Path) -> str:
    """A hash of the prepared dataset (images, split and classes), from its index files;
    equal digests, equal data."""
    digest = hashlib.sha256()
    for name in INDEX_NAMES:
        data = (prepared_dir / name).read_bytes()
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def read_classes(prepared_dir: Path) -> list[str]:
    return list(read_json(prepared_dir / CLASSES_NAME))


def read_preprocess(prepared_dir: Path) -> dict:
    """What prediction on raw images must repeat: {"image_size": N}."""
    return dict(read_json(prepared_dir / PREPROCESS_NAME))
