"""The prepared dataset on disk: image shards, a manifest table and the class map.

Layout of the prepared folder (the `prepare` stage's output):

    shards/NNNNN.tar        RGB squares as JPEG members <image_id>.jpg, where image_id is
                            the content id of the source file (see imgpipe.shards)
    manifest.csv            one row per image: image_id, shard, offset, size (of its bytes
                            in the shard), source, label, label_index, split, sha256 (of
                            the prepared image's bytes)
    classes.json            class names, index i is label_index i
    preprocess.json         how raw images were turned into these: {"image_size": N}

Because the manifest holds every prepared file's hash, it changes whenever any image
does: the later stages depend on these three small files (`INDEX_NAMES`) rather than on
the whole folder, so a no-op `dvc repro` hashes the thousands of images once, not four
times.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from imgpipe.errors import DataError
from imgpipe.io import read_json
from imgpipe.shards import ShardMember

MANIFEST_NAME = "manifest.csv"
CLASSES_NAME = "classes.json"
PREPROCESS_NAME = "preprocess.json"
INDEX_NAMES = (MANIFEST_NAME, CLASSES_NAME, PREPROCESS_NAME)
MANIFEST_COLUMNS = ("image_id", "shard", "offset", "size", "source", "label", "label_index",
                    "split", "sha256")


def read_manifest(prepared_dir: Path, split: str | None = None) -> pd.DataFrame:
    """The manifest rows (all, or one split's), plus `image`: where each image's bytes
    are (a ShardMember, which `imgpipe.shards.load_prepared` opens)."""
    path = prepared_dir / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro prepare` first")
    table = pd.read_csv(path, dtype={"image_id": str, "label": str, "source": str, "sha256": str})
    if "shard" not in table.columns:
        raise DataError(f"{path} was written by an older imgpipe (images as files, not "
                        "shards): run `dvc repro prepare` again")
    if split is not None:
        table = table[table["split"] == split].reset_index(drop=True)
    table["image"] = [ShardMember(prepared_dir / shard, int(offset), int(size))
                      for shard, offset, size in zip(table["shard"], table["offset"],
                                                     table["size"])]
    return table


def read_classes(prepared_dir: Path) -> list[str]:
    return list(read_json(prepared_dir / CLASSES_NAME))


def read_preprocess(prepared_dir: Path) -> dict:
    """What prediction on raw images must repeat: {"image_size": N}."""
    return dict(read_json(prepared_dir / PREPROCESS_NAME))
