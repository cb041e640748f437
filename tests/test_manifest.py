"""The prepared folder's index: one .csv per shard, a per-shard manifest and the split,
read back as one table per split, checked against the hashes that bind them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from imgpipe.errors import DataError
from imgpipe.index_writer import write_index
from imgpipe.io import write_json
from imgpipe.manifest import dataset_digest, read_manifest
from imgpipe.shards import write_shards

# "007" stays a string and sorts first, not by its index; pandas reads "None" and "NA"
# as missing unless told not to.
CLASSES = ["cat", "dog", "007", "None", "NA"]


def _prepared(folder: Path, count: int = 40, shard_size: int = 8) -> tuple[list, list]:
    """A prepared folder of `count` fake images in five classes."""
    images = []
    for i in range(count):
        data = hashlib.sha512(str(i).encode()).digest() * (1 + i % 3)
        images.append((hashlib.sha256(data).hexdigest()[:16], data))
    rows = [(image_id, f"{CLASSES[i % 5]}/{i:03d}.png", CLASSES[i % 5])
            for i, (image_id, _) in enumerate(images)]
    split = [("train", "val", "test", "train")[i % 4] for i in range(count)]
    placements = write_shards(folder, images, shard_size)
    write_index(folder, rows, split, placements)
    write_json(folder / "classes.json", CLASSES)
    write_json(folder / "preprocess.json", {"image_size": 8})
    return rows, split


def test_the_table_read_back_has_every_image_once_ordered_by_split_class_and_id(
        tmp_path: Path) -> None:
    rows, split = _prepared(tmp_path)
    table = read_manifest(tmp_path)
    expected = sorted(((split[i], CLASSES.index(label), image_id, source, label)
                       for i, (image_id, source, label) in enumerate(rows)))
    assert [tuple(r) for r in table[["split", "label_index", "image_id", "source", "label"]]
            .itertuples(index=False)] == expected
    for row in table.itertuples():
        assert hashlib.sha256(row.image.read_bytes()).hexdigest() == row.sha256
    train = read_manifest(tmp_path, "train")
    assert list(train["image_id"]) == list(table[table["split"] == "train"]["image_id"])
    assert list(train.index) == list(range(len(train)))


def test_each_shard_has_its_own_index_and_the_manifest_one_row_per_shard(
        tmp_path: Path) -> None:
    _prepared(tmp_path)
    listing = pd.read_csv(tmp_path / "manifest.csv")
    tars = sorted(p.name for p in (tmp_path / "shards").glob("*.tar"))
    assert list(listing["shard"]) == [f"shards/{name}" for name in tars]
    assert listing["images"].sum() == 40
    for shard, digest in zip(listing["shard"], listing["sha256"]):
        index = tmp_path / shard.replace(".tar", ".csv")
        assert hashlib.sha256(index.read_bytes()).hexdigest() == digest


def test_an_edited_shard_index_is_refused_with_the_fix(tmp_path: Path) -> None:
    _prepared(tmp_path)
    index = tmp_path / "shards" / "00000.csv"
    index.write_text(index.read_text().replace("cat", "dog", 1))
    with pytest.raises(DataError, match="00000.csv differs from the sha256 manifest.csv "
                                        "lists for it.*dvc checkout"):
        read_manifest(tmp_path)
    index.unlink()
    with pytest.raises(DataError, match="00000.csv is missing.*dvc checkout"):
        read_manifest(tmp_path)
    (tmp_path / "splits.csv").unlink()
    with pytest.raises(DataError, match="splits.csv is missing.*dvc checkout"):
        read_manifest(tmp_path)


def test_a_split_naming_other_images_is_refused(tmp_path: Path) -> None:
    _prepared(tmp_path)
    splits = tmp_path / "splits.csv"
    splits.write_text("\n".join(splits.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DataError, match="splits.csv and the shard indexes.*do not name the "
                                        "same images once each.*dvc repro prepare"):
        read_manifest(tmp_path)
    lines = splits.read_text().splitlines()
    splits.write_text("\n".join([*lines, lines[1]]) + "\n")  # as many rows, one id twice
    with pytest.raises(DataError, match="do not name the same images once each"):
        read_manifest(tmp_path)


def test_a_manifest_from_an_older_imgpipe_names_the_fix(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("image_id,shard,offset,size,source,label,"
                                           "label_index,split,sha256\n")
    with pytest.raises(DataError, match="older imgpipe.*dvc repro prepare"):
        read_manifest(tmp_path)
    with pytest.raises(DataError, match="run `dvc repro prepare` first"):
        read_manifest(tmp_path / "absent")


def test_the_dataset_digest_changes_with_the_split_alone(tmp_path: Path) -> None:
    _prepared(tmp_path)
    before = dataset_digest(tmp_path)
    splits = tmp_path / "splits.csv"
    splits.write_text(splits.read_text().replace(",val", ",xtrain", 1).replace(
        ",train", ",val", 1).replace(",xtrain", ",train"))
    assert dataset_digest(tmp_path) != before
