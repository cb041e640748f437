"""The prepared dataset on disk: images, a manifest table and the class map.

Layout of the prepared folder (the `prepare` stage's output):

    images/<image_id>.jpg   RGB squares, named by the content id of the source file
    manifest.csv            one row per image: image_id, file, source, label, label_index, split
    classes.json            class names, index i is label_index i
    preprocess.json         how raw images were turned into these: {"image_size": N}
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from imgpipe.errors import DataError
from imgpipe.io import read_json

MANIFEST_NAME = "manifest.csv"
CLASSES_NAME = "classes.json"
PREPROCESS_NAME = "preprocess.json"
IMAGES_DIR = "images"
MANIFEST_COLUMNS = ("image_id", "file", "source", "label", "label_index", "split")


def read_manifest(prepared_dir: Path, split: str | None = None) -> pd.DataFrame:
    """The manifest rows (all, or one split's), with `file` made absolute."""
    path = prepared_dir / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro prepare` first")
    table = pd.read_csv(path, dtype={"image_id": str, "label": str, "source": str})
    if split is not None:
        table = table[table["split"] == split].reset_index(drop=True)
    table["file"] = [str(prepared_dir / name) for name in table["file"]]
    return table


def read_classes(prepared_dir: Path) -> list[str]:
    return list(read_json(prepared_dir / CLASSES_NAME))


def read_preprocess(prepared_dir: Path) -> dict:
    """What prediction on raw images must repeat: {"image_size": N}."""
    return dict(read_json(prepared_dir / PREPROCESS_NAME))
