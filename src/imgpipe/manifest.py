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

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd

from imgpipe.errors import DataError
from imgpipe.io import read_json
from imgpipe.shards import ShardMember

MANIFEST_NAME = "manifest.csv"
SPLITS_NAME = "splits.csv"
CLASSES_NAME = "classes.json"
PREPROCESS_NAME = "preprocess.json"
INDEX_NAMES = (MANIFEST_NAME, SPLITS_NAME, CLASSES_NAME, PREPROCESS_NAME)
MANIFEST_COLUMNS = ("shard", "images", "sha256")
SHARD_COLUMNS = ("image_id", "offset", "size", "source", "label", "sha256")
SPLITS_COLUMNS = ("image_id", "split")
_TEXT_COLUMNS = {"image_id": str, "source": str, "label": str, "sha256": str, "split": str}


def read_manifest(prepared_dir: Path, split: str | None = None) -> pd.DataFrame:
    """Every image's row (or one split's), ordered by split, class and image id: image_id,
    shard, offset, size, source, label, label_index, split, sha256, and `image`, where its
    bytes are (a ShardMember, which `imgpipe.shards.load_prepared` opens).

    Raises:
        DataError: the prepared folder is missing, from an older imgpipe, or incomplete.
    """
    listing = _read_listing(prepared_dir)
    # One parse of every shard's rows (one read_csv per shard costs 3x more at 100,000).
    bodies = [_shard_rows(prepared_dir, shard, sha256)
              for shard, sha256 in zip(listing["shard"], listing["sha256"])]
    table = _read_csv(io.BytesIO(",".join(SHARD_COLUMNS).encode() + b"\n" + b"".join(bodies)))
    if len(table) != listing["images"].sum():
        raise DataError(f"{prepared_dir / MANIFEST_NAME} counts {listing['images'].sum()} "
                        f"images but the shard indexes list {len(table)}: run `dvc checkout` "
                        "or `dvc repro prepare` again")
    table.insert(1, "shard", np.repeat(listing["shard"].to_numpy(), listing["images"]))
    splits, listed = _read_csv(prepared_dir / SPLITS_NAME), len(table)
    if splits["image_id"].is_unique and table["image_id"].is_unique:
        table = table.merge(splits, on="image_id", how="inner", validate="one_to_one")
    if "split" not in table.columns or not len(table) == listed == len(splits):
        raise DataError(f"{prepared_dir / SPLITS_NAME} and the shard indexes "
                        f"{prepared_dir / MANIFEST_NAME} lists do not name the same images "
                        "once each: the prepared folder is incomplete or was edited; run "
                        "`dvc checkout` or `dvc repro prepare` again")
    if split is not None:
        table = table[table["split"] == split]
    class_index = {label: index for index, label in enumerate(read_classes(prepared_dir))}
    table["label_index"] = table["label"].map(class_index)
    unknown = table["label"][table["label_index"].isna()].unique().tolist()
    if unknown:
        raise DataError(f"labels {sorted(unknown)} of {prepared_dir} are not in "
                        f"{CLASSES_NAME}: run `dvc repro prepare` again")
    table["label_index"] = table["label_index"].astype("int64")  # also with no rows
    table = table.sort_values(["split", "label_index", "image_id"], kind="stable")
    table = table[["image_id", "shard", "offset", "size", "source", "label", "label_index",
                   "split", "sha256"]].reset_index(drop=True)
    shard_paths = {shard: prepared_dir / shard for shard in listing["shard"]}  # one per shard
    table["image"] = [ShardMember(shard_paths[shard], offset, size)
                      for shard, offset, size in zip(table["shard"].tolist(),
                                                     table["offset"].tolist(),
                                                     table["size"].tolist())]
    return table


def _read_csv(source: Path | io.BytesIO) -> pd.DataFrame:
    """An index file with its text columns as written: a label "None" or "NA" stays a
    string (pandas reads those as missing by default)."""
    return pd.read_csv(source, dtype=_TEXT_COLUMNS, keep_default_na=False)


def _read_listing(prepared_dir: Path) -> pd.DataFrame:
    """manifest.csv: shard, images, sha256 per shard; checked to be this layout's."""
    path = prepared_dir / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro prepare` first")
    listing = pd.read_csv(path, dtype={"shard": str, "sha256": str}, keep_default_na=False)
    if list(listing.columns) != list(MANIFEST_COLUMNS):
        raise DataError(f"{path} was written by an older imgpipe (one row per image, not "
                        "per shard): run `dvc repro prepare` again")
    if not (prepared_dir / SPLITS_NAME).is_file():
        raise DataError(f"{prepared_dir / SPLITS_NAME} is missing: the prepared folder is "
                        "incomplete; run `dvc checkout` or `dvc repro prepare` again")
    return listing


def _shard_rows(prepared_dir: Path, shard: str, sha256: str) -> bytes:
    """One shard's index lines, without the header, after checking the file against the
    hash manifest.csv holds."""
    path = prepared_dir / shard_index(shard)
    if not path.is_file():
        raise DataError(f"{path} is missing: the prepared folder is incomplete; run "
                        "`dvc checkout` or `dvc repro prepare` again")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(f"{path} differs from the sha256 {MANIFEST_NAME} lists for it: the "
                        "file was edited; run `dvc checkout` or `dvc repro prepare` again")
    return data[data.index(b"\n") + 1:]


def shard_index(shard: str) -> str:
    """A shard's index file beside it: shards/00000.tar -> shards/00000.csv"""
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
