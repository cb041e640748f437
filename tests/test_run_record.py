"""The dataset a run records, from the prepared folder's index files of either layout."""

from __future__ import annotations

import hashlib
from pathlib import Path

from imgpipe.index_writer import write_index
from imgpipe.io import write_json
from imgpipe.manifest import dataset_digest
from imgpipe.run_record import _fingerprint, _prepared_dataset
from imgpipe.shards import write_shards


def _prepared(folder: Path) -> None:
    images = [(f"{i:016x}", bytes([i]) * 10) for i in range(6)]
    rows = [(image_id, f"{i}.png", ("a", "b")[i % 2]) for i, (image_id, _) in enumerate(images)]
    write_index(folder, rows, ["train", "train", "val", "val", "test", "test"],
                write_shards(folder, images, shard_size=4))
    write_json(folder / "classes.json", ["a", "b"])
    write_json(folder / "preprocess.json", {"image_size": 8})


def test_the_dataset_is_every_image_with_the_index_files_digest(tmp_path: Path) -> None:
    _prepared(tmp_path)
    fingerprint = _fingerprint(tmp_path)
    assert fingerprint == dataset_digest(tmp_path)[:16]
    dataset = _prepared_dataset(tmp_path, Path("data/prepared"), "data/x", fingerprint)
    assert dataset is not None and dataset.digest == fingerprint
    assert sorted(dataset.table["image_id"]) == [f"{i:016x}" for i in range(6)]
    assert "image" not in dataset.table.columns  # ShardMembers are no MLflow column


def test_without_the_shard_indexes_the_fingerprint_stays_and_the_table_goes(
        tmp_path: Path) -> None:
    """A commit whose shard indexes are in no cache: runs still differ by dataset."""
    _prepared(tmp_path)
    expected = dataset_digest(tmp_path)[:16]
    for index in (tmp_path / "shards").glob("*.csv"):
        index.unlink()
    assert _fingerprint(tmp_path) == expected
    assert _prepared_dataset(tmp_path, Path("data/prepared"), "data/x", expected) is None


def test_a_commit_before_the_per_shard_manifest_keeps_its_table_and_digest(
        tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image_id,shard,offset,size,source,label,label_index,split,sha256\n"
                        "ab,shards/00000.tar,512,3,a/1.png,None,0,train,00\n")
    fingerprint = _fingerprint(tmp_path)
    assert fingerprint == hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
    dataset = _prepared_dataset(tmp_path, Path("data/prepared"), "data/x", fingerprint)
    assert dataset is not None and list(dataset.table["image_id"]) == ["ab"]


def test_no_manifest_no_dataset(tmp_path: Path) -> None:
    assert _fingerprint(tmp_path) is None
    assert _prepared_dataset(tmp_path, Path("data/prepared"), "data/x", None) is None
